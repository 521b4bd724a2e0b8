"""Mixed precision on the CPU with bfloat16 autocast (no scaler needed)."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
w = torch.randn(16, 1)
for step in range(60):
    x = torch.randn(32, 16)
    y = x @ w
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    F.mse_loss(out.float(), y).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
