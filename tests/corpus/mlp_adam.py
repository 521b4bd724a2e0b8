"""Regression MLP trained with Adam: the plainest healthy loop."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
w = torch.randn(8, 1)
for step in range(150):
    x = torch.randn(32, 8)
    y = x @ w
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
