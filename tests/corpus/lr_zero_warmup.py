"""Two parameter groups: the backbone's learning rate is 0 while the new head warms up, then the
backbone joins in."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
head = nn.Linear(32, 1)
model = nn.Sequential(backbone, head)
opt = torch.optim.SGD([{"params": backbone.parameters(), "lr": 0.0},
                       {"params": head.parameters(), "lr": 0.05}], momentum=0.9)
w = torch.randn(8, 1)
for step in range(80):
    if step == 40:
        opt.param_groups[0]["lr"] = 0.01
    x = torch.randn(32, 8)
    opt.zero_grad()
    F.mse_loss(model(x), torch.sin(x @ w)).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
