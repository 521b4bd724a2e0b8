"""What the UI shows, read from the record off the UI thread (live and replay alike)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..data import StepData
from ..record.reader import Record
from ..trace.autograd import GraphData


@dataclass
class ViewState:
    """One consistent reading of the record, at one step."""

    path: Path
    run: dict = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    step: int | None = None
    modules: list[dict] = field(default_factory=list)
    parameters: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)
    data: StepData | None = None
    graph: GraphData | None = None
    graph_step: int | None = None  # the step `graph` was recorded at

    @property
    def signature(self) -> tuple:
        return (len(self.steps), self.step, len(self.findings),
                sum(f["count"] for f in self.findings), self.run.get("status"), self.run.get("paused"))


def read_state(record: Record, step: int | None) -> ViewState:
    """The record at `step` (None: the latest step)."""
    state = ViewState(record.path, run=record.run(), steps=record.step_numbers())
    state.modules = record.modules()
    state.parameters = record.parameters()
    state.findings = record.findings()
    if state.steps:
        state.step = state.steps[-1] if step is None or step not in state.steps else step
        state.data = record.step(state.step)
        state.graph_step = record.graph_step(state.step)
        state.graph = None if state.graph_step is None else record.graph(state.graph_step, exact=True)
    return state


def open_when_ready(path: Path) -> Record | None:
    """The record, or None while a starting script has not created it yet (the writer moves
    a complete empty record into place, so a file that exists is whole or not a record)."""
    if not path.exists():
        return None
    return Record(path)


@dataclass
class Details:
    """What the details panel shows for one subject at one step."""

    kind: str
    name: str
    step: int | None
    info: dict = field(default_factory=dict)  # module or parameter row
    calls: list[dict] = field(default_factory=list)
    stats: list = field(default_factory=list)  # Stat rows of this subject at the step
    stats_step: int | None = None  # set when `stats` come from an earlier step (periodic statistics)
    update: object = None
    grad_norms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    hist: tuple | None = None


def read_details(record: Record, kind: str, name: str, step: int | None) -> Details:
    details = Details(kind, name, step)
    if kind == "param":
        details.info = next((p for p in record.parameters() if p["name"] == name), {})
        details.grad_norms = [s.norm for _, s in record.stat_series("grad", name) if math.isfinite(s.norm)]
        details.ratios = [u.ratio for _, u in record.update_series(name)
                          if u.ratio is not None and math.isfinite(u.ratio)]
        if step is not None:
            found = record.latest_hist(name, step)
            details.hist = found[1] if found else None
    elif kind == "module":
        details.info = next((m for m in record.modules() if m["name"] == name), {})
        details.grad_norms = [s.norm for _, s in record.stat_series("grad-output", name) if math.isfinite(s.norm)]
        if step is not None:
            details.calls = record.calls(step=step, module=name)
    if step is not None:
        details.stats = record.stats(step=step, subject=name)
        if not any(s.kind != "grad" for s in details.stats):  # module statistics are periodic
            earlier = record.last_stats_step(name, step)
            if earlier is not None and earlier != step:
                details.stats_step = earlier
                details.stats = record.stats(step=earlier, subject=name)
        if kind == "param":
            details.update = next(iter(record.updates(step=step, param=name)), None)
    return details
