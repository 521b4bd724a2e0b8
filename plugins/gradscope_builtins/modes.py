"""Train/eval mode mistakes: the modes of dropout and batch-norm modules against what the run does.

- eval-mode-training: an optimizer steps while dropout or batch-norm modules of the part of the
  model it trains are in eval mode. A module counts only when the parameters around it were
  updated in that step: the batch norm's own, or, for a dropout, those of the module holding
  it. A frozen encoder kept in eval mode (linear probing), an EMA or teacher copy, and batch
  norm frozen on purpose (its parameters frozen too) stay quiet.
- dropout-at-eval: a whole forward pass of a model that an optimizer trains ran under
  ``torch.no_grad()`` / ``inference_mode()`` with dropout or batch-norm modules in training
  mode: validation that forgot ``model.eval()`` (dropout adds noise to the scores, batch norm
  updates its running statistics with validation data). Forward passes of models no optimizer
  trains (an EMA teacher kept in train mode) are not judged.
"""

from __future__ import annotations

import gradscope
from gradscope import Finding

from ._util import Recomputed, label

DROPOUT_TYPES = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
NORM_TYPES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"}


def _updated(step, run) -> set[str]:
    """Parameters an optimizer moved in this step."""
    updates = step.updates
    return {name for name, optimizer, delta in zip(updates, updates.column("optimizer"), updates.column("delta"))
            if optimizer is not None and delta}


def _around(module: str, run) -> str:
    """The module whose parameters decide whether `module` is being trained: a batch norm
    itself, a dropout the module holding it."""
    if run.modules.get(module, {}).get("type") in NORM_TYPES:
        return module
    parent = module.rpartition(".")[0]
    return parent if parent or run.modules.get(module, {}).get("root") == "" else module


def _inside(param_module: str | None, module: str, root: str | None, run) -> bool:
    if param_module is None or run.modules.get(param_module, {}).get("root") != root:
        return False
    return module == root or param_module == module or param_module.startswith(module + ".")


def _order(names: list[str], run) -> list[str]:
    rank = {m: i for i, m in enumerate(run.forward_order)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), m))


class EvalModeTraining:
    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not step.optimizer_steps or not step.eval_modules or not step.described:
            return None  # judged on steps whose every module call is known (the mode it ran in)
        updated = _updated(step, run)
        trained = {run.module_of(p) for p in updated}
        called = {}
        for call in step.calls:
            called.setdefault(call["module"], []).append(call.get("training"))
        offending = []
        for name in step.eval_modules:
            if run.modules.get(name, {}).get("type") not in DROPOUT_TYPES | NORM_TYPES:
                continue
            if name in called and all(called[name]):
                continue  # it ran in training mode in this step; switched to eval after
            around, root = _around(name, run), run.modules.get(name, {}).get("root")
            if any(_inside(m, around, root, run) for m in trained):
                offending.append(name)
        if not offending:
            return None
        offending = _order(offending, run)
        first = offending[0]
        return [Finding(
            "eval-mode-training", "warning", first, step.step,
            f"optimizer{step.optimizer_steps[0]} stepped while {len(offending)} dropout/batch-norm "
            f"module(s) of the layers it trains were in eval mode, first {label(first, run)}",
            {"modules": offending},
            "Call model.train() before training steps (model.eval() for validation only); "
            "freeze batch-norm on purpose by also freezing its parameters.",
        )]


class DropoutAtEval:
    def __init__(self):
        self._trained: set[str] = set()  # roots whose parameters an optimizer has moved
        self._all_roots = Recomputed(  # modules are only ever added
            lambda run: len(run.modules), lambda run: {row["root"] for row in run.modules.values()})

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not self._trained >= self._all_roots(run):  # once every root trained, nothing to learn
            for param in _updated(step, run):
                module = run.module_of(param)
                if module is not None and module in run.modules:
                    self._trained.add(run.modules[module]["root"])
        no_grad_roots = {c["module"] for c in step.calls
                         if c.get("grad") is False and c["module"] in self._trained
                         and run.modules.get(c["module"], {}).get("root") == c["module"]}
        if not no_grad_roots:
            return None
        findings = []
        for root in sorted(no_grad_roots):
            active = sorted({
                c["module"] for c in step.calls
                if c.get("grad") is False and c.get("training")
                and run.modules.get(c["module"], {}).get("root") == root
                and run.modules.get(c["module"], {}).get("type") in DROPOUT_TYPES | NORM_TYPES
            })
            if not active:
                continue
            active = _order(active, run)
            findings.append(Finding(
                "dropout-at-eval", "warning", active[0], step.step,
                f"{label(root, run)} ran a forward pass without gradients (torch.no_grad / "
                f"inference_mode) while {len(active)} dropout/batch-norm module(s) were in "
                f"training mode, first {label(active[0], run)}: evaluation that forgot model.eval()",
                {"modules": active, "model": label(root, run)},
                "Call model.eval() before validation or inference (and model.train() after): "
                "dropout makes the scores random and batch norm learns the validation data's "
                "statistics.",
            ))
        return findings
