"""The module data-flow diagram: one node per module call in call order, the tensors passed
between calls on the edges, functional ops between modules as small nodes.

It is derived from the recorded autograd graph, which is exactly the data flow of the step:
every autograd node belongs to a module call (see `scopes`); the calls of leaf modules (and of
any module `depth` levels down) become single nodes, enclosing calls become clusters, and
nodes outside any leaf call (`F.relu`, `view`, the `+` of a residual connection, a loss
computed by hand) stay as small function nodes. Shapes and dtypes on the edges come from the
recorded calls (what a module returned or was given) or from the tensors autograd saved.

The input is drawn as its own node feeding every node that takes nothing from another node,
and the loss as the last node. The folding rules of `view` apply: repeated calls, identical
siblings, repeated op chains.
"""

from __future__ import annotations

import re
from collections import defaultdict

from ..data import GraphData
from .scopes import call_paths, up
from .view import (Node, View, _add_edges, _display, _fmt, _fold_siblings, _Grouper, _keys_at_depth,
                   _members, _output_shape, before, call_title)

#: Without `depth`, the deepest expansion with at most this many nodes is drawn.
MAX_NODES = 150


def _tensor_text(desc: dict) -> str:
    """"[1, 6, 30, 30]", with the dtype when it is not float32."""
    dtype = desc.get("dtype")
    return _fmt(desc["shape"]) + ("" if dtype in (None, "float32") else f" {dtype}")


def _tensors(descs: list[dict]) -> list[dict]:
    return [d for d in descs if "shape" in d]


def _single(descs: list[dict]) -> str | None:
    """The text of the one tensor among `descs`; None when there are none or several."""
    tensors = _tensors(descs)
    return _tensor_text(tensors[0]) if len(tensors) == 1 else None


def _op_name(op: str) -> str:
    return re.sub(r"Backward\d*$", "", op) or op


class _Keys:
    def __init__(self, grouper: _Grouper, containers: set[str]):
        self.grouper = grouper
        self.containers = containers

    def key(self, info: dict, depth: int | None) -> tuple:
        for level, (module, call) in enumerate(self.grouper.paths[info["id"]]):
            if module in self.grouper.folded:
                return ("fold", module)
            if module not in self.containers or (depth is not None and level >= depth):
                return ("module", module, call)
        return ("node", info["id"])


def flow_view(data: GraphData, *, module_types: dict[str, str], roots: set[str],
              calls: list[dict] | None = None, param_counts: dict[str, int] | None = None,
              depth: int | None = None, fold_calls: int = 4, max_nodes: int = MAX_NODES,
              title: str = "data flow") -> View:
    """The data-flow view of a step's autograd graph. `calls` are the step's recorded module
    calls (for shapes on edges), `param_counts` the number of parameter elements per module."""
    types = module_types
    counts = param_counts or {}
    modules = set(types) | {info.get("scope") for info in data.nodes if info.get("call") is not None}
    paths = call_paths(data, roots, modules)
    grouper = _Grouper(data, paths, fold_calls)
    containers = {parent for m in types if (parent := up(m, roots)) is not None}
    keyer = _Keys(grouper, containers)
    keys = _keys_at_depth(data, keyer.key, depth, max_nodes, fold_calls, range(8, 0, -1))
    recorded = {(c["module"], c["call"]): c for c in calls or []}

    def same(module: str, call: int):
        """Siblings fold only when they also hold as many parameters and pass the same shapes."""
        c = recorded.get((module, call), {})
        return (counts.get(module), str(c.get("inputs")), str(c.get("outputs")))

    keys = _fold_siblings(data, keys, types, paths, same)

    view = View(title, module_types=types, calls=grouper.calls)
    members, ids = _members(data, keys, "f")
    for key, infos in members.items():
        nid = ids[key]
        view.nodes[nid] = _flow_node(nid, key, infos, grouper, types, counts, containers)

    by_id = {info["id"]: info for info in data.nodes}
    inputs: dict[str, int] = defaultdict(int)
    for src, _, _, _ in data.edges:
        inputs[src] += 1

    def passed(producer: str, consumer: str) -> str | None:
        """The tensor `producer` handed to `consumer`, as text, when the record tells."""
        made, taken = keys[producer], keys[consumer]
        if made[0] == "module" and (call := recorded.get(made[1:])) and (text := _single(call["outputs"])):
            return text
        if taken[0] == "module" and (call := recorded.get(taken[1:])) and (text := _single(call["inputs"])):
            return text
        info = by_id[producer]
        if info.get("kind") in ("param", "leaf"):
            return _tensor_text(info)
        result = info.get("saved", {}).get("result")
        if isinstance(result, dict) and "shape" in result:
            return _tensor_text(result)
        if inputs.get(consumer) == 1:  # an op of one tensor input saved that input (or its size)
            saved = by_id[consumer].get("saved", {})
            if isinstance(saved.get("self"), dict) and "shape" in saved["self"]:
                return _tensor_text(saved["self"])
            if isinstance(saved.get("self_sym_sizes"), list):
                return _fmt(saved["self_sym_sizes"])
        return None

    _add_edges(view, data, keys, ids, passed)
    fed = {consumer for producer, consumer in view.edges if view.nodes[producer].kind not in ("param", "input")}
    _add_input(view, ids, recorded, fed)
    if data.nodes:
        root = data.nodes[0]
        last = ids[keys[root["id"]]]
        view.nodes["loss"] = Node("loss", "loss", "loss")
        made, text = keys[root["id"]], None
        if made[0] == "module" and (call := recorded.get(made[1:])):
            text = _single(call["outputs"])
        if text is None and _output_shape(root) is not None:
            text = _fmt(_output_shape(root))
        view.edges[(last, "loss")] = {"count": 1, "shapes": {text} if text else set()}
    return view


def _add_input(view: View, ids: dict, recorded: dict, fed: set) -> None:
    """An input node feeding every node that takes nothing from another node (only
    parameters, or tensors autograd does not track: the batch)."""
    sources = [nid for nid, node in view.nodes.items()
               if nid not in fed and node.kind not in ("param", "input")]
    if not sources:
        return
    view.nodes["input"] = Node("input", "input", "input")
    key_of = {v: k for k, v in ids.items()}
    for nid in sources:
        key = key_of[nid]
        shapes = set()
        if key[0] == "module" and (call := recorded.get(key[1:])):
            ins = _tensors(call["inputs"])
            if ins:
                shapes.add(", ".join(_tensor_text(d) for d in ins))
        view.edges[("input", nid)] = {"count": 1, "shapes": shapes}


def _flow_node(nid: str, key: tuple, infos: list[dict], grouper: _Grouper, types: dict,
               counts: dict, containers: set) -> Node:
    path = grouper.paths[infos[0]["id"]]
    params = sorted(i["param"] for i in infos if i.get("param"))
    if key[0] == "module":
        _, module, call = key
        lines = []
        if counts.get(module):
            lines.append(f"{counts[module]:,} params")
        if module in containers:
            lines.append("collapsed")
        node = Node(nid, "module", call_title(module, call, types, grouper.calls), lines,
                    cluster=before(path, module))
        node.subjects |= {module, *params}
        return node
    if key[0] != "node":
        node = _display(nid, key, infos, grouper, types)
        if key[0] == "ops":
            node.title = re.sub(r"Backward\d*(?= x\d+$)", "", node.title)
        return node
    info = infos[0]
    if info["kind"] in ("param", "leaf"):
        node = Node(nid, "param" if info["kind"] == "param" else "input",
                    info.get("param") or "tensor", [_tensor_text(info)], cluster=path)
        node.subjects.add(info.get("param") or info["op"])
        return node
    if info["kind"] == "custom":
        name = info.get("function", "").rpartition(".")[2]
        node = Node(nid, "custom", name or info["op"], cluster=path)
        node.subjects.add(name)
        return node
    node = Node(nid, "fn", _op_name(info["op"]), cluster=path)
    node.subjects.add(info["op"])
    return node
