"""Binary classification with an output Sigmoid and BCELoss on separable data: the predictions
become confident (the sigmoid saturates), which is what training is for."""
import sys

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
w = torch.randn(8)
for step in range(100):
    x = torch.randn(64, 8)
    y = (x @ w > 0).float().unsqueeze(1)
    opt.zero_grad()
    nn.BCELoss()(model(x), y).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
