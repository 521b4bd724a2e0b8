"""Host-side values of one step: what the recorder writes, plugins judge and readers return.

These are plain Python objects (no tensors), the same whether they come from a live run or are
read back from a record.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import ItemsView, Iterable, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import networkx


@dataclass
class GraphData:
    """An autograd graph as plain data: node dicts (with an "id") and edge tuples."""

    nodes: list[dict] = field(default_factory=list)
    edges: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: custom autograd.Function classes met, by qualified name (kept in memory, not stored)
    functions: dict[str, type] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"nodes": self.nodes, "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_json(cls, data: dict) -> "GraphData":
        return cls(data["nodes"], [tuple(e) for e in data["edges"]])


def to_networkx(data: GraphData) -> networkx.DiGraph:
    """Build a `networkx.DiGraph` from `GraphData`; node attributes are the node dicts."""
    import networkx as nx  # only the checks and the report need it

    graph = nx.DiGraph()
    graph.add_nodes_from((info["id"], info) for info in data.nodes)
    for _, attrs in graph.nodes(data=True):
        del attrs["id"]
    graph.add_edges_from(
        (src, dst, {"index": index, "output_nr": output_nr}) for src, dst, index, output_nr in data.edges
    )
    return graph


class Stat(NamedTuple):
    """Statistics of one tensor: a root module's input, an activation, an output gradient, a
    parameter's gradient or weight, or the loss. `kind` is one of `KINDS`; `subject` the module or parameter name (or
    ``loss``); `call` which call of the module in the step (or which backward, for the loss);
    `path` where the tensor sits in a nested output ('' for a plain tensor). Between
    full-statistics steps a parameter gradient's row holds only `count`, `norm` and `nonfinite`
    (1 when any element is NaN or infinite); its other fields are NaN (`zeros` None).

    A named tuple, like `Update`; a step keeps its rows as plain tuples (`Stats`) and makes a
    `Stat` of each as it is read."""

    kind: str
    subject: str
    call: int
    path: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    norm: float
    zeros: int | None  # None: not counted (a gradient between full-statistics steps)
    nonfinite: int


KINDS = ("input", "activation", "grad-output", "grad", "weight", "loss")


class Update(NamedTuple):
    """How a parameter moved. `delta`/`weight` are the norms of the optimizer's change and of the
    weight before it (None when no optimizer stepped it); `outside` the norm of changes made
    since the previous step but before the optimizer ran; `step_delta`/`step_weight` the same
    over the whole step. Norms are over the sampled elements for large parameters."""

    param: str
    optimizer: int | None
    delta: float | None
    weight: float | None
    outside: float | None
    step_delta: float
    step_weight: float

    @property
    def ratio(self) -> float | None:
        if self.delta is None or not self.weight:
            return None
        return self.delta / self.weight


_STAT_FIELDS = {name: i for i, name in enumerate(Stat._fields)}
_NONFINITE = _STAT_FIELDS["nonfinite"]
_kind_of, _nonfinite_of = operator.itemgetter(0), operator.itemgetter(_NONFINITE)
_stat = functools.partial(tuple.__new__, Stat)  # a Stat of a plain tuple (no check of its length)
_update = functools.partial(tuple.__new__, Update)
_UPDATE_FIELDS = {name: i for i, name in enumerate(Update._fields)}


class Stats(Sequence):
    """The statistics rows of a step: a sequence of `Stat`, kept as plain tuples (`rows`) and
    made into a `Stat` as each is read.

    A model with thousands of parameters has thousands of rows a step, alive while the recorder
    writes the step and the plugins judge it. Python's garbage collector tracks every named
    tuple it meets: they outlived young collections, counted toward the next full collection
    (a walk over every object of the process, hundreds of milliseconds for such a model) and
    made it come three times as often. A plain tuple of numbers and strings is no longer
    tracked after its first collection; a `Stat` made for a reader is gone once read."""

    __slots__ = ("rows", "_sorted")

    def __init__(self, rows: Iterable = ()):
        self.rows: list[tuple] = [tuple(r) for r in rows]
        self._sorted: tuple | None = None  # (rows counted, rows by kind, non-finite rows)

    @classmethod
    def _of(cls, rows: list[tuple]) -> "Stats":
        stats = cls.__new__(cls)
        stats.rows, stats._sorted = rows, None
        return stats

    def append(self, stat: Stat) -> None:
        self.rows.append(tuple(stat))

    def of_kind(self, kind: str) -> "Stats":
        """The rows of one kind (see `KINDS`), in order. The rows are sorted by kind once for
        all the readers of a step: a check that wants the gradients does not read every row."""
        return self._sort()[1].get(kind) or Stats._of([])

    def nonfinite(self) -> "Stats":
        """The rows holding NaN or infinity (their `nonfinite` is not 0), in order."""
        return self._sort()[2]

    def column(self, name: str) -> list:
        """One field of every row, in order (``stats.of_kind("grad").column("norm")``)."""
        return list(map(operator.itemgetter(_STAT_FIELDS[name]), self.rows))

    def _sort(self) -> tuple:
        if self._sorted is None or self._sorted[0] != len(self.rows):  # rows added since
            rows = self.rows  # a stable sort keeps each kind's rows in order: C-level passes, no Python step per row
            by_kind = itertools.groupby(sorted(rows, key=_kind_of), _kind_of)
            self._sorted = (len(rows), {kind: Stats._of(list(group)) for kind, group in by_kind},
                            Stats._of(list(filter(_nonfinite_of, rows))))
        return self._sorted

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return map(_stat, self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(map(_stat, self.rows[index]))
        return _stat(self.rows[index])

    def __eq__(self, other) -> bool:
        if isinstance(other, Stats):
            return self.rows == other.rows
        if isinstance(other, (list, tuple)):
            return self.rows == [tuple(s) for s in other]
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"Stats({list(self)!r})"


class Updates(Mapping):
    """A step's parameter updates: a mapping of parameter name to `Update`, kept as plain tuples
    (`rows`) and made into an `Update` as each is read (see `Stats`)."""

    __slots__ = ("rows",)

    def __init__(self, updates: Iterable = ()):
        self.rows: dict[str, tuple] = {u[0]: tuple(u) for u in updates}

    def __setitem__(self, name: str, update: Update) -> None:
        self.rows[name] = tuple(update)

    def __getitem__(self, name: str) -> Update:
        return _update(self.rows[name])

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, name) -> bool:
        return name in self.rows

    def items(self) -> ItemsView:
        return _UpdateItems(self)

    def column(self, name: str) -> list:
        """One field of every update, in the order of the names (``zip(updates,
        updates.column("delta"))``): a check of thousands of parameters reads what it needs."""
        return list(map(operator.itemgetter(_UPDATE_FIELDS[name]), self.rows.values()))

    def values(self) -> ValuesView:
        return _UpdateValues(self)

    def __repr__(self) -> str:
        return f"Updates({list(self.values())!r})"


class _UpdateItems(ItemsView):
    def __iter__(self):
        return zip(self._mapping.rows, map(_update, self._mapping.rows.values()))


class _UpdateValues(ValuesView):
    def __iter__(self):
        return map(_update, self._mapping.rows.values())


@dataclass
class StepData:
    """Everything recorded for one step. `tails` maps (module, call, request name) to
    (elements outside the requested interval, elements counted), for plugins' `TailCount`s;
    `hists` maps a parameter to its gradient histogram (low, high, bin counts) on steps with
    full statistics. `stats` is a sequence of `Stat` (`Stats`), `updates` a mapping of parameter
    name to `Update` (`Updates`). `described`: whether every watched module call of the step is in `calls`;
    False on a step without full statistics or graph walk, whose `calls` hold its first root call only
    (module hooks cost nothing there; the last described step's calls stand for the rest)."""

    step: int
    time: float
    backwards: int = 0
    optimizer_steps: list[int] = field(default_factory=list)
    #: optimizers whose step a ``GradScaler`` skipped (overflowing gradients), live runs only
    skipped: list[int] = field(default_factory=list)
    zero_grad: list[dict] = field(default_factory=list)
    eval_modules: list[str] = field(default_factory=list)
    lrs: dict[str, list] = field(default_factory=dict)
    calls: list[dict] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    updates: Updates = field(default_factory=Updates)
    tails: dict[tuple[str, int, str], tuple[int, int]] = field(default_factory=dict)
    hists: dict[str, tuple[float, float, list[int]]] = field(default_factory=dict)
    graph: GraphData | None = None
    described: bool = True

    def stat(self, kind: str, subject: str, call: int = 0, path: str = "") -> Stat | None:
        for s in self.stats:
            if s.kind == kind and s.subject == subject and s.call == call and s.path == path:
                return s
        return None
