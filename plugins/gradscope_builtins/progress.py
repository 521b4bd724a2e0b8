"""Is the run learning at all?

- no-optimizer-step: `window` (5) backward passes in a row (over one step or several) with no
  optimizer step and no change to any watched parameter: ``optimizer.step()`` is forgotten or
  unreachable, and the gradients are computed for nothing. (While a watched optimizer never
  steps, the whole run is one step: the finding comes when it is recorded.) Weights updated by hand (``p -= lr * p.grad``) change,
  so such loops stay quiet, and so do steps a ``GradScaler`` skipped.
- no-progress: after `window` (100) steps with a loss, the median loss of the last `span` (20)
  steps is not below the median of the first `span` steps by `gain` (1 %) of its size; or a
  cross-entropy loss over C classes sits at chance level (within `chance` (2 %) of ln C) —
  labels shuffled apart from their inputs look exactly like this. Runs with several
  optimizers (GANs, adversarial training, whose losses compete by design) are not judged.
"""

from __future__ import annotations

import math
import statistics

import gradscope
from gradscope import Finding

from ._util import fed_by


class NoOptimizerStep:
    def __init__(self):
        self._idle = 0

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.window = config.get("no-optimizer-step", "window", 5)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not step.backwards:
            return None
        moved = any(step.updates.column("step_delta"))
        skipped = getattr(step, "skipped", None)
        if step.optimizer_steps or moved or skipped or not step.updates:
            self._idle = 0
            return None
        self._idle += step.backwards
        if self._idle < self.window:
            return None
        idle = [f"optimizer{i} ({o.get('type')})" for i, o in sorted(run.optimizers.items())]
        subject = idle[0].split()[0] if idle else "loss"
        known = f"; {', '.join(idle)} never stepped in them" if idle else ""
        return [Finding(
            "no-optimizer-step", "error", subject, step.step,
            f"{self._idle} backward passes in a row but no optimizer stepped and no weight "
            f"changed{known}: the gradients are computed for nothing",
            {"backwards": self._idle, "optimizers": idle},
            "Call optimizer.step() after loss.backward() in every training step (check that it "
            "is not inside a branch that never runs, or after an early continue/return).",
        )]


class NoProgress:
    def __init__(self):
        self._losses: list[float] = []
        self._classes: int | None = None

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.window = config.get("no-progress", "window", 100)
        self.span = config.get("no-progress", "span", 20)
        self.gain = config.get("no-progress", "gain", 0.01)
        self.chance = config.get("no-progress", "chance", 0.02)

    @gradscope.hookimpl
    def gradscope_graph(self, graph):
        """The number of classes of a cross-entropy loss (its log-softmax input's last dim)."""
        for node, data in graph.nodes(data=True):
            if data["op"] != "NllLossBackward0":
                continue
            for log in fed_by(graph, node, "LogSoftmaxBackward0"):
                saved = graph.nodes[log].get("saved", {})
                shape, dim = (saved.get("result") or {}).get("shape"), saved.get("dim", -1)
                if shape and isinstance(dim, int) and -len(shape) <= dim < len(shape) and shape[dim] > 1:
                    self._classes = shape[dim]
                    return

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        values = [s.mean for s in step.stats.of_kind("loss") if s.count == 1]
        if not values or not all(math.isfinite(v) for v in values) or len(run.optimizers) > 1:
            return None
        self._losses.append(sum(values) / len(values))
        if len(self._losses) < max(self.window, 2 * self.span):
            return None
        first = statistics.median(self._losses[:self.span])
        last = statistics.median(self._losses[-self.span:])
        evidence = {"steps": len(self._losses), "first_median": first, "last_median": last}
        if self._classes is not None:
            chance = math.log(self._classes)
            if abs(last - chance) <= self.chance * chance:
                return [Finding(
                    "no-progress", "warning", "loss", step.step,
                    f"the loss sits at chance level: the median of the last {self.span} steps is "
                    f"{last:.4g}, ln({self._classes} classes) = {chance:.4g}: the model predicts "
                    f"no better than uniform guessing after {len(self._losses)} steps",
                    {**evidence, "classes": self._classes, "chance": chance},
                    "Check that labels stay paired with their inputs (shuffling one without the "
                    "other, a wrong label column, augmentations that change the class), and that "
                    "the learning rate is not 0 or far too small.",
                )]
        if first - last > self.gain * abs(first):
            return None
        return [Finding(
            "no-progress", "warning", "loss", step.step,
            f"the loss has not improved in {len(self._losses)} steps: median {first:.4g} over the "
            f"first {self.span} steps, {last:.4g} over the last {self.span}",
            evidence,
            "Check the learning rate (0, or far too small), that optimizer.step() updates the "
            "model the loss comes from, that labels match their inputs, and that the loss is "
            "not detached from the model's output. A model that had already converged (a "
            "resumed run) looks like this too.",
        )]
