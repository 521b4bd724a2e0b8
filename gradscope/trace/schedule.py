"""When a step takes full statistics and when it walks the autograd graph.

Pure decisions on step numbers and call signatures (no torch), so the schedule is tested on its
own. Full statistics (module inputs, activations, output gradients, tails, weights, gradient
histograms) cost several times a bare step, so they run on the first `dense_steps` steps, then
every `stats_every` steps, and on every step once an alarm was raised (a non-finite value was
seen). The graph walk runs when the shape of the step's module calls changes (a new graph) and
every `graph_every` steps; 0 turns it off.
"""

from __future__ import annotations

_NOTHING = object()


class Schedule:
    def __init__(self, *, stats_every: int, graph_every: int, dense_steps: int):
        self.stats_every = max(1, stats_every)
        self.graph_every = graph_every
        self.dense_steps = dense_steps
        self._last_signature = _NOTHING

    def full_stats(self, step: int, alarm: bool = False) -> bool:
        """Whether `step` takes full statistics."""
        return step < self.dense_steps or step % self.stats_every == 0 or alarm

    def walk_graph(self, step: int, signature) -> bool:
        """Whether `step` walks the graph, given the call signature of the step before it
        (None before the first step). Remembers `signature` for the next decision."""
        changed = signature != self._last_signature
        self._last_signature = signature
        return self.graph_every > 0 and (changed or step % self.graph_every == 0)
