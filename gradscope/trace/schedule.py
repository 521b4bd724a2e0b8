"""When a step takes full statistics and when it walks the autograd graph.

Pure decisions on step numbers and call signatures (no torch), so the schedule is tested on its
own. Full statistics (module inputs, activations, output gradients, tails, weights, gradient
histograms) cost several times a bare step, so they run on the first `dense_steps` steps, then
every `stats_every` steps, and on every step once an alarm was raised (a non-finite value was
seen). The graph walk runs when the shape of the step's module calls changes (a new graph) and
every `graph_every` steps; 0 turns it off. Steps are compared by their first root call (all a
light step records), and steps that record every call by all of them too.
"""

from __future__ import annotations

_NOTHING = object()


class Schedule:
    def __init__(self, *, stats_every: int, graph_every: int, dense_steps: int):
        self.stats_every = max(1, stats_every)
        self.graph_every = graph_every
        self.dense_steps = dense_steps
        self._last_roots = _NOTHING
        self._last_calls = _NOTHING

    def full_stats(self, step: int, alarm: bool = False) -> bool:
        """Whether `step` takes full statistics."""
        return step < self.dense_steps or step % self.stats_every == 0 or alarm

    def walk_graph(self, step: int, roots, calls=None) -> bool:
        """Whether `step` walks the graph, given the signature of the step before it: of its root
        calls (None before the first step) and of all its calls (None when they were not all
        recorded). Remembers both for the next decision."""
        changed = roots != self._last_roots
        if calls is not None:
            changed |= self._last_calls is not _NOTHING and calls != self._last_calls
            self._last_calls = calls
        self._last_roots = roots
        return self.graph_every > 0 and (changed or step % self.graph_every == 0)
