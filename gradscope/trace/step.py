"""The open step: what the hooks gather between two step boundaries, and its snapshot.

A step ends in one of three ways, decided by `ends_step` alone:

- ``"optimizer"``: the primary optimizer (the first that ever stepped) finished ``step()``, or
  a ``GradScaler`` skipped its step; other optimizers' updates belong to the step that is open
  when they run;
- ``"forward"``: while no optimizer is watched yet, a watched root module starts a forward
  after a backward ran (weights updated by hand);
- ``"close"``: the session closes with anything recorded in the open step.

At the end of a step, `OpenStep.snapshot` turns everything gathered into one `StepSnapshot`
for the recorder thread; device values travel as one non-blocking copy per device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..data import StepData
from ..record.writer import StepSnapshot
from .batch import RowBatch
from .capture import Staging, local_values, weight_rows


def ends_step(event: str, step: "OpenStep", *, optimizers: bool, primary: bool = False) -> bool:
    """Whether `event` ends `step`; `optimizers` — whether any optimizer is watched;
    `primary` — for ``"optimizer"``, whether the one that stepped is the primary one."""
    if event == "optimizer":
        return primary
    if event == "forward":
        return not optimizers and step.backwards > 0
    if event == "close":
        return step.active()
    raise ValueError(f"unknown step event {event!r}")


@dataclass
class OpenStep:
    """Everything recorded so far in step `number`. `full`: this step takes full statistics;
    `want_graph`: this step walks the autograd graph at its first backward."""

    number: int
    full: bool
    want_graph: bool
    started: float = field(default_factory=time.time)
    batch: RowBatch = field(default_factory=RowBatch)
    calls: list[dict] = field(default_factory=list)
    call_counts: dict[str, int] = field(default_factory=dict)
    input_calls: dict[str, int] = field(default_factory=dict)
    grads: list[tuple] = field(default_factory=list)  # row blocks of the latest backward's gradients
    staging: Staging = field(default_factory=Staging)  # module tensors on full-statistics steps
    zero_grads: list[dict] = field(default_factory=list)
    optimizer_steps: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # optimizers whose step a GradScaler skipped
    backwards: int = 0
    graph: object = None

    def active(self) -> bool:
        return bool(self.calls or self.backwards or self.optimizer_steps or self.skipped)

    def signature(self) -> tuple:
        """The shape of the step's module calls: a new signature means a new graph to walk."""
        return tuple(
            (c["module"], c["call"], tuple(tuple(i.get("shape", ())) for i in c["inputs"]))
            for c in self.calls
        )

    def snapshot(self, tracker, params, eval_modules: list[str], lrs: dict) -> StepSnapshot:
        """Close the step's device work and package it: `tracker` — the parameter tracker
        (its whole-step update rows); `params` — name -> weak reference of every watched
        parameter (weights on full-statistics steps)."""
        batch = self.batch
        for names, rows in tracker.end_step():
            batch.add("step-update", names, [1] * len(names), rows)
        for block in list(self.grads):  # a copy: another thread may still add to this step
            batch.add(*block)
        self.staging.drain(batch)
        if self.full:
            named = [(name, local_values(p)) for name, p in ((n, r()) for n, r in params.items()) if p is not None]
            for block in weight_rows([(name, values) for name, values in named if values is not None]):
                batch.add(*block)
        data = StepData(
            step=self.number,
            time=self.started,
            backwards=self.backwards,
            optimizer_steps=self.optimizer_steps,
            skipped=self.skipped,
            zero_grad=self.zero_grads,
            eval_modules=eval_modules,
            lrs=lrs,
            calls=self.calls,
            graph=self.graph,
        )
        return StepSnapshot(data, batch.freeze())
