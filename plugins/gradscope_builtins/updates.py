"""Update auditing: did each parameter get a gradient, an optimizer, and a sane update?

- missing-zero-grad: `window` (3) optimizer steps in a row with a backward and no zero_grad
  (of the optimizer or the model) while gradients keep growing.
- param-not-in-optimizer: a trainable parameter gets gradients but no optimizer holds it, for
  `patience` (3) steps in a row with an optimizer step.
- param-without-grad: an optimizer holds a trainable parameter (``requires_grad``) that got no
  gradient in the first `window` (50) steps with a backward (or in the whole run, if shorter):
  a head trained on one batch in four is fine, frozen parameters are not judged.
- update-ratio: median |Δw|/|w| outside [`low`, `high`] (1e-5, 1e-1; Karpathy's ~1e-3 rule of
  thumb) for `patience` (10) judged steps in a row, after `warmup` (10) optimizer steps. Judged
  over the weight matrices that got a gradient in the step and whose learning rate is not 0
  (frozen layers, a warming-up group at lr=0), for optimizers that pick their own step size
  by line search (LBFGS) never.
- out-of-step-update: a parameter an optimizer holds changed between steps outside
  ``optimizer.step()`` (through ``.data``, ``copy_``, a manual update...).

eval-mode-training lives in `modes`.
"""

from __future__ import annotations

import math
import statistics

import gradscope
from gradscope import Finding

from ._util import Recomputed, Streak, finite, per_step

#: Optimizers whose step size comes from a line search, not from the learning rate.
LINE_SEARCH = {"LBFGS"}


@per_step
def _grad_names(step) -> set[str]:
    return set(step.stats.of_kind("grad").column("subject"))


class MissingZeroGrad:
    def __init__(self):
        self._norms: list[float] = []

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.window = config.get("missing-zero-grad", "window", 3)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not step.optimizer_steps or not step.backwards or not finite(step):
            return None
        if step.zero_grad:
            self._norms.clear()
            return None
        total = math.sqrt(sum(norm * norm for norm in step.stats.of_kind("grad").column("norm")))
        self._norms.append(total)
        if len(self._norms) < self.window:
            return None
        recent = self._norms[-self.window:]
        if not all(b >= a for a, b in zip(recent, recent[1:])):
            return None
        opt = step.optimizer_steps[0]
        return [Finding(
            "missing-zero-grad", "warning", f"optimizer{opt}", step.step,
            f"no zero_grad in the last {len(self._norms)} steps and the gradient norm keeps "
            f"growing ({recent[0]:.3g} -> {recent[-1]:.3g}): gradients accumulate across steps",
            {"steps_without_zero_grad": len(self._norms), "grad_norms": recent},
            "Call optimizer.zero_grad() once per step (before backward); for gradient "
            "accumulation, zero after each optimizer.step().",
        )]


class ParamNotInOptimizer:
    def __init__(self):
        self._streak = Streak()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.patience = config.get("param-not-in-optimizer", "patience", 3)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not run.optimizers or not step.optimizer_steps:
            return None
        held = run.optimized()
        findings = []
        grads = _grad_names(step)
        for name in sorted(set(run.parameters) - held):
            param = run.parameters[name]
            lacking = name in grads and param.get("requires_grad") and param.get("module") is not None
            if self._streak.update(name, bool(lacking)) >= self.patience:
                findings.append(Finding(
                    "param-not-in-optimizer", "warning", name, step.step,
                    f"{name} gets gradients but no optimizer holds it, so it never trains",
                    {"shape": param.get("shape"), "optimizers": len(run.optimizers)},
                    "Pass model.parameters() (after adding every layer) to the optimizer, or "
                    "add it with optimizer.add_param_group; set requires_grad=False if it is "
                    "meant to stay frozen.",
                ))
        return findings


class ParamWithoutGrad:
    def __init__(self):
        self._had_grad: set[str] = set()
        self._steps = 0
        self._reported = False

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.window = config.get("param-without-grad", "window", 50)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not step.backwards:
            return None
        self._had_grad |= _grad_names(step)
        self._steps += 1
        if self._steps == self.window:
            return self._judge(run, step.step)
        return None

    @gradscope.hookimpl
    def gradscope_run_end(self, run):
        if 0 < self._steps < self.window:
            return self._judge(run, run.steps - 1)
        return None

    def _judge(self, run, step):
        findings = []
        for name in sorted(run.optimized() - self._had_grad):
            param = run.parameters.get(name, {})
            layout = run.placement(name)
            if layout and 0 in layout["local_shape"]:
                continue  # a sharded parameter of which this rank holds no element
            if param.get("requires_grad"):
                findings.append(Finding(
                    "param-without-grad", "warning", name, step,
                    f"{name} is in an optimizer but got no gradient in {self._steps} steps "
                    f"with a backward: it does not take part in the loss",
                    {"steps": self._steps, "shape": param.get("shape")},
                    "The layer is unused, or its branch is cut from the graph (.detach(), "
                    ".item(), torch.no_grad, a non-differentiable op); remove it or reconnect it.",
                ))
        return findings


def learning_rates(step, run) -> dict[str, float | None]:
    """The learning rate of each parameter an optimizer holds, from its group (None: unknown)."""
    lrs = {}
    for index, opt in run.optimizers.items():
        groups, rates = opt.get("groups", []), step.lrs.get(f"optimizer{index}", [])
        sizes = [g.get("size") for g in groups]
        if len(rates) == len(sizes) and None not in sizes and sum(sizes) == len(opt["params"]):
            names = iter(opt["params"])
            for size, lr in zip(sizes, rates):
                for _ in range(size):
                    lrs[next(names)] = lr
        elif len(set(rates)) == 1:  # one learning rate for every group
            lrs.update(dict.fromkeys(opt["params"], rates[0]))
    return lrs


class UpdateRatio:
    def __init__(self):
        self._streak = Streak()
        self._judged = 0
        # the optimizers' entries themselves: an entry is replaced when its optimizer changes
        self._learning_rates = Recomputed(
            lambda step, run: (tuple((k, tuple(v)) for k, v in step.lrs.items()), tuple(run.optimizers.values())),
            learning_rates)
        self._matrix_names = Recomputed(  # parameters are only ever added
            lambda run: len(run.parameters),
            lambda run: {name for name, row in run.parameters.items() if len(row.get("shape", ())) >= 2})

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.low = config.get("update-ratio", "low", 1e-5)
        self.high = config.get("update-ratio", "high", 1e-1)
        self.patience = config.get("update-ratio", "patience", 10)
        self.warmup = config.get("update-ratio", "warmup", 10)

    def _ratios(self, step, run) -> dict[str, float]:
        grads = _grad_names(step)
        lrs = self._learning_rates(step, run)
        skipped = {None} | {i for i, opt in run.optimizers.items() if opt.get("type") in LINE_SEARCH}
        ratios = {}
        updates = step.updates
        for name, optimizer, delta, weight in zip(
                updates, updates.column("optimizer"), updates.column("delta"), updates.column("weight")):
            if optimizer in skipped or not weight or name not in grads:
                continue
            lr = lrs.get(name)
            if lr == 0 or (lr is None and delta == 0):
                continue  # not meant to move (a group at lr=0)
            ratios[name] = delta / weight if math.isfinite(delta) else math.inf
        matrices = self._matrix_names(run)
        return {n: r for n, r in ratios.items() if n in matrices} or ratios

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not finite(step):
            return None
        ratios = self._ratios(step, run)
        if not ratios:
            return None
        self._judged += 1
        median = statistics.median(ratios.values())
        too_high, too_low = not median <= self.high, median < self.low
        if self._judged <= self.warmup:  # the first updates after initialisation are not typical
            too_high = too_low = False
        high_run = self._streak.update("high", too_high)
        low_run = self._streak.update("low", too_low)
        if high_run < self.patience and low_run < self.patience:
            return None
        pick = max if too_high else min
        subject = pick(ratios, key=ratios.get)
        lrs = step.lrs
        steps = max(high_run, low_run)
        if too_high:
            message = (f"updates are too large: median |Δw|/|w| is {median:.3g} (healthy "
                       f"{self.low:g}..{self.high:g}) for {steps} steps, {subject} moves by "
                       f"{ratios[subject]:.3g} of its size")
            hint = "The learning rate is too high: lower it (try 10x smaller) or use warm-up."
        else:
            message = (f"updates are too small: median |Δw|/|w| is {median:.3g} (healthy "
                       f"{self.low:g}..{self.high:g}) for {steps} steps; {subject} moves by "
                       f"{ratios[subject]:.3g} of its size")
            hint = ("The learning rate is too low, or gradients are tiny: raise the learning "
                    "rate or check the scheduler.")
        return [Finding("update-ratio", "warning", subject, step.step, message,
                        {"median_ratio": median, "ratio": ratios[subject], "steps": steps, "lrs": lrs},
                        hint)]


class OutOfStepUpdate:
    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        findings = []
        if not any(step.updates.column("outside")):  # nothing moved outside a step (the usual case)
            return findings
        for name, update in step.updates.items():
            if update.optimizer is None or not update.outside or not math.isfinite(update.outside):
                continue
            relative = update.outside / update.weight if update.weight else math.inf
            findings.append(Finding(
                "out-of-step-update", "warning", name, step.step,
                f"{name} changed by {update.outside:.3g} ({relative:.3g} of its size) outside "
                f"optimizer{update.optimizer}.step() since the previous step",
                {"outside": update.outside, "weight": update.weight, "relative": relative},
                "Something writes the weights behind the optimizer's back (p.data.sub_, copy_, "
                "a manual init inside the loop); let the optimizer own the update, or wrap "
                "deliberate edits in torch.no_grad() and expect this warning.",
            ))
        return findings
