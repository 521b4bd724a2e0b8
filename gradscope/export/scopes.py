"""Which module *call* each autograd node belongs to, at every level of nesting.

The recorded graph gives each node its innermost module and, for nodes that produced a module's
output, the call number of that module. Diagrams draw module calls (a block used three times is
three boxes), so every node needs the call of each enclosing module:

- the innermost call is the node's own, else its consumer's (the node that reached it first
  while walking from the loss, which is how the recorder assigned the scope too);
- an enclosing module's call follows from call counts when they divide evenly (child call `c`
  of a module called `n` times inside a parent called `m` times is in parent call
  ``c * m // n``), else it is the consumer's.

Paths are tuples of ``(module, call)`` pairs, outermost first; ``()`` is outside every module.
"""

from __future__ import annotations

from ..data import GraphData

CallPath = tuple[tuple[str, int], ...]


def up(path: str, roots: set[str]) -> str | None:
    """The module enclosing `path`, None for a root."""
    if path in roots:
        return None
    return path.rpartition(".")[0] if "." in path else ""


def chain(path: str, roots: set[str]) -> list[str]:
    """`path` and its enclosing modules, innermost first."""
    out = [path]
    while (parent := up(out[-1], roots)) is not None and len(out) < 256:
        out.append(parent)
    return out


def call_counts(data: GraphData) -> dict[str, int]:
    """module -> number of its calls the graph shows (highest call number + 1)."""
    counts: dict[str, int] = {}
    for info in data.nodes:
        call = info.get("call")
        if call is not None:
            scope = info.get("scope")
            counts[scope] = max(counts.get(scope, 0), call + 1)
    return counts


def call_paths(data: GraphData, roots: set[str], modules: set[str]) -> dict[str, CallPath]:
    """node id -> its call path. Scopes that are no module (a parameter handed to an optimizer
    without a module, drawn at top level) give ``()``."""
    counts = call_counts(data)
    consumer: dict[str, str] = {}
    for src, dst, _, _ in data.edges:
        consumer.setdefault(dst, src)
    paths: dict[str, CallPath] = {}
    for info in data.nodes:  # breadth-first from the loss: a consumer comes before its producers
        scope = info.get("scope")
        if scope is None or scope not in modules:
            paths[info["id"]] = ()
            continue
        above = dict(paths.get(consumer.get(info["id"], ""), ()))
        call = info.get("call")
        own = counts.get(scope)
        pairs = []
        for module in chain(scope, roots):
            n = counts.get(module)
            if module == scope and call is not None:
                c = call
            elif call is not None and own and n and own % n == 0:
                c = call * n // own
            else:
                c = above.get(module, 0)
            pairs.append((module, c))
        paths[info["id"]] = tuple(reversed(pairs))
    return paths
