"""gradcheck-mismatch: a custom autograd.Function whose backward disagrees with its forward.

Each Function class met in an autograd graph is checked once, in the recorder thread, away
from training: small float64 inputs (the shapes of its saved tensors when they match its
inputs, else 2x3), a random output gradient, and central finite differences compared with
the Function's own backward. A disagreement beyond `rtol` (1e-3) / `atol` (1e-5) is an error.
Functions that cannot run on such inputs (non-tensor arguments, device-only code) are skipped.
"""

from __future__ import annotations

import torch

import gradscope
from gradscope import Finding

from ._util import label


def _inputs(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def _scalar(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


def compare(fn: type, shapes: list[tuple]) -> dict | None:
    """Largest disagreement between `fn`'s backward and finite differences, or None if unrunnable."""
    inputs = _inputs(shapes, 0)
    try:
        out = fn.apply(*inputs)
    except Exception:
        return None
    outputs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]
    outputs = [o for o in outputs if o.requires_grad and o.dtype == torch.float64]
    if not outputs:
        return None
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outputs]
    try:
        analytic = torch.autograd.grad(_scalar(outputs, weights), inputs, allow_unused=True)
    except Exception:
        return None
    worst = {"abs_diff": 0.0}
    eps = 1e-6
    with torch.no_grad():
        for i, x in enumerate(inputs):
            got = analytic[i] if analytic[i] is not None else torch.zeros_like(x)
            flat = x.view(-1)
            for j in range(flat.numel()):
                keep = flat[j].item()
                flat[j] = keep + eps
                plus = _scalar(_outs(fn, inputs), weights).item()
                flat[j] = keep - eps
                minus = _scalar(_outs(fn, inputs), weights).item()
                flat[j] = keep
                numeric = (plus - minus) / (2 * eps)
                analytic_j = got.reshape(-1)[j].item()
                diff = abs(analytic_j - numeric)
                if diff > worst["abs_diff"]:
                    worst = {"abs_diff": diff, "input": i, "element": j,
                             "analytic": analytic_j, "numeric": numeric}
    return worst


def _outs(fn, inputs):
    out = fn.apply(*inputs)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]
    return [o for o in outs if o.dtype == torch.float64]


class GradcheckMismatch:
    def __init__(self):
        self._checked: set[str] = set()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.rtol = config.get("gradcheck-mismatch", "rtol", 1e-3)
        self.atol = config.get("gradcheck-mismatch", "atol", 1e-5)

    @gradscope.hookimpl
    def gradscope_graph(self, step, graph, run):
        functions = graph.graph.get("functions", {})
        findings = []
        for node, data in graph.nodes(data=True):
            name = data.get("function")
            if data["kind"] != "custom" or name in self._checked or name not in functions:
                continue
            self._checked.add(name)
            n_inputs = graph.out_degree(node) or 1
            saved = [t["shape"] for t in data.get("saved", {}).get("tensors", []) if isinstance(t, dict)]
            shapes = [tuple(s) for s in saved] if len(saved) == n_inputs else [(2, 3)] * n_inputs
            worst = compare(functions[name], shapes)
            if worst is None or "numeric" not in worst:
                continue
            if worst["abs_diff"] <= self.atol + self.rtol * abs(worst["numeric"]):
                continue
            scope = data.get("scope")
            short = name.rpartition(".")[2]
            subject = short if scope is None else f"{short} in {label(scope, run)}"
            findings.append(Finding(
                "gradcheck-mismatch", "error", subject, step,
                f"the backward of {name} disagrees with finite differences of its forward: "
                f"{worst['analytic']:.6g} vs {worst['numeric']:.6g} (input {worst['input']}, "
                f"element {worst['element']}, inputs {list(shapes)})",
                {"function": name, "shapes": [list(s) for s in shapes], **worst},
                "Fix the custom backward (check every input's formula, signs, and the chain "
                "rule with grad_output); verify with torch.autograd.gradcheck on float64 inputs.",
            ))
        return findings
