"""Mixed precision on the CPU with float16 autocast and torch.amp.GradScaler.

The initial scale is high enough that the first steps overflow: the scaler skips them and lowers
its scale, as it does on real GPU runs. Those skipped steps are normal, not an error.
"""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
w = torch.randn(16, 1)
skipped = 0
for step in range(60):
    x = torch.randn(32, 16)
    y = x @ w
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.mse_loss(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scale = scaler.get_scale()
    scaler.update()
    skipped += scaler.get_scale() < scale
assert skipped >= 2, skipped  # the pattern this script stands for
torch.save({"model": model.state_dict(), "scaler": scaler.state_dict()}, sys.argv[1])
