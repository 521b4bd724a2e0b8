"""Export speed on large records: each diagram of an unrolled RNN (12k autograd nodes), a
REINFORCE loss summed in a Python loop (17k nodes, 4k of them repeated ops outside modules)
and a 5,000-module model, to DOT (layout excluded) and to SVG (Graphviz's dot included).

    python benchmarks/export.py [--steps 2000] [--repeat 3]

Prints, per record and diagram, the median seconds and the number of nodes drawn.
"""

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import gradscope
from common import steps_and_repeats
from gradscope.export import export_record
from models import Unrolled


def rnn(folder: Path, steps: int) -> Path:
    model = Unrolled()
    with gradscope.watch(model, record=folder / "rnn.sqlite", checks=False):
        model(torch.randn(steps, 2, 4)).sum().backward()
    return folder / "rnn.sqlite"


def reinforce(folder: Path, steps: int) -> Path:
    policy = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2), nn.Softmax(-1))
    with gradscope.watch(policy, record=folder / "pg.sqlite", checks=False):
        loss = 0
        for _ in range(steps // 2):
            d = torch.distributions.Categorical(policy(torch.randn(4)))
            a = d.sample()
            loss = loss - d.log_prob(a) * float(a)
        loss.backward()
    return folder / "pg.sqlite"


def wide(folder: Path, _steps: int) -> Path:
    block = lambda: nn.Sequential(*[nn.Linear(2, 2) if i % 2 == 0 else nn.Tanh() for i in range(9)])
    model = nn.Sequential(*[nn.Sequential(*[block() for _ in range(10)]) for _ in range(50)])
    with gradscope.watch(model, record=folder / "wide.sqlite", checks=False):
        model(torch.randn(1, 2)).sum().backward()
    return folder / "wide.sqlite"


def main() -> None:
    args = steps_and_repeats(repeat=3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for make in (rnn, reinforce, wide):
            record = gradscope.open_record(make(folder, args.steps))
            size = len(record.graph().nodes)
            for graph in ("autograd", "flow"):
                for fmt in ("dot", "svg"):
                    times = []
                    for _ in range(args.repeat):
                        start = time.perf_counter()
                        export_record(record, folder / f"out.{fmt}", graph=graph)
                        times.append(time.perf_counter() - start)
                    drawn = (folder / "out.dot").read_text().count("label=") if fmt == "dot" else "-"
                    print(f"{make.__name__:10} {size:6} autograd nodes  {graph:8} {fmt}: "
                          f"{statistics.median(times):6.2f}s  (labels in dot: {drawn})")


if __name__ == "__main__":
    main()
