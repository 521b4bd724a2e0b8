"""Left panel, first tab: the module tree with input/output shapes."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree

from ..messages import SubjectSelected
from ..state import ViewState


def _shapes(call: dict | None) -> str:
    if not call:
        return ""
    fmt = lambda xs: ", ".join("x".join(map(str, x["shape"])) or "scalar" for x in xs if "shape" in x)
    return f"{fmt(call['inputs']) or '-'} -> {fmt(call['outputs']) or '-'}"


class ModuleTree(Tree):
    """Modules nested as in the model; each shows its type and latest shapes."""

    def __init__(self, **kwargs):
        super().__init__("modules", **kwargs)
        self.show_root = False
        self._signature = None
        self._module_nodes: dict[str, object] = {}

    def show(self, state: ViewState, query: str) -> None:
        """Rebuild when the modules or the filter change; otherwise relabel in place, so the
        cursor and what the user expanded survive a live run's updates."""
        calls = {}
        for call in state.data.calls if state.data else []:
            calls.setdefault(call["module"], call)
        signature = (tuple(m["name"] for m in state.modules), query)
        if signature == self._signature:
            for m in state.modules:
                node = self._module_nodes.get(m["name"])
                if node is not None:
                    node.set_label(self._label(m, calls))
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
        for m in state.modules:
            name = m["name"]
            if keep is not None and name not in keep:
                continue
            parent_name = None if name in roots else (name.rpartition(".")[0] if "." in name else "")
            parent = self._module_nodes.get(parent_name, self.root)
            self._module_nodes[name] = parent.add(self._label(m, calls), data=name, expand=True)
        self.root.expand()

    @staticmethod
    def _label(m: dict, calls: dict) -> Text:
        name = m["name"]
        return Text.assemble((name.rpartition(".")[2] or m["type"], "bold"), f"  {m['type']}  ",
                             (_shapes(calls.get(name)), "dim"))

    def select_name(self, name: str) -> bool:
        node = self._module_nodes.get(name)
        if node is None:
            return False
        self.select_node(node)
        self.scroll_to_node(node)
        return True

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        if event.node.data is not None:
            self.post_message(SubjectSelected("module", event.node.data))
