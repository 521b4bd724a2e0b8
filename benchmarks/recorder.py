"""Where the recorder thread's time goes per step: decoding, each table's inserts, the series
listings, commits and the checks, for plain and statistics steps (default settings).

    python benchmarks/recorder.py [--model tensors] [--size 2000] [--steps 221]

Each part is timed on the recorder thread around the call, wall time (`perf_counter`, which
includes waiting for the GIL) and CPU time of the thread (`thread_time`), in ms per step. A
statistics step is one with full statistics (its weights summarized), the dense start included.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path


import gradscope
from common import cpu_training, model_label, model_options, timed_steps
from gradscope import analysis
from gradscope.record import schema, series, writer


class Timings:
    """Seconds (wall, CPU) per (part, step kind), summed over the run. Parts timed within a
    step's write count toward its kind once the step is decoded; a commit toward the kind of the
    step written last."""

    def __init__(self):
        self.seconds = collections.defaultdict(lambda: [0.0, 0.0])
        self.steps = collections.Counter()
        self.kind = "plain"
        self._current: dict | None = None  # the step being written: part -> [wall, cpu]

    def wrap(self, owner, name: str, label) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                part = label(args) if callable(label) else label
                entry = (self._current if self._current is not None else
                         {part: self.seconds[(part, self.kind)]}).setdefault(part, [0.0, 0.0])
                entry[0] += time.perf_counter() - wall
                entry[1] += time.thread_time() - cpu

        setattr(owner, name, timed)

    def watch_steps(self) -> None:
        original = writer.RecordWriter._on_step

        def on_step(recorder, conn, snapshot):
            self._current = {}
            try:
                return original(recorder, conn, snapshot)
            finally:
                data = snapshot.data
                self.kind = "stats" if any(s.kind == "weight" for s in data.stats) else "plain"
                self.steps[self.kind] += 1
                for part, (wall, cpu) in self._current.items():
                    entry = self.seconds[(part, self.kind)]
                    entry[0] += wall
                    entry[1] += cpu
                self._current = None

        writer.RecordWriter._on_step = on_step

    def report(self) -> None:
        for kind in ("plain", "stats"):
            n = self.steps[kind]
            if not n:
                continue
            print(f"{kind} steps: {n}")
            parts = sorted(((part, s) for (part, k), s in self.seconds.items() if k == kind), key=lambda e: -e[1][0])
            for part, (wall, cpu) in parts:
                print(f"  {part:18s} wall {wall / n * 1e3:8.2f} ms/step   cpu {cpu / n * 1e3:8.2f} ms/step")


def main() -> None:
    args = model_options(steps=221)
    timings = Timings()
    timings.wrap(schema.Table, "insert", lambda args: f"insert {args[0].name}")
    timings.wrap(series.Listing, "add", "series listing")
    timings.wrap(writer._Connection, "commit", "commit")
    timings.wrap(writer, "decode", "decode")
    timings.wrap(analysis.Analyzer, "step", "checks")
    timings.watch_steps()
    net, opt, x, y = cpu_training(args.model, args.size)
    with tempfile.TemporaryDirectory() as folder:
        with gradscope.watch(net, opt, record=Path(folder) / "r.sqlite"):
            timed_steps(net, opt, x, y, args.steps)
    print(f"{model_label(args)}, {args.steps} steps")
    timings.report()


if __name__ == "__main__":
    main()
