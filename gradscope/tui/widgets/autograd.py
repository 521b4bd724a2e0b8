"""Left panel, second view: the autograd graph from the loss, expanded lazily.

Children are added only when a node is expanded, so a 100k-node graph costs what is open.
A node reached a second time is shown as "shared" and not expanded again. Each level indents
two columns, so a depth-12 chain stays readable; nodes a finding names carry its colour.
A chain that repeats (a stack of identical blocks, an unrolled RNN: the same ops in scopes
that differ only by their numbers, at least `MIN_REPEATS` times) is folded into one node
that says how many repeats it skips and opens at the last one.
"""

from __future__ import annotations

import re
from collections import deque

from rich.text import Text
from textual.widgets import Tree

from ...data import GraphData
from ..messages import SubjectSelected
from ..text import literal
from .findings import COLOURS


MIN_REPEATS = 3
MAX_PERIOD = 24  # ops in one repeated unit
_DIGITS = re.compile(r"\d+")


def _label(info: dict, shared: bool = False, severity: str | None = None) -> Text:
    label = literal(info["op"], COLOURS.get(severity, "bold"))
    if info.get("param"):
        label.append_text(literal(f"  {info['param']} {list(info.get('shape', []))}", "yellow"))
    elif info.get("kind") == "leaf":
        label.append_text(literal(f"  tensor {list(info.get('shape', []))}", "dim"))
    elif info.get("scope"):
        label.append_text(literal(f"  in {info['scope']}", "dim"))
    if shared:
        label.append("  (shared, shown above)", "italic magenta")
    return label


def node_subject(info: dict) -> str:
    """How findings name this node: its parameter, or ``op in scope``."""
    if info.get("param"):
        return info["param"]
    return f"{info['op']} in {info['scope']}" if info.get("scope") else info["op"]


class AutogradTree(Tree):
    """grad_fn and its next_functions, one level at a time."""

    def __init__(self, **kwargs):
        super().__init__("autograd", **kwargs)
        self.guide_depth = 2
        self._graph: GraphData | None = None
        self._graph_step: int | None = -1  # nothing shown yet
        self._inputs_of: dict[str, list[str]] = {}
        self._node_info: dict[str, dict] = {}
        self._seen: set[str] = set()
        self._filter = ""
        self._severity: dict[str, str] = {}

    def show(self, graph: GraphData | None, graph_step: int | None, query: str,
             severity: dict[str, str] | None = None) -> None:
        """Rebuild only for another recorded graph or another filter (what is open stays open)."""
        self._severity = severity or {}
        if (graph_step, query) == (self._graph_step, self._filter) and (graph is None) == (self._graph is None):
            return
        self._graph, self._graph_step, self._filter = graph, graph_step, query
        self.clear()
        self._seen = set()
        if graph is None or not graph.nodes:
            self.root.set_label(Text("no autograd graph recorded yet"))
            return
        self._node_info = {n["id"]: n for n in graph.nodes}
        self._inputs_of = {}
        for src, dst, index, _ in sorted(graph.edges, key=lambda e: e[2]):
            self._inputs_of.setdefault(src, []).append(dst)
        if query:
            self.root.set_label(literal(f"nodes matching {query!r}"))
            q = query.lower()
            for info in graph.nodes:
                text = f"{info['op']} {info.get('param') or ''} {info.get('scope') or ''}".lower()
                if q in text:
                    self.root.add(self._label(info), data=info["id"], allow_expand=bool(self._inputs_of.get(info["id"])))
            self.root.expand()
            return
        self.root.set_label(Text(f"loss (graph of step {graph_step})"))
        root = graph.nodes[0]["id"]
        self._seen.add(root)
        self.root.add(self._label(self._node_info[root]), data=root, allow_expand=bool(self._inputs_of.get(root)))
        self.root.expand()

    def _label(self, info: dict, shared: bool = False) -> Text:
        return _label(info, shared, self._severity.get(node_subject(info)))

    def _open(self, node) -> None:
        if node.data is None or node.children:
            return
        folded = node.data.startswith("fold:")
        children = [node.data[5:]] if folded else self._inputs_of.get(node.data, [])
        for child in children:
            shared = child in self._seen
            repeats = None if shared or folded else self._repeats(child)
            if repeats is not None:
                count, period, resume = repeats
                unit = [self._node_info[n] for n in self._chain(child, period)]
                scope = _DIGITS.sub("#", unit[0].get("scope") or "")
                text = f"⋯ {count} repeats of {period} op{'s' if period > 1 else ''} ({', '.join(i['op'] for i in unit[:3])}"
                text += ", …)" if period > 3 else ")"
                node.add(literal(text + (f" in {scope}" if scope else ""), "italic cyan"), data=f"fold:{resume}",
                         allow_expand=True)
                continue
            self._seen.add(child)
            node.add(self._label(self._node_info[child], shared), data=child,
                     allow_expand=not shared and bool(self._inputs_of.get(child)))

    def _chain(self, start: str, length: int) -> list[str]:
        """`start` and the nodes behind its first input, `length` in all (fewer at a leaf)."""
        chain = [start]
        while len(chain) < length and self._inputs_of.get(chain[-1]):
            chain.append(self._inputs_of[chain[-1]][0])
        return chain

    def _repeats(self, start: str) -> tuple[int, int, str] | None:
        """(repeats, ops per repeat, the node after the skipped repeats) when the chain from
        `start` repeats the same ops in same-shaped scopes; None otherwise."""
        chain = self._chain(start, MAX_PERIOD * (MIN_REPEATS + 1) * 4)
        shape = lambda n: (self._node_info[n]["op"], _DIGITS.sub("#", self._node_info[n].get("scope") or ""))
        sig = [(shape(n), tuple(shape(i) for i in self._inputs_of.get(n, []))) for n in chain]
        for period in range(1, MAX_PERIOD + 1):
            count = 1
            while (count + 1) * period <= len(sig) and sig[count * period:(count + 1) * period] == sig[:period]:
                count += 1
            if count >= MIN_REPEATS and count * period >= 2 * MIN_REPEATS:
                skipped = (count - 1) * period
                return count - 1, period, chain[skipped]
        return None

    def on_tree_node_expanded(self, event: Tree.NodeExpanded) -> None:
        self._open(event.node)

    def select_subject(self, subject: str) -> bool:
        """Open the path from the loss to the node a finding names and put the cursor on it
        (the loss itself for ``loss``)."""
        if self._graph is None or not self._graph.nodes or self._filter:
            return False
        root_id = self._graph.nodes[0]["id"]
        if subject == "loss":
            target = root_id
        else:
            target = next((n["id"] for n in self._graph.nodes if node_subject(n) == subject), None)
            if target is None:
                return False
        parent_of, queue = {root_id: None}, deque([root_id])  # shortest path from the loss
        while queue and target not in parent_of:
            current = queue.popleft()
            for child in self._inputs_of.get(current, []):
                if child not in parent_of:
                    parent_of[child] = current
                    queue.append(child)
        path, at = [], target
        while at is not None:
            path.append(at)
            at = parent_of.get(at)
        node = self.root.children[0]
        for wanted in reversed(path[:-1]):
            self._open(node)
            node.expand()
            node = next((c for c in node.children if c.data == wanted), None)
            if node is None:
                return False
        self.call_after_refresh(self.move_cursor, node)  # once the opened lines are laid out
        return True

    def subject_of(self, subject: str) -> tuple[str, str] | None:
        """What the details pane shows for the node a finding names."""
        if subject == "loss" and self._graph is not None and self._graph.nodes:
            found = self._graph.nodes[0]
        else:
            found = next((n for n in self._node_info.values() if node_subject(n) == subject), None)
        return None if found is None else self._details_subject(found)

    def _details_subject(self, info: dict | None) -> tuple[str, str] | None:
        """What the details pane shows for a node: its parameter, else its module."""
        if info is None:
            return None
        if info.get("param"):
            return "param", info["param"]
        if info.get("scope") is not None:
            return "module", info["scope"]
        return "loss", "loss"  # ops outside every module compute the loss

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        subject = self._details_subject(self._node_info.get(event.node.data) if event.node.data else None)
        if subject is not None:
            self.post_message(SubjectSelected(*subject, self, event.time))
