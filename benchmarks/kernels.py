"""Kernel launches per training step, bare and watched, counted with a TorchDispatchMode.

    python benchmarks/kernels.py [--steps 20]

Counts the non-view aten operations run on the training thread (each one a kernel launch on a
GPU) over `--steps` steady-state steps after the dense start of a run, with statistics every 10
steps (five times as often as the default, 50: a window of 20 steps holds two), for the 16-block ResNet-style CNN
(134 parameter tensors) and the 4-layer transformer (50 tensors); then the extra operations of
one step without statistics as the number of parameter tensors grows, and the host reads
(``aten._local_scalar_dense``) gradscope makes on the training thread. Timing-free: the
figures are the same on any machine. The CPU reduces segments of packed tensors by blocks (more
operations, each vectorized); a GPU reduces them directly (`gradscope.trace.capture.BLOCKED`):
`--reduction` picks which path is counted, the GPU's by default.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import gradscope
from common import step
from gradscope.settings import DEFAULTS
from gradscope.trace import capture
from models import make

# The counter the test suite checks its own figures with (tests/kernel_count.py explains why it
# lives there).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kernel_count import Count  # noqa: E402


def train(net, opt, x, y, steps: int, counter: Count | None = None) -> list[int]:
    per_step = []
    for _ in range(steps):
        before = sum(counter.ops.values()) if counter else 0
        step(net, opt, x, y)
        per_step.append(sum(counter.ops.values()) - before if counter else 0)
    return per_step


def measure(model: str, steps: int, *, size: int = 0, stats_every: int = 10):
    """(bare ops per step, watched ops per step, the watched per-step list, host reads)."""
    torch.manual_seed(0)
    net, x = make(model, "cpu", size=size)[:2]
    classes = net(x).shape[-1]
    y = torch.randint(0, classes, (x.shape[0] if x.dim() else 1,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    train(net, opt, x, y, 2)
    with Count(host_reads=False) as bare:
        bare_steps = train(net, opt, x, y, steps, bare)
    with tempfile.TemporaryDirectory() as folder:
        with gradscope.watch(net, opt, record=Path(folder) / "k.sqlite", stats_every=stats_every):
            train(net, opt, x, y, DEFAULTS.dense_steps + 1)
            with Count(host_reads=False) as watched:
                watched_steps = train(net, opt, x, y, steps, watched)
    return (sum(bare_steps) / steps, sum(watched_steps) / steps, watched_steps,
            watched.ops["_local_scalar_dense"] - bare.ops["_local_scalar_dense"],
            sum(bare_steps) / steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reduction", choices=("direct", "blocks"), default="direct",
                        help="how segments are reduced: directly, as on a GPU (default), or by blocks, "
                             "as on the CPU (more, cheaper operations)")
    args = parser.parse_args()
    capture.BLOCKED = {"cpu"} if args.reduction == "blocks" else set()
    print(f"torch {torch.__version__}; non-view aten ops per step, {args.steps} steady-state steps "
          f"after the dense start (stats_every=10: {args.steps // 10} statistics steps in the window); "
          f"segments reduced {'by blocks (the CPU path)' if args.reduction == 'blocks' else 'directly (the GPU path)'}\n")
    print("| model | tensors | bare | watched (mean) | ratio | non-stats step | stats step | host reads |")
    print("|---|---|---|---|---|---|---|---|")
    for model in ("resnet", "transformer"):
        tensors = sum(1 for _ in make(model, "cpu")[0].parameters())
        bare, watched, steps, reads, _ = measure(model, args.steps)
        quiet = min(steps)
        print(f"| {model} | {tensors} | {bare:.0f} | {watched:.0f} | x{watched / bare:.3f} | "
              f"+{quiet - bare:.0f} | +{max(steps) - bare:.0f} | {reads} |")
    print("\nextra ops of a step without statistics as parameter tensors grow (MLP of linear layers):\n")
    print("| tensors | bare | watched | extra |")
    print("|---|---|---|---|")
    for n in (10, 200, 1000):
        bare, _, steps, _, _ = measure("tensors", 10, size=n, stats_every=1000)
        print(f"| {n} | {bare:.0f} | {min(steps):.0f} | +{min(steps) - bare:.0f} |")


if __name__ == "__main__":
    main()
