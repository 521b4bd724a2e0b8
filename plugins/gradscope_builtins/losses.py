"""Loss wiring read from the autograd graph.

- loss-broadcast: a loss op (MSE, L1, smooth L1, Huber, BCE...) whose input was broadcast
  (an ``ExpandBackward0`` between the loss and its input): ``MSELoss`` on [B, 1] vs [B]
  compares every prediction with every target.
- softmax-before-ce: cross-entropy fed with softmax probabilities (``NllLossBackward0 <-
  LogSoftmaxBackward0 <- SoftmaxBackward0``), or BCE-with-logits fed with sigmoid outputs,
  looking through view-like ops in between (``softmax -> view(-1, C) -> cross_entropy``,
  ``sigmoid -> squeeze(1) -> binary_cross_entropy_with_logits``).
"""

from __future__ import annotations

import gradscope
from gradscope import Finding

from ._util import children, fed_by

LOSS_OPS = {
    "MseLossBackward0", "L1LossBackward0", "SmoothL1LossBackward0", "HuberLossBackward0",
    "BinaryCrossEntropyBackward0", "SoftMarginLossBackward0",
}


def _where(graph, node) -> str:
    scope = graph.nodes[node].get("scope")
    return scope if scope else graph.nodes[node]["op"]


class LossBroadcast:
    @gradscope.hookimpl
    def gradscope_graph(self, step, graph):
        findings = []
        for node, data in graph.nodes(data=True):
            if data["op"] not in LOSS_OPS:
                continue
            expanded = [c for c in children(graph, node) if graph.nodes[c]["op"] == "ExpandBackward0"]
            if not expanded:
                continue
            saved = data.get("saved", {})
            shapes = {k: v["shape"] for k, v in saved.items() if isinstance(v, dict) and "shape" in v}
            original = [graph.nodes[c].get("saved", {}).get("self_sym_sizes") for c in expanded]
            findings.append(Finding(
                "loss-broadcast", "error", _where(graph, node), step,
                f"{data['op']} compares tensors of different shapes {original} broadcast to "
                f"{next(iter(shapes.values()), '?')}: every prediction is compared with every target",
                {"op": data["op"], "broadcast_to": shapes, "original_shapes": original},
                "Make prediction and target the same shape before the loss, e.g. "
                "pred.squeeze(-1) or target.unsqueeze(-1).",
            ))
        return findings


class SoftmaxBeforeCE:
    @gradscope.hookimpl
    def gradscope_graph(self, step, graph):
        findings = []
        for node, data in graph.nodes(data=True):
            if data["op"] == "NllLossBackward0":
                for log in fed_by(graph, node, "LogSoftmaxBackward0"):
                    for prob in fed_by(graph, log, "SoftmaxBackward0"):
                        findings.append(self._finding(step, graph, prob, "cross_entropy", "softmax"))
            elif data["op"] == "BinaryCrossEntropyWithLogitsBackward0":
                for prob in fed_by(graph, node, "SigmoidBackward0"):
                    findings.append(self._finding(step, graph, prob, "binary_cross_entropy_with_logits", "sigmoid"))
        return findings

    def _finding(self, step, graph, node, loss, squash):
        return Finding(
            "softmax-before-ce", "error", _where(graph, node), step,
            f"{loss} gets {squash} probabilities, but it expects logits: it applies "
            f"{'log_softmax' if squash == 'softmax' else 'sigmoid'} itself, so gradients shrink "
            f"and training stalls",
            {"op": graph.nodes[node]["op"], "loss": loss},
            f"Remove the {squash} before the loss and feed it the raw scores (apply {squash} "
            f"only for predictions).",
        )
