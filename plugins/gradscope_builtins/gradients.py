"""exploding-grad and vanishing-grad: gradient size through depth and over steps.

Layers are the modules that own parameters, in forward order; how strongly a layer is driven
is the RMS of the gradient at its output (the norm over the square root of the element count,
so a wide layer is not "larger" just for being wide). Rules after AUTOTRAINER and
DeepDiagnosis: exploding when first/last > `ratio` (70), or when the total parameter gradient
norm grew more than `growth` (1000) times over its first recorded value; vanishing when
first/last < `ratio` (1e-3) and the first layer's parameter gradient norm < `norm` (1e-4).
A rule must hold `patience` (2) steps in a row.

A run that goes non-finite has no second step to wait for: at its first non-finite step,
exploding-grad names the step and layer where an update moved weights by more than their size
(that step, when its gradients were still finite, else the last finite step), with no
patience: that blow-up is the cause the ``nonfinite`` finding points to.
"""

from __future__ import annotations

import math

import gradscope
from gradscope import Finding

from ._util import Divergence, Streak, finite, layer_gradients


class ExplodingGrad:
    def __init__(self):
        self._streak = Streak()
        self._first_total = None
        self._divergence = Divergence()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.ratio = config.get("exploding-grad", "ratio", 70.0)
        self.growth = config.get("exploding-grad", "growth", 1000.0)
        self.patience = config.get("exploding-grad", "patience", 2)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        cause = self._divergence.cause(step, run)
        if cause is not None:
            grad = "" if cause["grad_norm"] is None else f" (gradient norm {cause['grad_norm']:.3g})"
            return [Finding(
                "exploding-grad", "error", cause["layer"], cause["step"],
                f"the run diverged here: the update moved {cause['param']} by "
                f"{cause['update_ratio']:.3g}x its size{grad}, and values turned non-finite "
                f"at step {step.step}",
                {**cause, "nonfinite_step": step.step},
                "Lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), or "
                "check the initialisation scale; add warm-up for large models.",
            )]
        layers = layer_gradients(step, run)
        if not layers or not finite(step):
            return None
        total = math.sqrt(sum(norm ** 2 for _, _, norm in layers))
        if self._first_total is None and total > 0:
            self._first_total = total
        findings = []
        if len(layers) >= 2 and layers[-1][1] > 0:
            (first, first_rms, _), (last, last_rms, _) = layers[0], layers[-1]
            ratio = first_rms / last_rms
            if self._streak.update("depth", ratio > self.ratio) >= self.patience:
                findings.append(Finding(
                    "exploding-grad", "warning", first, step.step,
                    f"gradients grow toward the input: the gradient at {first}'s output is "
                    f"{ratio:.3g}x the one at {last}'s (RMS, limit {self.ratio:g})",
                    {"first": first, "last": last, "first_rms": first_rms, "last_rms": last_rms,
                     "ratio": ratio},
                    "Lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
                    "add normalisation layers, or check the initialisation of deep layers.",
                ))
        if self._first_total:
            growth = total / self._first_total
            if self._streak.update("time", growth > self.growth) >= self.patience:
                top = max(layers, key=lambda layer: layer[2])[0]
                findings.append(Finding(
                    "exploding-grad", "warning", top, step.step,
                    f"the total gradient norm grew {growth:.3g}x since the first step "
                    f"({self._first_total:.3g} -> {total:.3g}); largest in {top}",
                    {"first_total": self._first_total, "total": total, "growth": growth},
                    "Training is diverging: lower the learning rate or clip gradients.",
                ))
        return findings


class VanishingGrad:
    def __init__(self):
        self._streak = Streak()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.ratio = config.get("vanishing-grad", "ratio", 1e-3)
        self.norm = config.get("vanishing-grad", "norm", 1e-4)
        self.patience = config.get("vanishing-grad", "patience", 2)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        layers = layer_gradients(step, run)
        if len(layers) < 2 or layers[-1][1] <= 0 or not finite(step):
            return None
        (first, first_rms, first_norm), (last, last_rms, _) = layers[0], layers[-1]
        ratio = first_rms / last_rms
        holds = ratio < self.ratio and first_norm < self.norm
        if self._streak.update("depth", holds) < self.patience:
            return None
        return [Finding(
            "vanishing-grad", "warning", first, step.step,
            f"gradients die toward the input: the gradient at {first}'s output is {ratio:.3g}x "
            f"the one at {last}'s (RMS) and its parameters' gradient norm is {first_norm:.3g}",
            {"first": first, "last": last, "first_rms": first_rms, "last_rms": last_rms,
             "ratio": ratio, "first_norm": first_norm},
            "Use ReLU-family activations instead of saturating ones, residual connections, "
            "normalisation layers, or a better initialisation (kaiming/xavier).",
        )]
