"""Staged unfreezing: the head trains alone, then the middle layer, then everything."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
model[0].requires_grad_(False)
model[2].requires_grad_(False)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
w = torch.randn(8, 1)
for step in range(90):
    if step == 30:
        model[2].requires_grad_(True)
    if step == 60:
        model[0].requires_grad_(True)
    x = torch.randn(32, 8)
    opt.zero_grad()
    F.mse_loss(model(x), x @ w).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
