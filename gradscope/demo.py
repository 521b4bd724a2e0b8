"""The demo: the classic tutorial CNN learning a small generated image task.

The data is made here, from a fixed seed (no download): 32x32 one-channel images of ten
classes, each class a bar at its own angle, drawn with noise and random offsets. `BUGS` plants a
known mistake so that findings appear.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    """LeNet-style network: conv1 1->6 k3, conv2 6->16 k3, fc1 576->120, fc2 120->84, fc3 84->10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images [n, 1, 32, 32] and labels [n]: class k is a bar at angle k*18 degrees."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    coords = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angles = labels.float() * math.pi / 10
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.4
    x = xx[None] - shift[:, 0, None, None]
    y = yy[None] - shift[:, 1, None, None]
    dist = (x * torch.sin(angles)[:, None, None] - y * torch.cos(angles)[:, None, None]).abs()
    images = torch.exp(-(dist / 0.12) ** 2) + 0.15 * torch.randn(n, 32, 32, generator=g)
    return images[:, None], labels


def train(steps: int = 200, bug: str | None = None, batch: int = 32, progress=None, watch=None) -> list[float]:
    """Train `Net` for `steps` steps (SGD with momentum); returns the losses.

    `watch(net, optimizer)`, when given, returns a context manager that is held during training
    (``gradscope.watch`` fits); `progress(step, steps, loss)` is called after every step.
    """
    torch.manual_seed(0)
    images, labels = make_data(steps * batch if steps * batch < 8192 else 8192)
    net = Net()
    if bug == "dead-relu":
        with torch.no_grad():
            net.fc1.bias.fill_(-20.0)
    lr = 50.0 if bug == "lr" else 0.02
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    with watch(net, optimizer) if watch is not None else contextlib.nullcontext():
        _loop(net, optimizer, images, labels, steps, batch, bug, progress, losses)
    return [float(v) for v in losses]


def record(path, steps: int, bug: str | None = None, *, analyzer=None, control=None):
    """Train the demo recorded into `path` (what ``gradscope demo`` runs), printing progress;
    returns the closed `Session`."""
    from .session import Session

    sessions = []

    def attach(net, optimizer):
        run = {"mode": "demo", "target": "gradscope demo", "bug": bug, "argv": sys.argv}
        session = Session(path, analyzer=analyzer, run=run, control=control)
        session.add_model(net)
        session.add_optimizer(optimizer)
        sessions.append(session)
        return session

    train(steps, bug, progress=print_progress, watch=attach)
    return sessions[0]


def _loop(net, optimizer, images, labels, steps, batch, bug, progress, losses) -> None:
    for step in range(steps):
        start = (step * batch) % (len(images) - batch + 1)
        x, y = images[start : start + batch], labels[start : start + batch]
        if bug == "nan" and step == 30:
            x = x.clone()
            x[0, 0, 0, 0] = float("inf")
        if bug != "no-zero-grad":
            optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if progress is not None:
            progress(step, steps, loss)


def print_progress(step: int, steps: int, loss: torch.Tensor) -> None:
    """Progress on stderr every 20 steps (reading the loss here is the demo's own choice)."""
    if step % 20 == 0 or step == steps - 1:
        print(f"demo: step {step + 1}/{steps}  loss {float(loss.detach()):.4f}", file=sys.stderr)
