"""nonfinite: NaN or infinity in inputs, activations, the loss, gradients or weights.

The subject is where non-finite values start: the model's input, else the first module in
forward order whose output holds them, else the first module output whose gradient holds them
in backward order, else a parameter's gradient or weight. When the run diverged (an update
moved weights by more than their size, at the first non-finite step or the finite step
before it), the evidence names that step and layer as the cause (``caused_by``), the one
``exploding-grad`` reports.

Steps a ``torch.amp.GradScaler`` skipped because the scaled gradients overflowed are normal in
mixed precision: each is recorded as an ``info`` finding on the optimizer; only `skips` (10)
skipped steps in a row (the overflow persists, the scale keeps collapsing) make a warning.
"""

from __future__ import annotations

import math

import gradscope
from gradscope import Finding

from ._util import Divergence, label

CHECK = "nonfinite"


class NonFinite:
    def __init__(self):
        self._graph = None
        self._bad_weights: dict[str, int] = {}  # parameter -> first step it was non-finite
        self._divergence = Divergence()
        self._cause: dict | None = None
        self._skipped = 0  # steps a GradScaler skipped in a row

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.skips = config.get("nonfinite", "skips", 10)

    @gradscope.hookimpl
    def gradscope_graph(self, graph):
        self._graph = graph

    def _ops_in(self, module: str) -> list[str]:
        if self._graph is None:
            return []
        ops = {d["op"] for _, d in self._graph.nodes(data=True) if d.get("scope") == module and d["kind"] == "op"}
        return sorted(ops)

    def _finding(self, step, subject, what, stat, hint, extra=None):
        evidence = {"kind": stat.kind, "nonfinite": stat.nonfinite, "count": stat.count,
                    "min": stat.min, "max": stat.max, **(extra or {})}
        return Finding(CHECK, "error", subject, step.step, what, evidence, hint)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        cause = self._divergence.cause(step, run)
        self._cause = self._cause or cause
        skipped = getattr(step, "skipped", None)
        self._skipped = self._skipped + 1 if skipped else 0
        found = self._origin(step, run)
        if skipped:
            return self._skip(step, skipped, found)
        if found and self._cause:
            cause = self._cause
            found = [Finding(
                f.check, f.severity, f.subject, f.step,
                f"{f.message}; caused by updates that blew up at step {cause['step']} in "
                f"{cause['layer']} ({cause['param']} moved {cause['update_ratio']:.3g}x its size; "
                f"see exploding-grad)",
                {**f.evidence, "caused_by": {"check": "exploding-grad", **cause}}, f.hint,
            ) for f in found]
        return found

    def _skip(self, step, skipped, found):
        optimizer = f"optimizer{skipped[0]}"
        where = found[0] if found else None
        evidence = {"skipped_in_a_row": self._skipped, "optimizers": skipped}
        if where is not None:
            evidence["first_nonfinite"] = {"subject": where.subject, **where.evidence}
        if self._skipped < self.skips:
            return [Finding(
                CHECK, "info", optimizer, step.step,
                f"GradScaler skipped {optimizer}'s step: the scaled gradients overflowed"
                + (f" (first in {where.subject})" if where else "")
                + "; it lowers its scale and goes on, as mixed precision does",
                evidence,
                "Nothing to do while it happens now and then; many skips in a row mean a real "
                "NaN/inf, not the scale.",
            )]
        return [Finding(
            CHECK, "warning", where.subject if where else optimizer, step.step,
            f"GradScaler skipped {self._skipped} steps of {optimizer} in a row: the overflow "
            f"persists whatever the scale"
            + (f"; non-finite values start at {where.subject}" if where else ""),
            evidence,
            "The gradients hold a real NaN/inf, not a scaling overflow: check the input data and "
            "the ops that run in float16 (use bfloat16 or keep them in float32), lower the "
            "learning rate.",
        )]

    def _origin(self, step, run):
        """A finding on where the step's non-finite values start (None when all are finite)."""
        bad = list(step.stats.nonfinite())
        carried = dict(self._bad_weights)
        for s in bad:
            if s.kind == "weight":
                self._bad_weights.setdefault(s.subject, step.step)
        deltas = step.updates.column("step_delta")
        if not all(map(math.isfinite, deltas)):
            for name, delta in zip(step.updates, deltas):
                if not math.isfinite(delta):  # the weight turned non-finite in this step
                    self._bad_weights.setdefault(name, step.step)
        if not bad:
            return None
        by_kind = lambda kind: next((s for s in bad if s.kind == kind), None)
        if carried:
            rank = {m: i for i, m in enumerate(run.forward_order)}
            place = {p: i for i, p in enumerate(run.parameters)}
            first = min(carried, key=lambda p: (rank.get(run.module_of(p), len(rank)), place.get(p, 0)))
            stat = next((s for s in bad if s.kind == "weight" and s.subject == first), bad[0])
            return [self._finding(
                step, first, f"the weight {first} has been non-finite since step {carried[first]}, "
                f"so every forward since computes NaN/inf ({len(carried)} parameters affected)", stat,
                "Find the first step with a nonfinite finding: the update there broke the weights. "
                "Restart from a checkpoint before it with a lower learning rate or gradient clipping.",
                {"since": carried[first], "parameters": sorted(carried)},
            )]
        if (stat := by_kind("input")) is not None:
            return [self._finding(
                step, "input", f"the input of {label(stat.subject, run)} already holds {stat.nonfinite} "
                f"non-finite values out of {stat.count} (argument {stat.path or '0'})", stat,
                "Check the data pipeline: look for NaN/inf in the batch (torch.isfinite(x).all()), "
                "bad normalisation (division by a zero std) or corrupt samples.",
            )]
        if (stat := by_kind("activation")) is not None:
            ops = self._ops_in(stat.subject)
            in_ops = f"; ops in it: {', '.join(ops)}" if ops and len(ops) <= 4 else ""
            return [self._finding(
                step, stat.subject, f"{label(stat.subject, run)} is the first module whose output "
                f"holds non-finite values ({stat.nonfinite} of {stat.count}){in_ops}", stat,
                "Look for log/sqrt/division of values that can be 0 or negative, exp of large "
                "values, or a learning rate so high that weights blew up; clamp or add an epsilon.",
                {"ops": ops},
            )]
        if (stat := by_kind("loss")) is not None:
            return [self._finding(
                step, "loss", f"the loss is non-finite ({stat.nonfinite} of {stat.count} values)", stat,
                "Check the loss inputs: log of 0 probabilities (use logits with cross_entropy), "
                "or targets outside the loss's domain.",
            )]
        if (stat := by_kind("grad-output")) is not None:
            return [self._finding(
                step, stat.subject, f"backward turns non-finite first at the output of "
                f"{label(stat.subject, run)} ({stat.nonfinite} of {stat.count} gradient values)", stat,
                "A backward formula divides by zero or overflows here (sqrt/pow/norm at 0, a custom "
                "backward); add an epsilon, or use torch.autograd.set_detect_anomaly to find the op.",
            )]
        if (stat := by_kind("grad")) is not None:
            amount = stat.nonfinite if stat.zeros is not None else "some"  # counted on full steps
            return [self._finding(
                step, stat.subject, f"the gradient of {stat.subject} holds {amount} "
                f"non-finite values", stat,
                "Clip gradients (torch.nn.utils.clip_grad_norm_) and lower the learning rate; "
                "check for loss scaling problems under mixed precision.",
            )]
        stat = by_kind("weight")
        return [self._finding(
            step, stat.subject, f"the weight {stat.subject} holds {stat.nonfinite} non-finite values "
            f"after the step", stat,
            "The optimizer step produced NaN/inf: lower the learning rate, check the optimizer's "
            "epsilon and any manual weight updates.",
        )]
