"""loss-spike: the loss jumps above `factor` (10) times its median over the last `window` (20) steps."""

import statistics
from collections import deque

import gradscope


class LossSpike:
    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.factor = config.get("loss-spike", "factor", 10.0)
        self.recent = deque(maxlen=config.get("loss-spike", "window", 20))

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        loss = step.stat("loss", "loss")
        if loss is None:
            return None
        usual = statistics.median(self.recent) if len(self.recent) >= 3 else None
        self.recent.append(loss.mean)
        if usual is None or loss.mean <= self.factor * usual:
            return None
        return [gradscope.Finding(
            "loss-spike", "warning", "loss", step.step,
            f"the loss jumped to {loss.mean:.4g}, {loss.mean / usual:.1f}x its recent median {usual:.4g}",
            {"loss": loss.mean, "median": usual}, "Look at this step's batch, or lower the learning rate.",
        )]
