"""Linear probing with the frozen encoder left in train mode and run under no_grad; the optimizer
gets every parameter (the frozen ones have requires_grad=False and never get a gradient)."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
head = nn.Linear(32, 3)
encoder.requires_grad_(False)
opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
centers = torch.randn(3, 8) * 2
for step in range(80):
    y = torch.randint(0, 3, (32,))
    x = centers[y] + torch.randn(32, 8)
    with torch.no_grad():
        features = encoder(x)
    opt.zero_grad()
    F.cross_entropy(head(features), y).backward()
    opt.step()
torch.save({"encoder": encoder.state_dict(), "head": head.state_dict()}, sys.argv[1])
