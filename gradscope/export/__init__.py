"""Diagrams of a record: the autograd graph and the module tree (`view`), the module data flow
(`flow`), drawn with Graphviz (`render`); charts of gradient flow and loss (`charts`). `export_record` is what ``gradscope export`` runs;
`autograd_digraph` turns any gradscope autograd graph into a `graphviz.Digraph`."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from ..errors import GradscopeError
from ..record.reader import Record
from ..data import GraphData
from .render import FORMATS, render, to_digraph
from .scopes import up
from .charts import CHARTS, grad_flow, loss_chart, render_chart
from .flow import flow_view
from .view import autograd_view, module_view

__all__ = ["CHARTS", "FORMATS", "GRAPHS", "autograd_digraph", "export_record"]

#: What ``--graph`` accepts: "modules" is the data flow between module calls, "tree" what
#: contains what.
GRAPHS = ("autograd", "flow", "modules", "tree")


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
                  graph: str = "autograd", depth: int | None = None, fmt: str | None = None,
                  chart: str | None = None, steps: tuple[int, int] | None = None) -> str:
    """Write a diagram (`graph`) or a `chart` of `record` to `out`; returns the format used
    (from `fmt` or the suffix). `steps` (first, last) is the range a chart covers."""
    fmt = fmt or (Path(out).suffix.lstrip(".").lower() or "dot")
    if fmt == "gv":
        fmt = "dot"
    if fmt not in FORMATS:
        raise GradscopeError(f"cannot tell the format from {out}: use --format {'|'.join(FORMATS)}")
    if chart is not None:
        return _export_chart(record, out, chart, fmt, step, steps)
    numbers = record.step_numbers()
    if not numbers:
        raise GradscopeError(f"{record.path}: no steps recorded, nothing to draw")
    if step is not None and step not in numbers:
        raise GradscopeError(f"{record.path}: no step {step} (steps {numbers[0]}..{numbers[-1]})")
    at = numbers[-1] if step is None else step
    modules = record.modules()
    types = {m["name"]: m["type"] for m in modules}
    roots = {m["name"] for m in modules if m["name"] == m["root"]}
    findings = record.findings()
    name = record.run().get("target", record.path.name)
    grads = {}
    if graph in ("autograd", "flow", "modules"):
        data = record.graph(at)
        if data is None:
            raise GradscopeError(f"{record.path}: no autograd graph recorded up to step {at} (was --graph-every 0?)")
        drawn = record.graph_step(at)
    if graph == "autograd":
        view = autograd_view(data, module_types=types, roots=roots, depth=depth,
                             title=f"{name}: autograd graph, step {drawn}")
        grads = {s.subject: s.norm for s in record.stats(step=drawn, kind="grad")}
    elif graph in ("flow", "modules"):
        view = flow_view(data, module_types=types, roots=roots, calls=record.calls(step=drawn),
                         param_counts=_param_counts(record, roots), depth=depth,
                         title=f"{name}: data flow, step {drawn}")
    elif graph == "tree":
        calls: dict[str, list[dict]] = {}
        rows = record.calls_as_of(at)  # a light step recorded its root call only
        for c in rows:
            calls.setdefault(c["module"], []).append(c)
        described = rows[0]["step"] if rows else at
        of = f" (calls of step {described})" if described != at else ""
        view = module_view(modules, calls, depth=depth, title=f"{name}: modules, step {at}{of}")
    else:
        raise GradscopeError(f"unknown graph {graph!r}: choose one of {', '.join(GRAPHS)}")
    data = render(to_digraph(view, grads=grads, findings=findings), fmt)
    Path(out).write_bytes(data)
    return fmt


def _export_chart(record: Record, out, chart: str, fmt: str, step, steps) -> str:
    title = f"{record.run().get('target', record.path.name)}: "
    if chart == "grad-flow":
        scene = grad_flow(record, step=step, steps=steps, title=title)
    elif chart == "loss":
        scene = loss_chart(record, steps=steps, title=title)
    else:
        raise GradscopeError(f"unknown chart {chart!r}: choose one of {', '.join(CHARTS)}")
    data = render_chart(scene, fmt)
    Path(out).write_bytes(data)
    return fmt


def _param_counts(record: Record, roots: set[str]) -> dict[str, int]:
    """module -> parameter elements in it and its submodules."""
    counts: dict[str, int] = {}
    for p in record.parameters():
        module = p.get("module")
        while module is not None:
            counts[module] = counts.get(module, 0) + p["numel"]
            module = up(module, roots)
    return counts
