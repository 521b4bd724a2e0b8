"""Graphviz syntax for a `View`: HTML labels (every user-supplied text escaped), nested module
clusters, colours for findings, a legend; and rendering through Graphviz's `dot`.

Labels are Graphviz HTML-like labels built from `html.escape`d text, and node and cluster
identifiers are generated ("g12", "cluster_3"), so no module name — quotes, angle brackets,
braces, pipes, newlines — can break the DOT syntax.
"""

from __future__ import annotations

import html
import math
import shutil
import subprocess

import graphviz

from ..errors import GradscopeError
from ..findings import severity_rank
from .view import View

STYLE = {
    "op": {"fillcolor": "#eef2f7"},
    "custom": {"fillcolor": "#e8dcf5"},
    "param": {"fillcolor": "#fff4c2"},
    "leaf": {"fillcolor": "#f3f3f3"},
    "module": {"fillcolor": "#dcefdc"},
    "fold": {"fillcolor": "#cfe6f7"},
}
FINDING_COLOURS = {"error": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
CHECK_FILL = {"nonfinite": "#f9c4c4", "vanishing-grad": "#d8e9ff", "exploding-grad": "#ffd9b3",
              "dead-relu": "#d9d9d9", "saturation": "#e5d4b8"}
FORMATS = ("dot", "svg", "png", "pdf")


def _text(value) -> str:
    return html.escape(str(value), quote=True).replace("\n", "<br/>")


def _label(title: str, lines: list[str], notes: list[str]) -> str:
    rows = [f"<b>{_text(title)}</b>"] + [f'<font point-size="10">{_text(l)}</font>' for l in lines]
    rows += [f'<font point-size="10" color="#b00000">{_text(n)}</font>' for n in notes]
    return "<" + "<br/>".join(rows) + ">"


def to_digraph(view: View, *, grads: dict[str, float] | None = None,
               findings: list[dict] | None = None) -> graphviz.Digraph:
    """A `graphviz.Digraph` of `view`. `grads` maps parameter names to gradient norms, shown
    on their node (combined, for collapsed modules); `findings` colour the nodes they name."""
    grads = grads or {}
    by_subject: dict[str, list[dict]] = {}
    for f in findings or []:
        by_subject.setdefault(f["subject"], []).append(f)
    big = len(view.nodes) > 400
    dot = graphviz.Digraph("gradscope", graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "label": _label(view.title, [], []),
        "labelloc": "t", **({"splines": "line", "nslimit": "2", "mclimit": "0.5"} if big else {}),
    }, node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#555555"})
    clusters: dict[str | None, list[str]] = {}
    attrs_of: dict[str, dict] = {}
    for node in view.nodes.values():
        notes, attrs = [], dict(STYLE.get(node.kind, {}))
        hits = [f for s in sorted(node.subjects) for f in by_subject.get(s, [])]
        norms = [grads[s] for s in node.subjects if s in grads]
        if norms:
            total = math.sqrt(sum(n * n for n in norms))
            notes.append(f"grad norm {total:.3g}" if len(norms) == 1 else f"param grad norm {total:.3g}")
        if hits:
            worst = min(hits, key=lambda f: severity_rank(f["severity"]))
            attrs["color"] = FINDING_COLOURS[worst["severity"]]
            attrs["penwidth"] = "2.5"
            attrs["fillcolor"] = CHECK_FILL.get(worst["check"], attrs.get("fillcolor", "#ffffff"))
            notes += sorted({f"{f['severity']}: {f['check']}" for f in hits})
        attrs_of[node.id] = dict(attrs, label=_label(node.title, node.lines, notes))
        clusters.setdefault(node.cluster, []).append(node.id)
    _add_clusters(dot, view, clusters, attrs_of)
    for (a, b), edge in view.edges.items():
        attrs = {}
        if len(edge["shapes"]) == 1:
            attrs["label"] = _text(next(iter(edge["shapes"])))
        if edge["count"] > 1:
            attrs["penwidth"] = str(min(1 + edge["count"] / 4, 4))
        dot.edge(a, b, **attrs)
    _legend(dot)
    return dot


def _add_clusters(dot: graphviz.Digraph, view: View, clusters: dict, attrs_of: dict) -> None:
    """Nested subgraph clusters, one per module path that holds nodes."""
    types = view.module_types
    paths = {p for p in clusters if p is not None}
    tree: dict[str | None, list[str]] = {}
    for path in sorted(paths | {a for p in paths for a in _chain(p, view.roots)}, key=lambda p: (p.count("."), p)):
        tree.setdefault(_up(path, view.roots), []).append(path)
    counter = iter(range(1_000_000))

    def fill(graph, path):
        for nid in clusters.get(path, []):
            graph.node(nid, **attrs_of[nid])
        for child in tree.get(path, []):
            with graph.subgraph(name=f"cluster_{next(counter)}") as sub:
                kind = types.get(child, "")
                sub.attr(label=_label(child or kind or "model", [kind] if child else [], []),
                         style="rounded,dashed", color="#999999", fontname="Helvetica")
                fill(sub, child)

    fill(dot, None)


def _chain(path: str, roots: set[str]) -> list[str]:
    """`path` and its enclosing modules, up to its root."""
    chain = [path]
    while (up := _up(chain[-1], roots)) is not None:
        chain.append(up)
    return chain


def _up(path: str, roots: set[str]) -> str | None:
    if path in roots:
        return None
    return path.rpartition(".")[0] if "." in path else ""


def _legend(dot: graphviz.Digraph) -> None:
    with dot.subgraph(name="cluster_legend") as legend:
        legend.attr(label=_label("legend", [], []), style="rounded", color="#bbbbbb")
        samples = [("op", "op (autograd node)"), ("param", "parameter"), ("module", "collapsed module"),
                   ("fold", "folded repeats"), ("custom", "custom Function")]
        for kind, text in samples:
            legend.node(f"legend_{kind}", label=_label(text, [], []), **STYLE[kind])
        for severity, colour in FINDING_COLOURS.items():
            legend.node(f"legend_{severity}", label=_label(f"{severity} finding", [], []),
                        color=colour, penwidth="2.5", fillcolor="#ffffff")


def render(dot: graphviz.Digraph, fmt: str) -> bytes:
    """DOT source (no Graphviz needed) or a rendered svg/png/pdf (needs `dot`)."""
    if fmt not in FORMATS:
        raise GradscopeError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "dot":
        return dot.source.encode("utf-8")
    if shutil.which("dot") is None:
        raise GradscopeError(
            f"rendering {fmt} needs Graphviz's dot, which is not installed: apt-get install "
            "graphviz (brew install graphviz, conda install graphviz), or export --format dot"
        )
    proc = subprocess.run(["dot", f"-T{fmt}"], input=dot.source.encode("utf-8"), capture_output=True)
    if proc.returncode != 0:
        raise GradscopeError(f"dot failed: {proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    return proc.stdout
