"""A GAN on 2-d points: the generator's optimizer steps first in each iteration, then the
discriminator's; both optimizers exist from the start."""
import sys

import torch
from torch import nn
from torch.nn import functional as F


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))

    def forward(self, x):
        return self.main(x)


torch.manual_seed(0)
gen, disc = Generator(), Discriminator()
opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.999))
ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
for step in range(80):
    real = torch.randn(64, 2) * 0.5 + torch.tensor([2.0, -1.0])
    fake = gen(torch.randn(64, 4))
    opt_g.zero_grad()
    F.binary_cross_entropy_with_logits(disc(fake), ones).backward()
    opt_g.step()
    opt_d.zero_grad()
    d_loss = (F.binary_cross_entropy_with_logits(disc(real), ones)
              + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros))
    d_loss.backward()
    opt_d.step()
torch.save({"gen": gen.state_dict(), "disc": disc.state_dict()}, sys.argv[1])
