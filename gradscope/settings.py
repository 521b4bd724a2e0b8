"""What a session records and how often: one home for the defaults.

`gradscope.watch`, ``gradscope run`` and ``gradscope demo`` all start from `DEFAULTS`, and the
command line's help text is generated from `HELP`, so a default changes in one place. This
module imports nothing heavy: ``gradscope --help`` reads it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Settings:
    """`sample` — elements per parameter tracked for update statistics; `max_calls` — calls per
    module per step described in full; `graph_every` — walk the autograd graph every N steps
    (and whenever the step's module calls change shape; 0 turns graph capture off);
    `stats_every` — module and weight statistics every N steps after the first `dense_steps`
    steps (which all get them), and on every step once a non-finite value was seen.

    Why 50 steps apart: a statistics step passes over every activation and output gradient
    several times and describes every module call. On the CPU that can cost more than the step
    itself (`benchmarks/hooks.py`: ×2.2–2.4 for the small ResNet-style CNN and transformer at
    batch 8, ×4–5 at thousands of modules), so one in 10 added 12–14 % to such a run, and one
    in 50 adds under 3 %. What needs them loses little: the dense start judges the first steps
    in full, gradient norms, non-finite values and updates are taken on every step, and the
    first non-finite value turns statistics on for every step after it. Lightning's default
    logging interval is 50 steps as well."""

    sample: int = 1024
    max_calls: int = 8
    graph_every: int = 100
    stats_every: int = 50
    dense_steps: int = 20

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{f.name} must be an integer, got {value!r}")
            low = 0 if f.name in ("graph_every", "dense_steps") else 1
            if value < low:
                raise ValueError(f"{f.name} must be {'>= 0' if low == 0 else 'positive'}, got {value}")


DEFAULTS = Settings()

#: Command-line help for each setting that has an option, with its default filled in.
HELP = {
    "sample": f"elements per parameter tracked for update statistics (default {DEFAULTS.sample})",
    "graph_every": (
        "walk the autograd graph every N steps and when shapes change "
        f"(default {DEFAULTS.graph_every}; 0: never)"
    ),
    "stats_every": (
        f"module statistics every step for the first {DEFAULTS.dense_steps} steps, then every N "
        f"steps (default {DEFAULTS.stats_every}; 1: every step)"
    ),
}
