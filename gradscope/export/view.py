"""What a diagram shows: the autograd or module graph, collapsed and folded to stay readable.

A `View` is the diagram's content before any Graphviz syntax: display nodes (single ops,
parameters, collapsed modules, folded repeats), edges between them with the tensor shape
where it is known, and the module path each node sits in (drawn as nested clusters).

Readability rules, applied in this order:
1. repeated calls: a module called more than `fold_calls` times (an RNN cell unrolled over
   time) becomes one node "name (Type) xN", with everything inside it;
2. depth: with `depth` K, modules K levels down become single nodes;
3. repeated siblings: sibling modules of one type with the same ops (48 identical transformer
   blocks) become one node "first ... last (Type) xN";
4. size: without `depth`, the smallest depth that brings the diagram under `max_nodes` is used.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..trace.autograd import GraphData


@dataclass
class Node:
    id: str
    kind: str  # op, custom, param, leaf, module, fold
    title: str
    lines: list[str] = field(default_factory=list)
    cluster: str | None = None  # module path of the cluster the node is drawn in
    subjects: set[str] = field(default_factory=set)  # names findings may refer to


@dataclass
class View:
    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], dict] = field(default_factory=dict)
    module_types: dict[str, str] = field(default_factory=dict)
    roots: set[str] = field(default_factory=lambda: {""})  # modules with no parent


def _depth(scope: str | None) -> int:
    return 0 if not scope else scope.count(".") + 1


def _prefix(scope: str, k: int) -> str:
    return ".".join(scope.split(".")[:k])


def _ancestors(scope: str | None):
    """`scope` and its enclosing modules, outermost first ('' is the root)."""
    if scope is None:
        return []
    parts = scope.split(".") if scope else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))] if scope else [""]


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _output_shape(info: dict):
    if info.get("kind") in ("param", "leaf"):
        return info.get("shape")
    result = info.get("saved", {}).get("result")
    return result.get("shape") if isinstance(result, dict) else None


class _Grouper:
    def __init__(self, data: GraphData, module_types: dict[str, str], fold_calls: int):
        self.data = data
        self.types = module_types
        calls: dict[str, set] = defaultdict(set)
        for info in data.nodes:
            if info.get("call") is not None:
                calls[info.get("scope")].add(info["call"])
        self.calls = {s: len(c) for s, c in calls.items()}
        self.folded = {s for s, n in self.calls.items() if n > fold_calls}

    def key(self, info: dict, depth: int | None) -> tuple:
        scope = info.get("scope")
        for anc in _ancestors(scope):
            if anc in self.folded:
                return ("fold", anc)
        if depth is not None and scope is not None and _depth(scope) >= depth >= 1:
            return ("module", _prefix(scope, depth))
        return ("node", info["id"])


def autograd_view(data: GraphData, *, module_types: dict[str, str] | None = None,
                  roots: set[str] | None = None, depth: int | None = None, fold_calls: int = 4,
                  max_nodes: int = 1500, title: str = "autograd graph") -> View:
    """The display content of an autograd graph (see the module docstring for the rules)."""
    types = module_types or {}
    grouper = _Grouper(data, types, fold_calls)
    chosen = depth
    if chosen is None:
        for k in [None, *range(6, 0, -1)]:
            chosen = k
            if len({grouper.key(i, k) for i in data.nodes}) <= max_nodes:
                break
    keys = {info["id"]: grouper.key(info, chosen) for info in data.nodes}
    keys = _fold_siblings(data, keys, types)
    view = View(title, module_types=types, roots=roots or {""})
    members: dict[tuple, list[dict]] = defaultdict(list)
    for info in data.nodes:
        members[keys[info["id"]]].append(info)
    ids = {key: f"g{i}" for i, key in enumerate(members)}
    for key, infos in members.items():
        view.nodes[ids[key]] = _display(ids[key], key, infos, grouper, types)
    by_id = {info["id"]: info for info in data.nodes}
    for src, dst, _, _ in data.edges:
        a, b = ids[keys[src]], ids[keys[dst]]
        if a == b:
            continue
        edge = view.edges.setdefault((a, b), {"count": 0, "shapes": set()})
        edge["count"] += 1
        shape = _output_shape(by_id[dst])
        if shape is not None:
            edge["shapes"].add(_fmt(shape))
    return view


def _fold_siblings(data: GraphData, keys: dict, types: dict[str, str]) -> dict:
    """Merge collapsed sibling modules of one type with identical ops into one fold group."""
    ops: dict[str, Counter] = defaultdict(Counter)
    for info in data.nodes:
        key = keys[info["id"]]
        if key[0] == "module":
            ops[key[1]][info["op"]] += 1
    families: dict[tuple, list[str]] = defaultdict(list)
    for module, counts in ops.items():
        parent = module.rpartition(".")[0]
        families[(parent, types.get(module), frozenset(counts.items()))].append(module)
    merged = {}
    for (_, _, _), modules in families.items():
        if len(modules) >= 3:
            group = ("siblings", tuple(sorted(modules, key=_natural)))
            for module in modules:
                merged[("module", module)] = group
    return {nid: merged.get(key, key) for nid, key in keys.items()}


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _display(nid: str, key: tuple, infos: list[dict], grouper: _Grouper, types: dict) -> Node:
    kind = key[0]
    if kind == "node":
        info = infos[0]
        node = Node(nid, info["kind"], info["op"], cluster=info.get("scope"))
        if info["kind"] in ("param", "leaf"):
            node.title = info.get("param") or "tensor"
            node.lines.append(f"{_fmt(info['shape'])} {info.get('dtype', '')}".strip())
            if info.get("param"):
                node.subjects.add(info["param"])
            node.cluster = info.get("scope")
        elif info["kind"] == "custom":
            node.lines.append(info.get("function", ""))
            node.subjects.add(info.get("function", "").rpartition(".")[2])
        node.subjects.add(info["op"])
        return node
    ops = Counter(i["op"] for i in infos)
    summary = f"{len(infos)} nodes: " + ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.most_common(3))
    if len(ops) > 3:
        summary += ", ..."
    params = sorted(i["param"] for i in infos if i.get("param"))
    if kind == "fold":
        module = key[1]
        calls = grouper.calls.get(module, 0)
        title = f"{module or types.get(module, 'model')} ({types.get(module, 'module')}) x{calls}"
        node = Node(nid, "fold", title, [summary], cluster=module.rpartition(".")[0] if module else None)
        node.subjects |= {module, *params}
        return node
    if kind == "module":
        module = key[1]
        node = Node(nid, "module", f"{module} ({types.get(module, 'module')})", [summary],
                    cluster=module.rpartition(".")[0] if "." in module else "")
        node.subjects |= {module, *params}
        return node
    modules = key[1]
    first, last = modules[0], modules[-1]
    title = f"{first} ... {last} ({types.get(first, 'module')}) x{len(modules)}"
    node = Node(nid, "fold", title, [f"{len(infos) // len(modules)} nodes each"],
                cluster=first.rpartition(".")[0] if "." in first else "")
    node.subjects |= {*modules, *params}
    return node


def module_view(modules: list[dict], calls: dict[str, list[dict]], *, depth: int | None = None,
                title: str = "modules") -> View:
    """The module tree: each module with its type, parameters and latest input/output shapes;
    below `depth`, modules are counted in their ancestor; identical siblings (same type and
    shapes, three or more) fold into one node."""
    types = {m["name"]: m["type"] for m in modules}
    roots = {m["name"] for m in modules if m["name"] == m["root"]}
    view = View(title, module_types=types, roots=roots)
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
