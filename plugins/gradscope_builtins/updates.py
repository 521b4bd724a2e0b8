"""Update auditing: did each parameter get a gradient, an optimizer, and a sane update?

- missing-zero-grad: `window` (3) optimizer steps in a row with a backward and no zero_grad
  (of the optimizer or the model) while gradients keep growing.
- param-not-in-optimizer: a trainable parameter gets gradients but no optimizer holds it.
- param-without-grad: an optimizer holds a trainable parameter that got no gradient in the
  first `window` (3) steps with a backward (or in the whole run, if shorter).
- update-ratio: median |Δw|/|w| over the optimizer's weight matrices outside [`low`, `high`]
  (1e-5, 1e-1; Karpathy's ~1e-3 rule of thumb) for `patience` (2) steps in a row.
- out-of-step-update: a parameter an optimizer holds changed between steps outside
  ``optimizer.step()`` (through ``.data``, ``copy_``, a manual update...).
- eval-mode-training: an optimizer steps while dropout or trained batch-norm modules are in
  eval mode.
"""

from __future__ import annotations

import math
import statistics

import gradscope
from gradscope import Finding

from ._util import Streak, finite, label

DROPOUT_TYPES = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
NORM_TYPES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"}


def _grad_names(step) -> set[str]:
    return {s.subject for s in step.stats if s.kind == "grad"}


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
        total = math.sqrt(sum(s.norm ** 2 for s in step.stats if s.kind == "grad"))
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
    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not run.optimizers:
            return None
        held = run.optimized()
        findings = []
        for name in sorted(_grad_names(step) - held):
            param = run.parameters.get(name, {})
            if param.get("requires_grad") and param.get("module") is not None:
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
        self.window = config.get("param-without-grad", "window", 3)

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


class UpdateRatio:
    def __init__(self):
        self._streak = Streak()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.low = config.get("update-ratio", "low", 1e-5)
        self.high = config.get("update-ratio", "high", 1e-1)
        self.patience = config.get("update-ratio", "patience", 2)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not finite(step):
            return None
        ratios = {}
        for name, update in step.updates.items():
            if update.optimizer is None or not update.weight:
                continue
            ratio = update.ratio if math.isfinite(update.delta) else math.inf
            ratios[name] = ratio
        matrices = {n: r for n, r in ratios.items() if len(run.parameters.get(n, {}).get("shape", [])) >= 2}
        ratios = matrices or ratios
        if not ratios:
            return None
        median = statistics.median(ratios.values())
        too_high, too_low = not median <= self.high, median < self.low
        high_run = self._streak.update("high", too_high)
        low_run = self._streak.update("low", too_low)
        if high_run < self.patience and low_run < self.patience:
            return None
        pick = max if too_high else min
        subject = pick(ratios, key=ratios.get)
        lrs = step.lrs
        if too_high:
            message = (f"updates are too large: median |Δw|/|w| is {median:.3g} (healthy "
                       f"{self.low:g}..{self.high:g}), {subject} moves by {ratios[subject]:.3g} of its size")
            hint = "The learning rate is too high: lower it (try 10x smaller) or use warm-up."
        else:
            message = (f"updates are too small: median |Δw|/|w| is {median:.3g} (healthy "
                       f"{self.low:g}..{self.high:g}); {subject} moves by {ratios[subject]:.3g} of its size")
            hint = ("The learning rate is too low (or zero), or gradients are tiny: raise the "
                    "learning rate or check the scheduler.")
        return [Finding("update-ratio", "warning", subject, step.step, message,
                        {"median_ratio": median, "ratio": ratios[subject], "lrs": lrs}, hint)]


class OutOfStepUpdate:
    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        findings = []
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


class EvalModeTraining:
    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not step.optimizer_steps or not step.eval_modules:
            return None
        held = run.optimized()
        offending = []
        for name in step.eval_modules:
            kind = run.modules.get(name, {}).get("type")
            if kind in DROPOUT_TYPES:
                offending.append(name)
            elif kind in NORM_TYPES:
                own = [p for p, row in run.parameters.items() if row.get("module") == name]
                if any(p in held and run.parameters[p].get("requires_grad") for p in own):
                    offending.append(name)
        if not offending:
            return None
        order = {m: i for i, m in enumerate(run.forward_order)}
        offending.sort(key=lambda m: order.get(m, len(order)))
        first = offending[0]
        return [Finding(
            "eval-mode-training", "warning", first, step.step,
            f"optimizer{step.optimizer_steps[0]} stepped while {len(offending)} dropout/batch-norm "
            f"module(s) were in eval mode, first {label(first, run)}",
            {"modules": offending},
            "Call model.train() before training steps (model.eval() for validation only); "
            "freeze batch-norm on purpose by also freezing its parameters.",
        )]
