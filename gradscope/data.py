"""Host-side values of one step: what the recorder writes, plugins judge and readers return.

These are plain Python objects (no tensors), the same whether they come from a live run or are
read back from a record.
"""

from __future__ import annotations

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

    A named tuple, like `Update`: a step makes one per gradient, and a named tuple takes a fifth
    of the time a frozen dataclass took to make."""

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


@dataclass
class StepData:
    """Everything recorded for one step. `tails` maps (module, call, request name) to
    (elements outside the requested interval, elements counted), for plugins' `TailCount`s;
    `hists` maps a parameter to its gradient histogram (low, high, bin counts) on steps with
    full statistics. `described`: whether every watched module call of the step is in `calls`;
    False on a step without full statistics or graph walk, whose `calls` hold the root calls only
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
    stats: list[Stat] = field(default_factory=list)
    updates: dict[str, Update] = field(default_factory=dict)
    tails: dict[tuple[str, int, str], tuple[int, int]] = field(default_factory=dict)
    hists: dict[str, tuple[float, float, list[int]]] = field(default_factory=dict)
    graph: GraphData | None = None
    described: bool = True

    def stat(self, kind: str, subject: str, call: int = 0, path: str = "") -> Stat | None:
        for s in self.stats:
            if s.kind == kind and s.subject == subject and s.call == call and s.path == path:
                return s
        return None
