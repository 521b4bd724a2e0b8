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
