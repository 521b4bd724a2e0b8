"""Full-batch regression with LBFGS: every forward runs inside optimizer.step(closure)."""
import sys

import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


torch.manual_seed(0)
model = Net()
opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=10, history_size=10)
x = torch.randn(128, 4)
y = torch.sin(x.sum(1, keepdim=True))


def closure():
    opt.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    return loss


for step in range(15):
    opt.step(closure)
torch.save({"model": model.state_dict()}, sys.argv[1])
