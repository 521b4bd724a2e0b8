"""Multi-task training: an auxiliary head gets a loss on one batch in four (when its labels are
present), the main head on every batch."""
import sys

import torch
from torch import nn
from torch.nn import functional as F


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.main = nn.Linear(32, 1)
        self.aux = nn.Linear(32, 1)

    def forward(self, x, with_aux):
        h = self.trunk(x)
        return self.main(h), (self.aux(h) if with_aux else None)


torch.manual_seed(0)
model = TwoHeads()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
w, v = torch.randn(8, 1), torch.randn(8, 1)
for step in range(80):
    x = torch.randn(32, 8)
    with_aux = step % 4 == 3
    main, aux = model(x, with_aux)
    loss = F.mse_loss(main, x @ w)
    if with_aux:
        loss = loss + F.mse_loss(aux, x @ v)
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
