"""Helpers shared by the benchmark scripts: a training step, timed steps, the usual options."""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F


def step(net, opt, x, y) -> None:
    """One training step: cross-entropy of `net(x)` against `y`, backward, optimizer step."""
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()


def sync(device) -> None:
    """Wait for the device's queued work (CUDA only; nothing to wait for elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_steps(net, opt, x, y, n: int, device=None) -> list[float]:
    """`n` training steps; each one's seconds, the device synchronised before the clock stops."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step(net, opt, x, y)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def steps_and_repeats(repeat: int, steps: int = 2000) -> argparse.Namespace:
    """The options --steps and --repeat, parsed; the random seed set to 0."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeat", type=int, default=repeat)
    args = parser.parse_args()
    torch.manual_seed(0)
    return args


def model_options(steps: int) -> argparse.Namespace:
    """The options --model (one of `models.make`'s CPU models), --size (parameter tensors or
    modules of the scaling models) and --steps, parsed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tensors", choices=("tensors", "modules", "resnet", "transformer"))
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=steps)
    return parser.parse_args()


def cpu_training(model: str, size: int = 0):
    """(net, SGD optimizer, inputs, class targets) of `models.make`'s `model` on the CPU, seed 0."""
    from models import make

    torch.manual_seed(0)
    net, x = make(model, "cpu", size=size)[:2]
    y = torch.randint(0, net(x).shape[-1], (x.shape[0],))
    return net, torch.optim.SGD(net.parameters(), lr=1e-3), x, y
