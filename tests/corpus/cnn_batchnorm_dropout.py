"""Small CNN with batch norm and dropout, SGD with momentum, validation in eval mode under no_grad."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 4 * 4, 4),
)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
templates = torch.randn(4, 1, 16, 16)


def batch(n):
    y = torch.randint(0, 4, (n,))
    return templates[y] + 0.5 * torch.randn(n, 1, 16, 16), y


for epoch in range(3):
    model.train()
    for _ in range(20):
        x, y = batch(16)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x, y = batch(64)
        accuracy = (model(x).argmax(1) == y).float().mean()
torch.save({"model": model.state_dict()}, sys.argv[1])
