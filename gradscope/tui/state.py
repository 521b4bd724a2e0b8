"""What the UI shows, read from the record off the UI thread (live and replay alike).

The poller asks the record a cheap question first (`Record.data_version`: has anything been
committed since the last look?) and reads a step only when the answer or the wanted step
changed. The autograd graph, the largest thing in a record, is parsed once per recorded graph
and reused across readings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..data import GraphData, StepData
from ..record.reader import Record


@dataclass
class Series:
    """Per-step curves for the training chart, in step order. NaN marks a step without a
    value; `nonfinite` lists the steps whose loss was NaN or infinite (drawn as markers)."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)  # steps per second
    memory: list[float] = field(default_factory=list)  # MB (process RSS, or device memory)
    memory_label: str = "memory"
    nonfinite: list[int] = field(default_factory=list)
    last_time: float | None = None  # the last step's time (its speed is from the one before)

    def copy(self) -> "Series":
        """A copy whose lists the reader may extend while the UI draws this one."""
        return dataclasses.replace(self, **{name: list(value) for name, value in vars(self).items()
                                            if isinstance(value, list)})


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
    series: Series = field(default_factory=Series)
    version: tuple = ()  # what the poller compares to decide that something changed


class Reader:
    """The poller's reader: keeps the record open and the last parsed graph."""

    def __init__(self, record: Record):
        self.record = record
        self._graph_step: int | None = None
        self._graph: GraphData | None = None
        self._series = Series()  # every step read so far: a reading adds the steps recorded since

    def version(self, step: int | None) -> tuple:
        return (self.record.data_version(), step)

    def read(self, step: int | None) -> ViewState:
        """The record at `step` (None: the latest step), as of one commit of its writer."""
        record = self.record
        version = self.version(step)  # before reading: a commit from here on is read next time
        with record.snapshot():
            try:
                self._series = read_series(record, self._series)
            except Exception:  # half read: the next reading starts over
                self._series = Series()
                raise
            state = ViewState(record.path, run=record.run(), version=version)
            state.series = self._series.copy()
            state.steps = state.series.steps
            state.modules = record.modules()
            state.parameters = record.parameters()
            state.findings = record.findings()
            if state.steps:
                state.step = state.steps[-1] if step is None or step not in state.steps else step
                state.data = record.step(state.step, graph=False)
                if not state.data.described:  # shapes of the modules as last described
                    state.data.calls = record.calls_as_of(state.step)
                state.graph_step = record.graph_step(state.step)
                if state.graph_step != self._graph_step:
                    self._graph_step = state.graph_step
                    self._graph = None if state.graph_step is None else record.graph(state.graph_step, exact=True)
                state.graph = self._graph
        return state


def read_series(record: Record, series: Series | None = None) -> Series:
    """Loss, learning rate, speed and memory of every step. Given the `series` read before
    (extended in place), only the steps recorded since are read: a live run's chart is read
    again at every commit, and reading every step took 3.3-3.5 s at 100,000 steps. Steps are
    only ever added; should the record hold another number of them than read, all are read
    again."""
    after = series.steps[-1] if series is not None and series.steps else None
    rows = record.steps(after=after)
    if series is None or len(series.steps) + len(rows) != record.step_count():
        series = Series()
        if after is not None:
            after, rows = None, record.steps()
    loss = {step: stat.mean for step, stat in record.stat_series("loss", "loss", after=after)}
    previous = series.last_time
    for row in rows:
        step = row["step"]
        series.steps.append(step)
        value = loss.get(step, math.nan)
        if step in loss and not math.isfinite(value):
            series.nonfinite.append(step)
        series.loss.append(value)
        lrs = [lr for group in row["lrs"].values() for lr in group if isinstance(lr, (int, float))]
        series.lr.append(lrs[0] if lrs else math.nan)
        elapsed = None if previous is None else row["time"] - previous
        series.speed.append(1.0 / elapsed if elapsed and elapsed > 0 else math.nan)
        previous = row["time"]
        memory = row.get("memory") or {}
        if memory.get("device_allocated") is not None:
            series.memory_label = "device MB"
            series.memory.append(memory["device_allocated"] / 2**20)
        else:
            series.memory.append(memory["rss"] / 2**20 if memory.get("rss") is not None else math.nan)
    series.last_time = previous
    return series


def gradient_flow(state: ViewState) -> list[tuple[str, float, float]]:
    """(parameter, RMS of its gradient, largest |gradient| — the RMS again on steps that took
    only the norm) for the shown step's weight
    parameters (biases and norms' 1-D parameters left out when there are matrices), in the
    order their modules ran forward."""
    if state.data is None:
        return []
    grads = {s.subject: s for s in state.data.stats if s.kind == "grad" and s.call == 0 and s.path == ""}
    order = {}
    for call in state.data.calls:
        order.setdefault(call["module"], len(order))
    params = [p for p in state.parameters if p["name"] in grads]
    matrices = [p for p in params if len(p["shape"]) > 1]
    params = matrices or params
    params.sort(key=lambda p: order.get(p.get("module") or "", len(order)))
    out = []
    for p in params:
        s = grads[p["name"]]
        rms = s.norm / math.sqrt(s.count) if s.count else math.nan
        peak = max(abs(s.min), abs(s.max))  # NaN between full-statistics steps: only the norm is taken
        out.append((p["name"], rms, peak if math.isfinite(peak) or not math.isfinite(rms) else rms))
    return out


def update_ratios(state: ViewState) -> list[tuple[str, float]]:
    """(parameter, |Δw|/|w| of the optimizer's step) at the shown step."""
    if state.data is None:
        return []
    ratios = {name: u.ratio for name, u in state.data.updates.items() if u.ratio is not None}
    return [(p["name"], ratios[p["name"]]) for p in state.parameters if p["name"] in ratios]


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
    stats_every: int | None = None  # the run's interval between statistics steps (None: not in the record)
    update: object = None
    grad_norms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    hist: tuple | None = None
    finding: dict | None = None  # the finding the user chose, shown whole


@dataclass(frozen=True)
class _History:
    subject: tuple[str, str]  # (kind, name)
    steps: int  # steps in the record when read
    through: int | None  # the last of them
    grad_norms: tuple[float, ...]
    ratios: tuple[float, ...]


class Histories:
    """The details panel's per-step histories (gradient norms, update ratios) of the subject
    last read: a live run's details are read again at every commit, and one parameter's
    history over 100,000 steps is 200,000 rows. A reading of the same subject adds the steps
    recorded since; another subject, or a record holding other steps than those read and
    added, is read whole. The last reading is replaced whole, never changed: two readers in
    two threads (a cancelled one still finishing) each see one reading or the other."""

    def __init__(self):
        self._last: _History | None = None

    def read(self, record: Record, kind: str, name: str) -> tuple[list[float], list[float]]:
        with record.snapshot():
            steps, through = record.step_count(), record.last_step()
            last, after = self._last, None
            if (last is not None and last.subject == (kind, name) and last.through is not None
                    and last.steps + record.step_count(after=last.through) == steps):
                after = last.through
            norms, ratios = ([], []) if after is None else (list(last.grad_norms), list(last.ratios))
            grads = record.stat_series("grad" if kind == "param" else "grad-output", name, after=after)
            norms += [s.norm for _, s in grads if math.isfinite(s.norm)]
            if kind == "param":
                ratios += [u.ratio for _, u in record.update_series(name, after=after)
                           if u.ratio is not None and math.isfinite(u.ratio)]
        self._last = _History((kind, name), steps, through, tuple(norms), tuple(ratios))
        return norms, ratios


def read_details(record: Record, kind: str, name: str, step: int | None,
                 histories: Histories | None = None) -> Details:
    """What the details panel shows of a subject at `step`; `histories`: the per-step histories
    read for it before (a live run's details are read again at every commit)."""
    details = Details(kind, name, step)
    if kind in ("param", "module"):
        details.grad_norms, details.ratios = (histories or Histories()).read(record, kind, name)
    if kind == "param":
        details.info = next((p for p in record.parameters() if p["name"] == name), {})
        if step is not None:
            found = record.latest_hist(name, step)
            details.hist = found[1] if found else None
    elif kind == "module":
        details.info = next((m for m in record.modules() if m["name"] == name), {})
        if step is not None:
            details.calls = record.calls_as_of(step, module=name)
    elif kind == "optimizer":
        index = int(name.removeprefix("optimizer")) if name.removeprefix("optimizer").isdigit() else -1
        details.info = next((o for o in record.optimizers() if o["index"] == index), {})
        return details
    elif kind != "loss":
        return details
    if step is not None:
        details.stats = record.stats(step=step, subject=name)
        if not any(s.kind != "grad" for s in details.stats):  # module statistics are periodic
            earlier = record.last_stats_step(name, step)
            if earlier is not None and earlier != step:
                details.stats_step = earlier
                settings = record.run().get("settings")  # a record's own word: checked, never trusted
                every = settings.get("stats_every") if isinstance(settings, dict) else None
                details.stats_every = every if type(every) is int and every > 0 else None
                details.stats = record.stats(step=earlier, subject=name)
        if kind == "param":
            details.update = next(iter(record.updates(step=step, param=name)), None)
    return details
