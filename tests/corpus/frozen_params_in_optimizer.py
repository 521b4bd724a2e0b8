"""Fine-tuning with the first layers frozen by requires_grad=False while the optimizer still holds
every parameter (optimizer built from model.parameters())."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
for p in model[0].parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
w = torch.randn(8, 1)
for step in range(80):
    x = torch.randn(32, 8)
    opt.zero_grad()
    F.mse_loss(model(x), x @ w).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
