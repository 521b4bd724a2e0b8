"""Left panel, first view: the module tree with input/output shapes.

A deep model opens with its first two levels expanded (a 30-block model is ~35 rows, not
~190); modules a finding names carry its severity colour.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree

from ..messages import SubjectSelected
from ..state import ViewState
from ..text import literal
from .findings import COLOURS

OPEN_LEVELS = 2


def _shapes(call: dict | None) -> str:
    if not call:
        return ""
    fmt = lambda xs: ", ".join("x".join(map(str, x["shape"])) or "scalar" for x in xs if "shape" in x)
    return f"{fmt(call['inputs']) or '-'} -> {fmt(call['outputs']) or '-'}"


def worst_severity(findings: list[dict]) -> dict[str, str]:
    """subject -> the most severe finding's severity."""
    worst: dict[str, str] = {}
    for f in findings:
        if f["subject"] not in worst or list(COLOURS).index(f["severity"]) < list(COLOURS).index(worst[f["subject"]]):
            worst[f["subject"]] = f["severity"]
    return worst


class ModuleTree(Tree):
    """Modules nested as in the model; each shows its type and latest shapes."""

    def __init__(self, **kwargs):
        super().__init__("modules", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self._signature = None
        self._module_nodes: dict[str, object] = {}

    def show(self, state: ViewState, query: str) -> None:
        """Rebuild when the modules or the filter change; otherwise relabel in place, so the
        cursor and what the user expanded survive a live run's updates."""
        calls = {}
        for call in state.data.calls if state.data else []:
            calls.setdefault(call["module"], call)
        severity = worst_severity(state.findings)
        signature = (tuple(m["name"] for m in state.modules), query)
        if signature == self._signature:
            for m in state.modules:
                node = self._module_nodes.get(m["name"])
                if node is not None:
                    node.set_label(self._label(m, calls, severity))
            return
        self._signature = signature
        keep = {m["name"] for m in state.modules if query.lower() in m["name"].lower()} if query else None
        if keep is not None:  # keep the ancestors of every match
            for name in list(keep):
                while name:
                    name = name.rpartition(".")[0]
                    keep.add(name)
        self.clear()
        self._module_nodes = {}
        roots = {m["root"] for m in state.modules}
        depth: dict[str | None, int] = {None: -1}
        for m in state.modules:
            name = m["name"]
            if keep is not None and name not in keep:
                continue
            parent_name = None if name in roots else (name.rpartition(".")[0] if "." in name else "")
            parent = self._module_nodes.get(parent_name, self.root)
            depth[name] = depth.get(parent_name if parent_name in self._module_nodes else None, -1) + 1
            self._module_nodes[name] = parent.add(self._label(m, calls, severity), data=name,
                                                  expand=keep is not None or depth[name] < OPEN_LEVELS)
        self.root.expand()

    @staticmethod
    def _label(m: dict, calls: dict, severity: dict) -> Text:
        name = m["name"]
        style = COLOURS.get(severity.get(name), "bold")
        label = literal(name.rpartition(".")[2] or m["type"], style)
        label.append(f"  {m['type']}  ".replace("\n", " "))
        label.append_text(literal(_shapes(calls.get(name)), "dim"))
        return label

    def select_name(self, name: str) -> bool:
        node = self._module_nodes.get(name)
        if node is None:
            return False
        parent = node.parent
        while parent is not None:
            parent.expand()
            parent = parent.parent
        self.call_after_refresh(self.move_cursor, node)  # once the opened lines are laid out
        return True

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        if event.node.data is not None:
            self.post_message(SubjectSelected("module", event.node.data, self, event.time))
