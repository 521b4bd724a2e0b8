"""An MLP trained through `torch.compile` (default backend): gradscope's hooks must neither warn
while the model is traced nor change a single weight."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
compiled = torch.compile(model)
opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
w = torch.randn(8, 1)
for step in range(60):
    x = torch.randn(32, 8)
    opt.zero_grad()
    F.mse_loss(compiled(x), x @ w).backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
