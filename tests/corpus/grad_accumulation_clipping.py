"""Gradient accumulation over four micro-batches with gradient clipping and a step-decay schedule."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
centers = torch.randn(3, 8) * 2
for step in range(60):
    for _ in range(4):
        y = torch.randint(0, 3, (8,))
        x = centers[y] + torch.randn(8, 8)
        (F.cross_entropy(model(x), y) / 4).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
