"""How gradscope's cost scales with the model: many parameter tensors, many modules, one huge
parameter.

    python benchmarks/scaling.py [--rounds 3] [--steps 50] [--no-recorder] [--threads N]

* Step time with 2,000 parameter tensors (an MLP of 1,000 small linear layers) and with 5,000
  modules, watched (default settings, after the dense start) over bare, interleaved in rounds:
  the ratio of total (mean) and of median step times, and of the first 20 steps (the dense
  start, full statistics on every step).
* Peak extra memory of one 50M-element float32 parameter (200 MB), each contender in its own
  process (the peak resident size of bare training subtracted from that of watched training
  with full statistics on every step: weights, gradients and their histograms).

With ``--no-recorder`` the steps are not handed to the recorder thread: the step times are the
training thread's share alone (on a machine with few cores the recorder competes for them).
``--threads 1`` leaves torch one thread: on two cores one stays free for the recorder, so what
the recorder still costs the training thread is the GIL they share (`gil.py`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import gradscope
from common import cpu_training, stub_recorder, timed_steps
from gradscope.settings import DEFAULTS
from models import make


def timing(model: str, size: int, rounds: int, n: int) -> dict:
    net, opt, x, y = cpu_training(model, size)
    timed_steps(net, opt, x, y, 3)
    bare, watched, dense = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            bare += timed_steps(net, opt, x, y, n)
            with gradscope.watch(net, opt, record=Path(folder) / f"{r}.sqlite"):
                dense += timed_steps(net, opt, x, y, DEFAULTS.dense_steps)
                watched += timed_steps(net, opt, x, y, n)
    mean = statistics.fmean(bare)
    return {
        "bare_ms": mean * 1e3,
        "mean": statistics.fmean(watched) / mean,
        "median": statistics.median(watched) / statistics.median(bare),
        "dense": statistics.fmean(dense) / mean,
    }


def peak_child(mode: str, size: int, n: int) -> None:
    """In a child process: train the one-parameter model; print the peak resident MB."""
    net, x = make("big", "cpu", size=size)[:2]
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    y = torch.zeros(1, dtype=torch.long)
    with tempfile.TemporaryDirectory() as folder:
        if mode == "bare":
            timed_steps(net, opt, x, y, n)
        else:
            with gradscope.watch(net, opt, record=Path(folder) / "p.sqlite", stats_every=1):
                timed_steps(net, opt, x, y, n)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak(mode: str, size: int, n: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--peak-child", mode, "--size", str(size), "--steps", str(n)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=DEFAULTS.stats_every)
    parser.add_argument("--size", type=int, default=50_000_000)
    parser.add_argument("--peak-child", choices=("bare", "watched"))
    parser.add_argument("--no-recorder", action="store_true",
                        help="steps are not handed to the recorder: the training thread's share alone")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own choice); "
                        "with one, a core of two stays free for the recorder thread")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        peak_child(args.peak_child, args.size, args.steps)
        return
    if args.no_recorder:
        stub_recorder()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x "
          f"{args.steps} steps{', recorder stubbed out' if args.no_recorder else ''}\n")
    print("| model | bare ms/step | watched/bare mean | median | dense start (first 20 steps) |")
    print("|---|---|---|---|---|")
    for label, model, size in (("2,000 parameter tensors", "tensors", 2000), ("5,000 modules", "modules", 5000)):
        r = timing(model, size, args.rounds, args.steps)
        print(f"| {label} | {r['bare_ms']:.1f} | x{r['mean']:.2f} | x{r['median']:.2f} | x{r['dense']:.2f} |")
    bare = peak("bare", args.size, 3)
    watched = peak("watched", args.size, 3)
    print(f"\none {args.size:,}-element float32 parameter ({args.size * 4 / 2**20:.0f} MiB), 3 steps with full "
          f"statistics: peak resident {bare:.0f} MB bare, {watched:.0f} MB watched: {watched - bare:+.0f} MB")


if __name__ == "__main__":
    main()
