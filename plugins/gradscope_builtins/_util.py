"""Small helpers shared by the built-in checks (public gradscope API only)."""

from __future__ import annotations

import functools
import math


def per_step(fn):
    """Memoize `fn(step, ...)` for the step it last saw: several checks ask the same question of
    one step, and a step holds a row per tensor."""
    last: list = [None, (), None]  # step, other arguments, result

    @functools.wraps(fn)
    def wrapper(step, *args):
        if last[0] is not step or len(args) != len(last[1]) or any(a is not b for a, b in zip(args, last[1])):
            last[:] = [step, args, fn(step, *args)]
        return last[2]

    return wrapper


class Recomputed:
    """`make(*args)`, worked out again only when `key(*args)` changes (compared by identity,
    then equality): what a check derives from the run's parameters, modules or learning rates
    changes far less often than once a step, and a step has a row per parameter."""

    def __init__(self, key, make):
        self._key, self._make = key, make
        self._last: tuple = (object(), None)  # (key, value); no key equals a bare object

    def __call__(self, *args):
        key = self._key(*args)
        if self._last[0] != key:
            self._last = (key, self._make(*args))
        return self._last[1]


class Streak:
    """Consecutive steps a condition held, per key."""

    def __init__(self):
        self._runs: dict = {}

    def update(self, key, holds: bool) -> int:
        self._runs[key] = self._runs.get(key, 0) + 1 if holds else 0
        return self._runs[key]


def rms(norm: float, count: int) -> float:
    return norm / math.sqrt(count) if count else 0.0


@per_step
def layer_gradients(step, run) -> list[tuple[str, float, float]]:
    """(layer, RMS of the gradient at its output, norm of its parameters' gradient) for each
    module that owns parameters and whose output got a gradient, in forward order."""
    at_output = {
        s.subject: rms(s.norm, s.count) for s in step.stats.of_kind("grad-output")
        if s.call == 0 and s.path == "" and math.isfinite(s.norm)
    }
    if not at_output:  # output gradients are measured on full-statistics steps only
        return []
    owners = {row.get("module") for row in run.parameters.values()}
    at_output = {m: value for m, value in at_output.items() if m in owners}
    param_sq: dict[str, float] = {}
    for s in step.stats.of_kind("grad"):
        if math.isfinite(s.norm):
            module = run.module_of(s.subject)
            param_sq[module] = param_sq.get(module, 0.0) + s.norm ** 2
    return [
        (m, at_output[m], math.sqrt(param_sq.get(m, 0.0)))
        for m in run.forward_order if m in at_output
    ]


def label(name: str, run) -> str:
    """A module name for messages: the root module ('') shows as its class."""
    if name:
        return name
    return run.modules.get(name, {}).get("type", "the model")


@per_step
def finite(step) -> bool:
    """Whether every statistic of the step is finite (nonfinite reports the rest)."""
    return not step.stats.nonfinite()


#: Backward ops of tensor views and copies that leave values as they are (view, reshape,
#: squeeze/unsqueeze, flatten, permute/transpose, contiguous, select/index/slice, expand, casts).
VIEW_OPS = frozenset({
    "View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze", "Permute", "T", "Transpose",
    "Clone", "Select", "Index", "Slice", "Expand", "ToCopy", "Split", "SplitWithSizes", "Unbind",
    "AsStrided", "Alias", "UnsafeSplit", "Narrow",
})


def is_view(op: str) -> bool:
    base, _, version = op.rpartition("Backward")
    return version.isdigit() and base in VIEW_OPS


def children(graph, node) -> list:
    """The ops that produced `node`'s inputs, in input order."""
    return sorted(graph.successors(node), key=lambda c: graph.edges[node, c]["index"])


def through_views(graph, node) -> list:
    """The first ops below `node` that are not views: what feeds `node`, looking through view-like
    ops (a softmax followed by ``view(-1, C)`` still feeds the loss)."""
    found, stack, seen = [], list(reversed(children(graph, node))), set()
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        if is_view(graph.nodes[child]["op"]):
            stack.extend(reversed(children(graph, child)))
        else:
            found.append(child)
    return found


def fed_by(graph, node, op: str) -> list:
    """The `op` nodes that feed `node`, looking through view-like ops (`through_views`)."""
    return [child for child in through_views(graph, node) if graph.nodes[child]["op"] == op]


@per_step
def finite_before_update(step) -> bool:
    """Whether everything the step computed before its update was finite (weights may not be)."""
    return all(s.kind == "weight" for s in step.stats.nonfinite())


def blowup(step, run, limit: float = 1.0) -> dict | None:
    """Where a step whose gradients were finite blew the weights up: the parameter an optimizer
    moved the most relative to its size, when it moved by more than `limit` times its size
    (or to a non-finite value). None when no update was that large."""
    worst, worst_ratio = None, 0.0
    for name, update in step.updates.items():
        if update.optimizer is None or update.delta is None:
            continue
        if not math.isfinite(update.delta):
            ratio = math.inf
        elif update.weight:
            ratio = update.delta / update.weight
        else:
            continue
        if ratio > worst_ratio:
            worst, worst_ratio = name, ratio
    if worst is None or not worst_ratio > limit:
        return None
    grad = next((s for s in step.stats.of_kind("grad") if s.subject == worst), None)
    return {"step": step.step, "param": worst, "layer": run.module_of(worst) or worst,
            "update_ratio": worst_ratio, "grad_norm": None if grad is None else grad.norm}


class Divergence:
    """Follows a run step by step and, at its first non-finite step, finds the step and layer
    where the updates blew up: that step itself when its gradients were still finite (the
    update overflowed), else the last finite step before it."""

    def __init__(self):
        self._last = None  # the last step whose statistics were all finite
        self.seen = False  # a non-finite step was met

    def cause(self, step, run) -> dict | None:
        """At the first non-finite step: the blow-up behind it (see `blowup`), else None; steps
        a GradScaler skipped are not divergence."""
        if getattr(step, "skipped", None):
            return None
        if finite(step):
            self._last = step
            return None
        if self.seen:
            return None
        self.seen = True
        if finite_before_update(step) and (found := blowup(step, run)) is not None:
            return found
        return None if self._last is None else blowup(self._last, run)
