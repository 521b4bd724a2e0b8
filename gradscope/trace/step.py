"""The open step: what the hooks gather between two step boundaries, and its snapshot.

A step ends in one of four ways, decided by `ends_step` alone:

- ``"optimizer"``: the primary optimizer (the first that ever stepped) finished ``step()``, or
  a ``GradScaler`` skipped its step; other optimizers' updates belong to the step that is open
  when they run;
- ``"zero_grad"`` and ``"forward"``: while no optimizer is watched (weights updated by hand,
  or ``gradscope run`` before the first optimizer step), gradients are cleared or a watched
  root module starts a forward after a backward ran: the next iteration has begun;
- ``"close"``: the session closes with anything recorded in the open step.

Each event belongs to the step in which it happened: the modules in eval mode are those at the
step's first backward (a later ``model.eval()`` for validation is the next step's), and a step
without any backward or optimizer step (validation) records no parameter updates, so it never
stands in for the last real update.

At the end of a step, `OpenStep.snapshot` turns everything gathered into one `StepSnapshot`
for the recorder thread; device values travel as one non-blocking copy per device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..data import StepData
from ..record.writer import StepSnapshot
from .batch import RowBatch
from .capture import Staging, named_values, weight_rows


def ends_step(event: str, step: "OpenStep", *, optimizers: bool, primary: bool = False) -> bool:
    """Whether `event` ends `step`; `optimizers` — whether any optimizer is watched;
    `primary` — for ``"optimizer"``, whether the one that stepped is the primary one."""
    if event == "optimizer":
        return primary
    if event in ("forward", "zero_grad"):
        return not optimizers and step.backwards > 0
    if event == "close":
        return step.active()
    raise ValueError(f"unknown step event {event!r}")


def _shapes(inputs: list[dict]) -> tuple:
    return tuple(tuple(i.get("shape", ())) for i in inputs)


@dataclass
class OpenStep:
    """Everything recorded so far in step `number`. `full`: this step takes full statistics;
    `want_graph`: this step walks the autograd graph at its first backward; `light`: module
    hooks record the first root call only, for now (a forward without gradients, validation, is described
    whole: the step turns heavy then); `described`: every module call of the step is recorded
    (the step never was light)."""

    number: int
    full: bool
    want_graph: bool
    light: bool = False
    started: float = field(default_factory=time.time)
    batch: RowBatch = field(default_factory=RowBatch)
    calls: list[dict] = field(default_factory=list)
    call_counts: dict[str, int] = field(default_factory=dict)
    input_calls: dict[str, int] = field(default_factory=dict)
    grads: list[tuple] = field(default_factory=list)  # row blocks of the latest backward's gradients
    staging: Staging = field(default_factory=Staging)  # module tensors on full-statistics steps
    zero_grads: list[dict] = field(default_factory=list)
    #: zero_grad calls by a module or optimizer not watched yet: (position in zero_grads, weak
    #: reference to it, set_to_none); booked once it is watched (gradscope run attaches later)
    pending_zero_grads: list[tuple] = field(default_factory=list)
    eval_modules: list[str] | None = None  # taken at the first backward
    optimizer_steps: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # optimizers whose step a GradScaler skipped
    backwards: int = 0
    graph: object = None
    #: (name, descriptions of its positional inputs) of the step's first root call, as it began
    first_root: tuple | None = None

    def __post_init__(self):
        self.described = not self.light

    def active(self) -> bool:
        return bool(self.calls or self.backwards or self.optimizer_steps or self.skipped)

    def signature(self) -> tuple[tuple | None, tuple | None]:
        """The shapes of the step's first root call as it began (its positional inputs), and of
        all its module calls (None when the step was not described): a new signature means a
        new graph to walk. The first root call's, as it began, because that is all a light step
        records: steps of several root calls (a model and its loss module, micro-batches) would
        otherwise differ between light and described steps, and walk the graph every other
        step."""
        first = None if self.first_root is None else (self.first_root[0], _shapes(self.first_root[1]))
        calls = tuple((c["module"], c["call"], _shapes(c["inputs"])) for c in self.calls) if self.described else None
        return first, calls

    def book_zero_grads(self, name_of) -> None:
        """Book the pending zero_grad calls whose owner `name_of(owner)` now names."""
        still, added = [], 0
        for position, ref, set_to_none in self.pending_zero_grads:
            owner = ref()
            who = None if owner is None else name_of(owner)
            if who is None:
                still.append((position + added, ref, set_to_none))
                continue
            self.zero_grads.insert(position + added, {"by": who, "set_to_none": set_to_none})
            added += 1
        self.pending_zero_grads = still

    def snapshot(self, tracker, params, eval_modules: list[str], lrs: dict, device: bool = True) -> StepSnapshot:
        """Close the step's device work and package it: `tracker` — the parameter tracker
        (its whole-step update rows); `params` — name -> weak reference of every watched
        parameter (weights on full-statistics steps); `eval_modules` — the modules in eval
        mode (at the step's first backward); `device=False`: host-side data only, no tensor
        touched (the device rows gathered so far are dropped)."""
        batch = self.batch if device else RowBatch()
        if device:
            if self.backwards or self.optimizer_steps:
                for names, rows in tracker.end_step(self.number):
                    batch.add("step-update", names, [1] * len(names), rows)
            for block in list(self.grads):  # a copy: another thread may still add to this step
                batch.add(*block)
            self.staging.drain(batch)
            if self.full:
                # a copy: another thread may add parameters meanwhile
                for block in weight_rows(*named_values(dict(params))):
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
            described=self.described,
        )
        return StepSnapshot(data, batch.freeze())
