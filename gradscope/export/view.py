"""What a diagram shows: the autograd or module graph, collapsed and folded to stay readable.

A `View` is the diagram's content before any Graphviz syntax: display nodes (single ops,
parameters, collapsed module calls, folded repeats), edges in the direction data flows
(producer to consumer, parameters and input towards the loss) with the tensor shape where it
is known, and the module call each node sits in (drawn as nested clusters, one per call).

Readability rules, applied in this order:
1. repeated calls: a module called more than `fold_calls` times (an RNN cell unrolled over
   time) becomes one node "name (Type) xN", with everything inside it;
2. depth: with `depth` K, module calls K levels down become single nodes;
3. repeated siblings: sibling module calls of one type with the same ops (48 identical
   transformer blocks) become one node "first ... last (Type) xN";
4. repeated ops: ops outside folded modules that repeat with the same structure (the same op
   in the same module, fed by the same kinds of nodes a few levels back) more than
   `fold_calls` times become one node "Op xN": a per-sample loss written as a Python loop, a
   functional recurrence;
5. size: without `depth`, the smallest depth that brings the diagram under `max_nodes` is used.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import takewhile

from ..data import GraphData
from .scopes import CallPath, call_counts, call_paths

#: Rounds of structural refinement when looking for repeated ops: chains whose last few links
#: agree are one pattern.
_ROUNDS = 3


@dataclass
class Node:
    id: str
    kind: str  # op, custom, param, leaf, module, fold, input, loss
    title: str
    lines: list[str] = field(default_factory=list)
    cluster: CallPath = ()  # the module calls the node is drawn inside, outermost first
    subjects: set[str] = field(default_factory=set)  # names findings may refer to


@dataclass
class View:
    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    #: (producer, consumer) -> {"count": tensors passed, "shapes": their shapes}
    edges: dict[tuple[str, str], dict] = field(default_factory=dict)
    module_types: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # calls per module, for cluster labels


def _depth(scope: str | None) -> int:
    return 0 if not scope else scope.count(".") + 1


def _prefix(scope: str, k: int) -> str:
    return ".".join(scope.split(".")[:k])


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _output_shape(info: dict):
    if info.get("kind") in ("param", "leaf"):
        return info.get("shape")
    result = info.get("saved", {}).get("result")
    return result.get("shape") if isinstance(result, dict) else None


def before(path: CallPath, module: str) -> CallPath:
    """The calls enclosing `module`'s call in `path`."""
    return tuple(takewhile(lambda p: p[0] != module, path))


def call_title(module: str, call: int, types: dict[str, str], calls: dict[str, int]) -> str:
    """"name (Type)", with the call number when the module was called more than once."""
    title = f"{module or types.get(module, 'model')} ({types.get(module, 'module')})"
    return title + (f" call {call + 1}" if calls.get(module, 1) > 1 else "")


def fold_repeated_ops(data: GraphData, keys: dict[str, tuple], fold_calls: int) -> dict[str, tuple]:
    """Rule 4: give ops (and leaf tensors) still shown one by one that repeat with the same
    structure more than `fold_calls` times one shared key ("ops", pattern)."""
    producers: dict[str, list[str]] = defaultdict(list)
    for src, dst, _, _ in data.edges:
        producers[src].append(dst)
    interned: dict = {}
    base: dict[str, int] = {}
    candidates = []
    for info in data.nodes:
        nid, key = info["id"], keys[info["id"]]
        if key[0] == "node" and info.get("kind") in ("op", "custom", "leaf"):
            shape = tuple(info.get("shape") or ()) if info.get("kind") == "leaf" else ()
            base[nid] = interned.setdefault((info["op"], info.get("function"), info.get("scope"), shape),
                                            len(interned))
            candidates.append(nid)
        else:
            base[nid] = interned.setdefault(("shown as", key), len(interned))
    pattern = dict(base)
    for _ in range(_ROUNDS):
        refined = dict(base)
        for nid in candidates:
            inputs = tuple(sorted(pattern[p] for p in producers[nid]))
            refined[nid] = interned.setdefault((base[nid], inputs), len(interned))
        pattern = refined
    groups: dict[int, list[str]] = defaultdict(list)
    for nid in candidates:
        groups[pattern[nid]].append(nid)
    out = dict(keys)
    for number, members in groups.items():
        if len(members) > fold_calls:
            for nid in members:
                out[nid] = ("ops", number)
    return out


def _keys_at_depth(data: GraphData, key, depth: int | None, max_nodes: int, fold_calls: int,
                   depths) -> dict[str, tuple]:
    """Each node's key at `depth`, or at the deepest of `depths` that brings the diagram under
    `max_nodes` (rule 5), with repeated ops folded (rule 4, found once at full depth)."""
    repeated = fold_repeated_ops(data, {i["id"]: key(i, None) for i in data.nodes}, fold_calls)

    def at(info, k):
        shown = key(info, k)
        return repeated[info["id"]] if shown[0] == "node" else shown

    chosen = depth
    if chosen is None:
        for k in [None, *depths]:
            chosen = k
            if len({at(i, k) for i in data.nodes}) <= max_nodes:
                break
    return {info["id"]: at(info, chosen) for info in data.nodes}


class _Grouper:
    def __init__(self, data: GraphData, paths: dict[str, CallPath], fold_calls: int):
        self.paths = paths
        self.calls = call_counts(data)
        self.folded = {s for s, n in self.calls.items() if n > fold_calls}

    def key(self, info: dict, depth: int | None) -> tuple:
        path = self.paths[info["id"]]
        for module, _ in path:
            if module in self.folded:
                return ("fold", module)
        if depth is not None and depth >= 1 and len(path) > depth:
            return ("module", *path[depth])
        return ("node", info["id"])


def autograd_view(data: GraphData, *, module_types: dict[str, str] | None = None,
                  roots: set[str] | None = None, depth: int | None = None, fold_calls: int = 4,
                  max_nodes: int = 1500, title: str = "autograd graph") -> View:
    """The display content of an autograd graph (see the module docstring for the rules)."""
    types = module_types or {}
    roots = roots or {""}
    modules = set(types) | {info.get("scope") for info in data.nodes if info.get("call") is not None}
    paths = call_paths(data, roots, modules)
    grouper = _Grouper(data, paths, fold_calls)
    keys = _keys_at_depth(data, grouper.key, depth, max_nodes, fold_calls, range(6, 0, -1))
    keys = _fold_siblings(data, keys, types, paths)
    view = View(title, module_types=types, calls=grouper.calls)
    members, ids = _members(data, keys, "g")
    for key, infos in members.items():
        view.nodes[ids[key]] = _display(ids[key], key, infos, grouper, types)
    by_id = {info["id"]: info for info in data.nodes}

    def passed(producer: str, consumer: str) -> str | None:
        shape = _output_shape(by_id[producer])
        return None if shape is None else _fmt(shape)

    _add_edges(view, data, keys, ids, passed)
    return view


def _members(data: GraphData, keys: dict[str, tuple], prefix: str) -> tuple[dict[tuple, list[dict]], dict[tuple, str]]:
    """The graph nodes shown as each display node (key -> their infos), and the display nodes'
    ids (key -> `prefix` and a number), in the graph's order."""
    members: dict[tuple, list[dict]] = defaultdict(list)
    for info in data.nodes:
        members[keys[info["id"]]].append(info)
    return members, {key: f"{prefix}{i}" for i, key in enumerate(members)}


def _add_edges(view: View, data: GraphData, keys: dict[str, tuple], ids: dict[tuple, str], passed) -> None:
    """The graph's edges between display nodes, producer to consumer, counted, with the tensors
    passed as `passed(producer, consumer)` tells (graph node ids; None: not known)."""
    for src, dst, _, _ in data.edges:
        consumer, producer = ids[keys[src]], ids[keys[dst]]
        if consumer == producer:
            continue
        edge = view.edges.setdefault((producer, consumer), {"count": 0, "shapes": set()})
        edge["count"] += 1
        text = passed(dst, src)
        if text is not None:
            edge["shapes"].add(text)


def _fold_siblings(data: GraphData, keys: dict, types: dict[str, str], paths: dict,
                   same=lambda module, call: None) -> dict:
    """Rule 3: merge collapsed calls of sibling modules of one type with identical ops (and
    equal `same(module, call)`, which a caller may use to ask for more)."""
    ops: dict[tuple, Counter] = defaultdict(Counter)
    where: dict[tuple, CallPath] = {}
    for info in data.nodes:
        key = keys[info["id"]]
        if key[0] == "module":
            ops[key][info["op"]] += 1
            where.setdefault(key, before(paths[info["id"]], key[1]))
    families: dict[tuple, list[tuple]] = defaultdict(list)
    for key, counts in ops.items():
        families[(where[key], types.get(key[1]), frozenset(counts.items()), same(*key[1:]))].append(key)
    merged = {}
    for members in families.values():
        if len({m for _, m, _ in members}) == len(members) >= 3:
            group = ("siblings", tuple(sorted(members, key=lambda k: _natural(k[1]))))
            for key in members:
                merged[key] = group
    return {nid: merged.get(key, key) for nid, key in keys.items()}


def _natural(name: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def _summary(infos: list[dict]) -> str:
    ops = Counter(i["op"] for i in infos)
    text = f"{len(infos)} nodes: " + ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.most_common(3))
    return text + (", ..." if len(ops) > 3 else "")


def _display(nid: str, key: tuple, infos: list[dict], grouper: _Grouper, types: dict) -> Node:
    kind = key[0]
    path = grouper.paths[infos[0]["id"]]
    if kind == "node":
        info = infos[0]
        node = Node(nid, info["kind"], info["op"], cluster=path)
        if info["kind"] in ("param", "leaf"):
            node.title = info.get("param") or "tensor"
            node.lines.append(f"{_fmt(info['shape'])} {info.get('dtype', '')}".strip())
            if info.get("param"):
                node.subjects.add(info["param"])
        elif info["kind"] == "custom":
            node.lines.append(info.get("function", ""))
            node.subjects.add(info.get("function", "").rpartition(".")[2])
        node.subjects.add(info["op"])
        return node
    params = sorted(i["param"] for i in infos if i.get("param"))
    if kind == "ops":
        info = infos[0]
        title = info.get("param") or ("tensor" if info["kind"] == "leaf" else info["op"])
        cluster = tuple(os.path.commonprefix([grouper.paths[i["id"]] for i in infos]))
        node = Node(nid, "fold", f"{title} x{len(infos)}", ["repeated with the same inputs"], cluster=cluster)
        node.subjects.add(info["op"])
        return node
    if kind == "fold":
        module = key[1]
        calls = grouper.calls.get(module, 0)
        title = f"{module or types.get(module, 'model')} ({types.get(module, 'module')}) x{calls}"
        node = Node(nid, "fold", title, [_summary(infos)], cluster=before(path, module))
        node.subjects |= {module, *params}
        return node
    if kind == "module":
        _, module, call = key
        node = Node(nid, "module", call_title(module, call, types, grouper.calls), [_summary(infos)],
                    cluster=before(path, module))
        node.subjects |= {module, *params}
        return node
    calls = key[1]
    first, last = calls[0][1], calls[-1][1]
    title = f"{first} ... {last} ({types.get(first, 'module')}) x{len(calls)}"
    cluster = next((before(path, m) for _, m, _ in calls if any(p[0] == m for p in path)), path)
    node = Node(nid, "fold", title, [f"{len(infos) // len(calls)} nodes each"], cluster=cluster)
    node.subjects |= {*(m for _, m, _ in calls), *params}
    return node


def module_view(modules: list[dict], calls: dict[str, list[dict]], *, depth: int | None = None,
                title: str = "modules") -> View:
    """The module tree: each module with its type, parameters and latest input/output shapes;
    below `depth`, modules are counted in their ancestor; identical siblings (same type and
    shapes, three or more) fold into one node."""
    types = {m["name"]: m["type"] for m in modules}
    roots = {m["name"] for m in modules if m["name"] == m["root"]}
    view = View(title, module_types=types)
    shown = [m for m in modules if depth is None or _depth(m["name"]) <= depth]
    hidden = Counter(_prefix(m["name"], depth) for m in modules if depth is not None and _depth(m["name"]) > depth)

    def signature(m):
        c = calls.get(m["name"], [{}])[0]
        shapes = tuple(str(x.get("shape")) for x in c.get("inputs", []) + c.get("outputs", []))
        return (m["name"].rpartition(".")[0], m["type"], shapes, hidden.get(m["name"], 0))

    families: dict[tuple, list[str]] = defaultdict(list)
    for m in shown:
        if m["name"]:
            families[signature(m)].append(m["name"])
    fold_of = {}
    for members in families.values():
        if len(members) >= 3:
            for name in members:
                fold_of[name] = members
    ids: dict[str, str] = {}
    for m in shown:
        name = m["name"]
        members = fold_of.get(name)
        if members is not None and name != members[0]:
            ids[name] = ids[members[0]]
            continue
        nid = ids[name] = f"m{len(ids)}"
        c = calls.get(name, [{}])[0]
        lines = []
        ins = [_fmt(x["shape"]) for x in c.get("inputs", []) if "shape" in x]
        outs = [_fmt(x["shape"]) for x in c.get("outputs", []) if "shape" in x]
        if ins or outs:
            lines.append(f"{', '.join(ins) or '-'} -> {', '.join(outs) or '-'}")
        if m.get("params"):
            lines.append(f"{m['params']} parameters")
        if hidden.get(name):
            lines.append(f"+{hidden[name]} submodules")
        label = name or m["type"]
        kind = "module"
        if members is not None:
            label = f"{members[0]} ... {members[-1]}"
            lines.append(f"x{len(members)}")
            kind = "fold"
        node = Node(nid, kind, f"{label} ({m['type']})" if name else m["type"], lines)
        node.subjects |= set(members or [name])
        view.nodes[nid] = node
    for m in shown:
        name = m["name"]
        if name in roots:
            continue
        parent = name.rpartition(".")[0]
        if parent in ids and ids[parent] != ids[name]:
            view.edges.setdefault((ids[parent], ids[name]), {"count": 1, "shapes": set()})
    return view
