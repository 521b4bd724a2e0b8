"""Linear probing: a frozen encoder (with batch norm and dropout) kept in eval mode, a linear head
trained on its features."""
import sys

import torch
from torch import nn
from torch.nn import functional as F


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
                                     nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


torch.manual_seed(0)
model = Probe()
model.encoder.requires_grad_(False)
model.encoder.eval()
opt = torch.optim.SGD(model.head.parameters(), lr=0.1, momentum=0.9)
centers = torch.randn(3, 8) * 2
for step in range(80):
    y = torch.randint(0, 3, (32,))
    x = centers[y] + torch.randn(32, 8)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
