"""Which objects a watched step promotes to the collector's oldest generation, by type and by
the thread whose collection promoted them: what brings the next full collection nearer.

    python benchmarks/promotions.py [--model modules] [--size 5000] [--steps 6] [--stats-every 1]

Python runs a full collection (a walk over every object of the process) once the objects
promoted to the oldest generation since the last one exceed a quarter of those already there.
After warm-up every object alive is frozen (`gc.freeze`), so each young-to-old collection's
newcomers are exactly the objects it promotes; they are counted by type, per step. A slow
diagnostic (it lists the middle generation at every such collection), not a timing; bare steps
for comparison.
"""

from __future__ import annotations

import collections
import gc
import tempfile
import threading
from pathlib import Path

import gradscope
from common import cpu_training, model_label, model_options, timed_steps
from gradscope.settings import DEFAULTS


class Promotions:
    """Counts the objects each collection of the middle generation moves to the oldest one."""

    def __init__(self):
        self.types: collections.Counter = collections.Counter()
        self.threads: collections.Counter = collections.Counter()
        self._middle: set[int] = set()

    def _callback(self, phase: str, info: dict) -> None:
        if info["generation"] != 1:
            return
        if phase == "start":
            self._middle = {id(o) for o in gc.get_objects(generation=1)}
            return
        promoted = [type(o).__name__ for o in gc.get_objects(generation=2) if id(o) in self._middle]
        self.types.update(promoted)
        thread = "training" if threading.current_thread() is threading.main_thread() else "gradscope"
        self.threads[thread] += len(promoted)

    def count(self, net, opt, x, y, steps: int) -> None:
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._callback)
        try:
            timed_steps(net, opt, x, y, steps)
        finally:
            gc.callbacks.remove(self._callback)
            gc.unfreeze()

    def report(self, label: str, steps: int) -> None:
        total = sum(self.threads.values())
        threads = ", ".join(f"{thread} {n / steps:,.0f}" for thread, n in self.threads.most_common())
        print(f"  {label}: {total / steps:,.0f} objects promoted a step ({threads or 'none'})")
        for name, n in self.types.most_common(12):
            print(f"    {name:28s} {n / steps:9,.1f}")


def main() -> None:
    args = model_options(steps=6, model="modules", size=5000, stats_every=1)
    net, opt, x, y = cpu_training(args.model, args.size)
    timed_steps(net, opt, x, y, 3)
    print(f"{model_label(args)}, {args.steps} steps, statistics every {args.stats_every} steps, "
          f"{len(gc.get_objects()):,} objects tracked before watching")
    bare = Promotions()
    bare.count(net, opt, x, y, args.steps)
    bare.report("bare", args.steps)
    watched = Promotions()
    with tempfile.TemporaryDirectory() as folder:
        with gradscope.watch(net, opt, record=Path(folder) / "r.sqlite", stats_every=args.stats_every):
            timed_steps(net, opt, x, y, DEFAULTS.dense_steps + 3)
            watched.count(net, opt, x, y, args.steps)
    watched.report("watched", args.steps)


if __name__ == "__main__":
    main()
