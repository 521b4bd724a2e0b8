"""SGD with a one-cycle learning-rate schedule (warm-up to the peak, anneal to almost zero)."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
steps = 150
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
centers = torch.randn(4, 8) * 2
for step in range(steps):
    y = torch.randint(0, 4, (32,))
    x = centers[y] + torch.randn(32, 8)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
