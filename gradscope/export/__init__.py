"""Graphviz export of the autograd and module graphs (see `view` for what is shown, `render`
for the syntax). `export_record` is what ``gradscope export`` runs; `autograd_digraph` turns
any gradscope autograd graph into a `graphviz.Digraph`."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from ..errors import GradscopeError
from ..record.reader import Record
from ..trace.autograd import GraphData
from .render import FORMATS, render, to_digraph
from .view import autograd_view, module_view

__all__ = ["FORMATS", "autograd_digraph", "export_record"]


def _graph_data(graph) -> GraphData:
    if isinstance(graph, GraphData):
        return graph
    if isinstance(graph, nx.DiGraph):
        nodes = [{"id": n, **d} for n, d in graph.nodes(data=True)]
        edges = [(u, v, d.get("index", 0), d.get("output_nr", 0)) for u, v, d in graph.edges(data=True)]
        return GraphData(nodes, edges)
    raise TypeError(f"expected a networkx.DiGraph from gradscope.autograd_graph, got {type(graph).__name__}")


def autograd_digraph(graph, *, depth: int | None = None, fold_calls: int = 4,
                     max_nodes: int = 1500, module_types: dict[str, str] | None = None,
                     title: str = "autograd graph"):
    """A `graphviz.Digraph` of an autograd graph (`gradscope.autograd_graph`'s networkx graph
    or a record's), collapsed to `depth` and folded (see `gradscope.export.view`)."""
    view = autograd_view(_graph_data(graph), module_types=module_types, depth=depth,
                         fold_calls=fold_calls, max_nodes=max_nodes, title=title)
    return to_digraph(view)


def export_record(record: Record, out: str | Path, *, step: int | None = None,
                  graph: str = "autograd", depth: int | None = None, fmt: str | None = None) -> str:
    """Write a diagram of `record` to `out`; returns the format used (from `fmt` or the suffix)."""
    fmt = fmt or (Path(out).suffix.lstrip(".").lower() or "dot")
    if fmt == "gv":
        fmt = "dot"
    if fmt not in FORMATS:
        raise GradscopeError(f"cannot tell the format from {out}: use --format {'|'.join(FORMATS)}")
    steps = record.step_numbers()
    if not steps:
        raise GradscopeError(f"{record.path}: no steps recorded, nothing to draw")
    if step is not None and step not in steps:
        raise GradscopeError(f"{record.path}: no step {step} (steps {steps[0]}..{steps[-1]})")
    at = steps[-1] if step is None else step
    types = {m["name"]: m["type"] for m in record.modules()}
    findings = record.findings()
    name = record.run().get("target", record.path.name)
    if graph == "autograd":
        data = record.graph(at)
        if data is None:
            raise GradscopeError(f"{record.path}: no autograd graph recorded up to step {at} (was --graph-every 0?)")
        roots = {m["name"] for m in record.modules() if m["name"] == m["root"]}
        view = autograd_view(data, module_types=types, roots=roots, depth=depth,
                             title=f"{name}: autograd graph, step {at}")
        grads = {s.subject: s.norm for s in record.stats(step=at, kind="grad")}
    elif graph == "modules":
        calls: dict[str, list[dict]] = {}
        for c in record.calls(step=at):
            calls.setdefault(c["module"], []).append(c)
        view = module_view(record.modules(), calls, depth=depth, title=f"{name}: modules, step {at}")
        grads = {}
    else:
        raise GradscopeError(f"unknown graph {graph!r}: choose autograd or modules")
    data = render(to_digraph(view, grads=grads, findings=findings), fmt)
    Path(out).write_bytes(data)
    return fmt
