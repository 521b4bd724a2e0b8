"""A `torch.compile`d model, watched against bare: step time after compilation, recompiles and
graph breaks.

    python benchmarks/compiled.py [--rounds 3] [--steps 50]

Both contenders train the same compiled MLP (default inductor backend); rounds of bare and
watched steps are interleaved after both have compiled (the first watched round is a warm-up),
and each round's watched steps start past the dense start (first 20 steps).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

import gradscope
from common import timed_steps
from gradscope.settings import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=DEFAULTS.stats_every)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    net = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    counters = torch._dynamo.utils.counters
    timed_steps(net, opt, x, y, 5)  # compile, bare
    bare, watched = [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds + 1):
            times = timed_steps(net, opt, x, y, args.steps)
            with gradscope.watch(net, opt, record=Path(folder) / f"{r}.sqlite"):
                timed_steps(net, opt, x, y, DEFAULTS.dense_steps)
                watched_times = timed_steps(net, opt, x, y, args.steps)
            if r:  # round 0 compiles whatever watching makes torch compile anew
                bare += times
                watched += watched_times
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    print(f"compiled MLP: bare {statistics.fmean(bare) * 1e3:.2f} ms/step, "
          f"watched/bare mean x{statistics.fmean(watched) / statistics.fmean(bare):.2f}, "
          f"median x{statistics.median(watched) / statistics.median(bare):.2f}")
    print(f"graph breaks: {sum(counters['graph_break'].values())}, "
          f"frames compiled: {counters['stats'].get('unique_graphs', 0)}")


if __name__ == "__main__":
    main()
