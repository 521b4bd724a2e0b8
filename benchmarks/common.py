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


def model_options(steps: int, *, model: str = "tensors", size: int = 2000,
                  stats_every: int | None = None) -> argparse.Namespace:
    """The options --model (one of `models.make`'s CPU models), --size (parameter tensors or
    modules of the scaling models) and --steps, parsed; --stats-every too when given a default."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=model, choices=("tensors", "modules", "resnet", "transformer"))
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--steps", type=int, default=steps)
    if stats_every is not None:
        parser.add_argument("--stats-every", type=int, default=stats_every, help="1: statistics steps only")
    return parser.parse_args()


def model_label(args: argparse.Namespace) -> str:
    """The model as the benchmarks print it: its name, and its size for the scaling models."""
    return f"{args.model} ({args.size})" if args.model in ("tensors", "modules") else args.model


def cpu_training(model: str, size: int = 0):
    """(net, SGD optimizer, inputs, class targets) of `models.make`'s `model` on the CPU, seed 0."""
    from models import make

    torch.manual_seed(0)
    net, x = make(model, "cpu", size=size)[:2]
    y = torch.randint(0, net(x).shape[-1], (x.shape[0],))
    return net, torch.optim.SGD(net.parameters(), lr=1e-3), x, y


def stub_recorder() -> None:
    """Hand no step to gradscope's recorder thread from now on: what is timed after is the
    training thread's share alone (on a machine with few cores the recorder competes for them)."""
    from gradscope.record.writer import RecordWriter

    RecordWriter.send_step = lambda self, snapshot: None
