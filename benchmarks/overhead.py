"""Per-step cost of gradscope.watch against a bare training step, interleaved in one run.

    python benchmarks/overhead.py [--steps 30] [--rounds 5] [--batch 64]

Trains the demo CNN (CPU, or CUDA when present) in rounds that alternate bare and watched
training, and prints the median step time of each and their ratio.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import gradscope
from gradscope.demo import Net


def _steps(net, opt, x, y, n, device):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    _steps(net, opt, x, y, 5, device)  # warm-up
    bare, watched = [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            bare += _steps(net, opt, x, y, args.steps, device)
            with gradscope.watch(net, opt, record=Path(folder) / f"r{r}.sqlite"):
                watched += _steps(net, opt, x, y, args.steps, device)
    b, w = statistics.median(bare), statistics.median(watched)
    print(f"device {device}, demo CNN, batch {args.batch}, {args.rounds}x{args.steps} steps each")
    print(f"bare     median {b * 1e3:8.3f} ms/step")
    print(f"watched  median {w * 1e3:8.3f} ms/step")
    print(f"ratio    {w / b:.3f}")


if __name__ == "__main__":
    main()
