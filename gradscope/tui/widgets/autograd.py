"""Left panel, second tab: the autograd graph from the loss, expanded lazily.

Children are added only when a node is expanded, so a 100k-node graph costs what is open.
A node reached a second time is shown as "shared" and not expanded again.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree

from ...trace.autograd import GraphData
from ..messages import SubjectSelected


def _label(info: dict, shared: bool = False) -> Text:
    parts = [(info["op"], "bold")]
    if info.get("param"):
        parts.append((f"  {info['param']} {list(info.get('shape', []))}", "yellow"))
    elif info.get("kind") == "leaf":
        parts.append((f"  tensor {list(info.get('shape', []))}", "dim"))
    elif info.get("scope"):
        parts.append((f"  in {info['scope']}", "dim"))
    if shared:
        parts.append(("  (shared, shown above)", "italic magenta"))
    return Text.assemble(*parts)


class AutogradTree(Tree):
    """grad_fn and its next_functions, one level at a time."""

    def __init__(self, **kwargs):
        super().__init__("autograd", **kwargs)
        self._graph: GraphData | None = None
        self._graph_step: int | None = -1  # nothing shown yet
        self._inputs_of: dict[str, list[str]] = {}
        self._node_info: dict[str, dict] = {}
        self._seen: set[str] = set()
        self._filter = ""

    def show(self, graph: GraphData | None, graph_step: int | None, query: str) -> None:
        """Rebuild only for another recorded graph or another filter (what is open stays open)."""
        if (graph_step, query) == (self._graph_step, self._filter) and (graph is None) == (self._graph is None):
            return
        self._graph, self._graph_step, self._filter = graph, graph_step, query
        self.clear()
        self._seen = set()
        if graph is None or not graph.nodes:
            self.root.set_label("no autograd graph recorded yet")
            return
        self._node_info = {n["id"]: n for n in graph.nodes}
        self._inputs_of = {}
        for src, dst, index, _ in sorted(graph.edges, key=lambda e: e[2]):
            self._inputs_of.setdefault(src, []).append(dst)
        if query:
            self.root.set_label(f"nodes matching {query!r}")
            q = query.lower()
            for info in graph.nodes:
                text = f"{info['op']} {info.get('param') or ''} {info.get('scope') or ''}".lower()
                if q in text:
                    self.root.add(_label(info), data=info["id"], allow_expand=bool(self._inputs_of.get(info["id"])))
            self.root.expand()
            return
        self.root.set_label("loss")
        root = graph.nodes[0]["id"]
        self._seen.add(root)
        self.root.add(_label(self._node_info[root]), data=root, allow_expand=bool(self._inputs_of.get(root)))
        self.root.expand()

    def on_tree_node_expanded(self, event: Tree.NodeExpanded) -> None:
        node = event.node
        if node.data is None or node.children:
            return
        for child in self._inputs_of.get(node.data, []):
            shared = child in self._seen
            self._seen.add(child)
            node.add(_label(self._node_info[child], shared), data=child,
                     allow_expand=not shared and bool(self._inputs_of.get(child)))

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        info = self._node_info.get(event.node.data) if event.node.data else None
        if info is None:
            return
        if info.get("param"):
            self.post_message(SubjectSelected("param", info["param"]))
        elif info.get("scope") is not None:
            self.post_message(SubjectSelected("module", info["scope"]))
