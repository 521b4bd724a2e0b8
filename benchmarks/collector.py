"""What Python's garbage collector costs a watched run: collections by generation and thread,
and their time per step, bare and watched (default settings, after the dense start).

    python benchmarks/collector.py [--model tensors] [--size 2000] [--steps 60]

Objects that outlive a young collection count toward the next full collection, which walks
every object of the process: with a large model (hundreds of thousands of objects) each full
collection takes a few hundred milliseconds, on whichever thread runs it.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
import time
from pathlib import Path


import gradscope
from common import cpu_training, model_label, model_options, timed_steps
from gradscope.settings import DEFAULTS


class Collections:
    """Counts and times every collection (a `gc.callbacks` entry), by thread and generation."""

    def __init__(self):
        self.seen: dict[tuple[str, int], list] = {}
        self._started: dict[int, float] = {}
        gc.callbacks.insert(0, self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.perf_counter()
            return
        thread = "training" if threading.current_thread() is threading.main_thread() else "gradscope"
        entry = self.seen.setdefault((thread, info["generation"]), [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - self._started.pop(ident, time.perf_counter())

    def report(self, label: str, steps: int) -> None:
        for (thread, generation), (count, seconds) in sorted(self.seen.items()):
            print(f"  {label:8s} {thread:9s} generation {generation}: {count:5d} collections, "
                  f"{seconds / steps * 1e3:7.2f} ms/step")
        self.seen.clear()


def main() -> None:
    args = model_options(steps=60)
    net, opt, x, y = cpu_training(args.model, args.size)
    timed_steps(net, opt, x, y, 3)
    collections = Collections()
    bare = timed_steps(net, opt, x, y, args.steps)
    print(f"{model_label(args)}, {args.steps} steps, {len(gc.get_objects()):,} objects tracked")
    collections.report("bare", args.steps)
    with tempfile.TemporaryDirectory() as folder:
        with gradscope.watch(net, opt, record=Path(folder) / "r.sqlite"):
            timed_steps(net, opt, x, y, DEFAULTS.dense_steps)
            collections.seen.clear()
            watched = timed_steps(net, opt, x, y, args.steps)
            collections.report("watched", args.steps)
    print(f"  step: bare {statistics.fmean(bare) * 1e3:.1f} ms, watched {statistics.fmean(watched) * 1e3:.1f} ms "
          f"(x{statistics.fmean(watched) / statistics.fmean(bare):.2f} mean)")


if __name__ == "__main__":
    main()
