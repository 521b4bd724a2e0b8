"""Graphviz syntax for a `View`: HTML labels (every user-supplied text escaped), nested clusters
(one per module call), colours for findings by severity, a legend of the kinds present; and
rendering through the `graphviz` package.

Labels are Graphviz HTML-like labels built from `html.escape`d text, and node and cluster
identifiers are generated ("g12", "cluster_3"), so no module name — quotes, angle brackets,
braces, pipes, newlines — can break the DOT syntax.

Data flows top to bottom: parameters and input at the top, the loss at the bottom. The legend
sits under the title and lists only the kinds of node the diagram has, a few per row, so it
never makes a diagram wider than a handful of nodes.
"""

from __future__ import annotations

import html
import math

import graphviz

from ..errors import GradscopeError
from ..findings import severity_rank
from .view import View, call_title

STYLE = {
    "input": {"fillcolor": "#e4e4e4", "shape": "box"},
    "op": {"fillcolor": "#eef2f7"},
    "fn": {"fillcolor": "#eef2f7", "shape": "ellipse", "fontsize": "10", "margin": "0.05,0.02",
           "height": "0.3"},
    "custom": {"fillcolor": "#e8dcf5"},
    "param": {"fillcolor": "#fff4c2"},
    "leaf": {"fillcolor": "#f3f3f3"},
    "module": {"fillcolor": "#dcefdc"},
    "fold": {"fillcolor": "#cfe6f7"},
    "loss": {"fillcolor": "#f7e1cf", "shape": "box"},
}
KIND_NAMES = {"input": "input", "op": "autograd op", "fn": "function", "custom": "custom Function",
              "param": "parameter", "leaf": "tensor", "module": "module call",
              "fold": "folded repeats", "loss": "loss"}
#: Border and fill of a node with findings, by the worst severity among them.
FINDING_COLOURS = {"error": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
FINDING_FILL = {"error": "#f9c4c4", "warning": "#ffe2c4", "info": "#d8e9ff"}
FORMATS = ("dot", "svg", "png", "pdf")
_LEGEND_ROW = 4


def _text(value) -> str:
    return html.escape(str(value), quote=True).replace("\n", "<br/>")


def _label(title: str, lines: list[str], notes: list[str]) -> str:
    rows = [f"<b>{_text(title)}</b>"] + [f'<font point-size="10">{_text(l)}</font>' for l in lines if l]
    rows += [f'<font point-size="10" color="#b00000">{_text(n)}</font>' for n in notes if n]
    return "<" + "<br/>".join(rows) + ">"


def _title(title: str, kinds: list[str], severities: list[str]) -> str:
    """The diagram's title with the legend under it: swatches for the kinds present."""
    items = [(STYLE[k]["fillcolor"], "#555555", "1", KIND_NAMES[k]) for k in kinds]
    items += [(FINDING_FILL[s], FINDING_COLOURS[s], "2", f"{s} finding") for s in severities]
    rows, widths = [], []
    for start in range(0, len(items), _LEGEND_ROW):
        chunk = items[start:start + _LEGEND_ROW]
        cells = "".join(
            f'<td bgcolor="{fill}" color="{edge}" border="{width}" width="14" height="10" fixedsize="true"></td>'
            f'<td align="left"><font point-size="10">{_text(text)}</font></td>'
            for fill, edge, width, text in chunk)
        rows.append(f"<tr>{cells}</tr>")
        widths.append(sum(30 + 6.5 * len(text) for *_, text in chunk))
    # A table of fixed size: Graphviz would otherwise stretch its columns to the title's width.
    legend = (f'<tr><td><table border="0" cellspacing="3" fixedsize="true" width="{max(widths):.0f}" '
              f'height="{20 * len(rows) + 4}">{"".join(rows)}</table></td></tr>') if rows else ""
    return f'<<table border="0" cellborder="0"><tr><td><b>{_text(title)}</b></td></tr>{legend}</table>>'


def to_digraph(view: View, *, grads: dict[str, float] | None = None,
               findings: list[dict] | None = None) -> graphviz.Digraph:
    """A `graphviz.Digraph` of `view`. `grads` maps parameter names to gradient norms, shown
    on their node (combined, for collapsed modules); `findings` colour the nodes they name."""
    grads = grads or {}
    by_subject: dict[str, list[dict]] = {}
    for f in findings or []:
        by_subject.setdefault(f["subject"], []).append(f)
    big = len(view.nodes) > 400
    clusters: dict[tuple, list[str]] = {}
    attrs_of: dict[str, dict] = {}
    kinds: set[str] = set()
    severities: set[str] = set()
    for node in view.nodes.values():
        notes, attrs = [], dict(STYLE.get(node.kind, {}))
        kinds.add(node.kind)
        hits = [f for s in sorted(node.subjects) for f in by_subject.get(s, [])]
        norms = [grads[s] for s in node.subjects if s in grads]
        if norms:
            total = math.sqrt(sum(n * n for n in norms))
            notes.append(f"grad norm {total:.3g}" if len(norms) == 1 else f"param grad norm {total:.3g}")
        if hits:
            worst = min((f["severity"] for f in hits), key=severity_rank)
            severities.add(worst)
            attrs.update(color=FINDING_COLOURS.get(worst, "#000000"), penwidth="2.5",
                         fillcolor=FINDING_FILL.get(worst, "#ffffff"))
            notes += sorted({f"{f['severity']}: {f['check']}" for f in hits})
        attrs_of[node.id] = dict(attrs, label=_label(node.title, node.lines, notes))
        clusters.setdefault(node.cluster, []).append(node.id)
    dot = graphviz.Digraph("gradscope", graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "labelloc": "t", "newrank": "true",
        "label": _title(view.title, [k for k in KIND_NAMES if k in kinds],
                        sorted(severities, key=severity_rank)),
        **({"splines": "line", "nslimit": "2", "mclimit": "0.5"} if big else {}),
    }, node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#555555"})
    _add_clusters(dot, view, clusters, attrs_of)
    for (a, b), edge in view.edges.items():
        attrs = {}
        if len(edge["shapes"]) == 1:
            attrs["label"] = _text(next(iter(edge["shapes"])))
        if edge["count"] > 1:
            attrs["penwidth"] = str(min(1 + edge["count"] / 4, 4))
        dot.edge(a, b, **attrs)
    return dot


def _add_clusters(dot: graphviz.Digraph, view: View, clusters: dict, attrs_of: dict) -> None:
    """Nested subgraph clusters, one per module call that holds nodes."""
    tree: dict[tuple, list[tuple]] = {}
    every = {path[:i] for path in clusters for i in range(1, len(path) + 1)}
    for path in sorted(every, key=lambda p: (len(p), [(m, c) for m, c in p])):
        tree.setdefault(path[:-1], []).append(path)
    counter = iter(range(1_000_000))

    def fill(graph, path):
        for nid in clusters.get(path, []):
            graph.node(nid, **attrs_of[nid])
        for child in tree.get(path, []):
            with graph.subgraph(name=f"cluster_{next(counter)}") as sub:
                module, call = child[-1]
                sub.attr(label=_label(call_title(module, call, view.module_types, view.calls), [], []),
                         style="rounded,dashed", color="#999999", fontname="Helvetica")
                fill(sub, child)

    fill(dot, ())


def render(dot: graphviz.Digraph, fmt: str) -> bytes:
    """DOT source (no Graphviz needed) or a rendered svg/png/pdf (needs Graphviz's `dot`)."""
    if fmt not in FORMATS:
        raise GradscopeError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "dot":
        return dot.source.encode("utf-8")
    return pipe(dot, fmt, missing=f"rendering {fmt} needs Graphviz's dot, which is not installed: apt-get install "
                "graphviz (brew install graphviz, conda install graphviz), or export --format dot",
                failed="Graphviz's dot failed")


def pipe(graph: graphviz.Graph | graphviz.Digraph, fmt: str, *, missing: str, failed: str, **options) -> bytes:
    """`graph` rendered to `fmt` by Graphviz (`options`: more arguments of its ``pipe``). Raises
    GradscopeError: `missing` when Graphviz is not installed, `failed` and Graphviz's last word
    when it fails."""
    try:
        return graph.pipe(format=fmt, quiet=True, **options)
    except graphviz.ExecutableNotFound:
        raise GradscopeError(missing) from None
    except graphviz.CalledProcessError as exc:
        lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise GradscopeError(f"{failed}: {lines[-1] if lines else exc}") from None
