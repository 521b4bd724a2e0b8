"""dead-relu and saturation: activation units stuck at zero or in flat tails.

dead-relu (DeepDiagnosis): a ReLU with at least `fraction` (0.7) of its units dead — zero
for every sample of the batch — for `patience` (3) steps in a row. Module ReLUs are judged on
their output's channels (dim 1); a functional ``F.relu`` is found in the autograd graph and
judged on the units of the Linear (last dim) or convolution (dim 1) layer feeding it that never
rise above zero.

saturation: a Sigmoid or Tanh module with more than `fraction` (0.5) of its inputs at
``abs >= 5`` (counted on its outputs, beyond sigmoid(±5) and tanh(±5)), `patience` steps. A
Sigmoid whose output feeds a probability loss (``BCELoss``, through view-like ops) is left
alone: confident, correct predictions sit in its tails, and the loss's gradient does not pass
through the flat sigmoid derivative alone.
"""

from __future__ import annotations

import math

import gradscope
from gradscope import DeadUnits, Finding, TailCount

from ._util import Streak, fed_by, finite

RELU_TYPES = ("ReLU", "ReLU6")
FEEDS_RELU_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Bilinear")
RELU_OPS = ("ReluBackward0", "ReluBackward1", "ThresholdBackward0")
DEAD = (
    DeadUnits("dead-units", ("ReLU", "ReLU6", "Conv1d", "Conv2d", "Conv3d"), 1),
    DeadUnits("dead-features", ("Linear", "Bilinear"), -1),
)


class DeadRelu:
    def __init__(self):
        self._streak = Streak()
        self._feeds_relu: set[str] = set()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.fraction = config.get("dead-relu", "fraction", 0.7)
        self.patience = config.get("dead-relu", "patience", 3)

    @gradscope.hookimpl
    def gradscope_statistics(self):
        return list(DEAD)

    @gradscope.hookimpl
    def gradscope_graph(self, graph, run):
        for node, data in graph.nodes(data=True):
            if data["op"] in RELU_OPS and run.modules.get(data.get("scope"), {}).get("type") not in RELU_TYPES:
                for child in graph.successors(node):
                    scope = graph.nodes[child].get("scope")
                    if scope and run.modules.get(scope, {}).get("type") in FEEDS_RELU_TYPES:
                        self._feeds_relu.add(scope)

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not finite(step):
            return None
        shares: dict[str, tuple[float, str]] = {}
        names = {d.name for d in DEAD}
        for (module, call, name), (count, total) in step.tails.items():
            if name not in names or call != 0 or not total:
                continue
            if run.modules.get(module, {}).get("type") in RELU_TYPES:
                shares[module] = (count / total, "module")
            elif module in self._feeds_relu:
                shares[module] = (count / total, "functional")
        findings = []
        for module, (share, how) in shares.items():
            if self._streak.update(module, share >= self.fraction) < self.patience:
                continue
            where = module if how == "module" else f"the ReLU applied to {module}'s output"
            findings.append(Finding(
                "dead-relu", "warning", module, step.step,
                f"{where}: {share:.0%} of its units are zero for the whole batch (limit "
                f"{self.fraction:.0%}) for {self.patience} steps",
                {"dead_fraction": share, "via": how},
                "Units that never fire never learn: lower the learning rate, check the bias "
                "initialisation of the layer before it, or use LeakyReLU/GELU.",
            ))
        return findings


SIGMOID_TAIL = 1 / (1 + math.exp(5))
SATURATED = (
    TailCount("saturated-tanh", ("Tanh",), -math.tanh(5), math.tanh(5)),
    TailCount("saturated-sigmoid", ("Sigmoid",), SIGMOID_TAIL, 1 - SIGMOID_TAIL),
)
PROBABILITY_LOSSES = ("BinaryCrossEntropyBackward0",)


class Saturation:
    def __init__(self):
        self._streak = Streak()
        self._feeds_loss: set[str] = set()  # Sigmoid modules whose output is a probability loss's input

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.fraction = config.get("saturation", "fraction", 0.5)
        self.patience = config.get("saturation", "patience", 3)

    @gradscope.hookimpl
    def gradscope_statistics(self):
        return list(SATURATED)

    @gradscope.hookimpl
    def gradscope_graph(self, graph):
        for node, data in graph.nodes(data=True):
            if data["op"] in PROBABILITY_LOSSES:
                for sigmoid in fed_by(graph, node, "SigmoidBackward0"):
                    if graph.nodes[sigmoid].get("scope"):
                        self._feeds_loss.add(graph.nodes[sigmoid]["scope"])

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if not finite(step):
            return None
        findings = []
        names = {t.name for t in SATURATED}
        for (module, call, name), (count, total) in step.tails.items():
            if name not in names or call != 0 or not total or module in self._feeds_loss:
                continue
            share = count / total
            if self._streak.update(module, share > self.fraction) < self.patience:
                continue
            findings.append(Finding(
                "saturation", "warning", module, step.step,
                f"{module}: {share:.0%} of its inputs sit in the flat tails (|x| >= 5), where its "
                f"gradient is almost zero (limit {self.fraction:.0%})",
                {"saturated_fraction": share, "count": count, "total": total},
                "Normalise the layer's input (BatchNorm/LayerNorm), lower the learning rate, "
                "scale down the initialisation, or use a non-saturating activation.",
            ))
        return findings
