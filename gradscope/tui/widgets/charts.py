"""Right panel, top: charts drawn with plotext (through textual-plotext).

- training: the loss (log scale with `L`, when every value is positive) and the learning rate
  on a second axis; steps with a non-finite loss are `x` markers at the top, steps where a
  finding first fired are vertical lines in its colour, the shown step a dotted line.
- speed: steps per second, and memory (device memory on GPUs, else the process's RSS).
- grad flow: per-layer gradient magnitude (RMS and largest |g|) of the shown step in forward
  order, log scale, with the band within which a layer counts as driven (three decades under
  the strongest layer, the vanishing-grad check's ratio); layers a finding names in red.
- updates: |Δw|/|w| per parameter at the shown step against the update-ratio check's band.

Names and values come from the record: they are cleaned of control characters before
plotext sees them (its output is parsed as ANSI).
"""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from ..state import Series
from ..text import clean

SEVERITY_COLOURS = {"error": "red", "warning": "orange", "info": "cyan"}
UPDATE_BAND = (1e-5, 1e-1)  # the update-ratio check's defaults
VANISHING_RATIO = 1e-3  # the vanishing-grad check's default first/last ratio


def _finite(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _short(name: str, width: int = 10) -> str:
    name = clean(name)
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _g(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


class Chart(PlotextPlot):
    """A plotext plot redrawn from data handed to `show`."""

    def _start(self):
        plt = self.plt
        plt.clear_figure()
        plt.frame(False)
        return plt


class TrainingChart(Chart):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log_scale = False
        self._data = None

    def show(self, series: Series, findings: list[dict], step: int | None) -> None:
        self._data = (series, findings, step)
        self.redraw()

    def redraw(self) -> None:
        if self._data is None:
            return
        series, findings, step = self._data
        plt = self._start()
        xs, loss = _finite(series.steps, series.loss)
        title = [f"loss {_g(loss[-1] if loss else None)}"]
        log = self.log_scale and loss and min(loss) > 0
        if loss:
            plt.plot(xs, loss, label="loss", color="cyan", marker="braille")
        if log:
            plt.yscale("log")
        lx, lr = _finite(series.steps, series.lr)
        if lr:
            plt.plot(lx, lr, label="lr", color="magenta", yside="right", marker="braille")
            title.append(f"lr {_g(lr[-1])}")
        top = max(loss) if loss else 1.0
        if series.nonfinite:
            plt.scatter(series.nonfinite, [top] * len(series.nonfinite), marker="x", color="red",
                        label="NaN/inf")
        for f in findings:
            if f["step"] is not None and f["severity"] in ("error", "warning"):
                plt.vertical_line(f["step"], color=SEVERITY_COLOURS[f["severity"]])
        if step is not None and series.steps and step != series.steps[-1]:
            plt.vertical_line(step, color="white")
        plt.title("  ".join(title) + ("  (log)" if log else ""))
        plt.xlabel("step")
        self.refresh()


class SpeedChart(Chart):
    def show(self, series: Series) -> None:
        plt = self._start()
        xs, speed = _finite(series.steps, series.speed)
        mx, memory = _finite(series.steps, series.memory)
        title = []
        if speed:
            plt.plot(xs, speed, label="steps/s", color="green", marker="braille")
            recent = speed[-20:]
            title.append(f"{sum(recent) / len(recent):.3g} steps/s")
        if memory:
            plt.plot(mx, memory, label=series.memory_label, color="yellow", yside="right", marker="braille")
            title.append(f"{series.memory_label} {memory[-1]:.0f}")
        else:
            title.append("memory not recorded")
        plt.title("  ".join(title))
        plt.xlabel("step")
        self.refresh()


class GradFlowChart(Chart):
    def show(self, layers: list[tuple[str, float, float]], named: dict[str, str], step: int | None) -> None:
        plt = self._start()
        layers = [(n, r, m) for n, r, m in layers if math.isfinite(r) and math.isfinite(m) and m > 0]
        if not layers:
            plt.title("no parameter gradients at this step")
            self.refresh()
            return
        xs = list(range(1, len(layers) + 1))
        floor = min(min(r for _, r, _ in layers if r > 0) if any(r > 0 for _, r, _ in layers) else 1e-12, 1e-12)
        plt.yscale("log")
        plt.plot(xs, [max(m, floor) for _, _, m in layers], label="max |g|", color="cyan", marker="braille")
        plt.plot(xs, [max(r, floor) for _, r, _ in layers], label="rms g", color="blue", marker="braille")
        strongest = max(r for _, r, _ in layers)
        plt.horizontal_line(strongest * VANISHING_RATIO, color="gray")
        flagged = [(x, r) for x, (n, r, _) in zip(xs, layers) if n in named]
        if flagged:
            plt.scatter([x for x, _ in flagged], [max(r, floor) for _, r in flagged], marker="x", color="red",
                        label="finding")
        every = max(1, math.ceil(len(layers) / max(1, self.size.width // 12)))
        ticks = xs[::every]
        plt.xticks(ticks, [_short(layers[x - 1][0]) for x in ticks])
        plt.title(f"gradient per layer, step {step}  (line: 1e-3 of the strongest)")
        self.refresh()


class UpdatesChart(Chart):
    def show(self, ratios: list[tuple[str, float]], named: dict[str, str], step: int | None) -> None:
        plt = self._start()
        ratios = [(n, r) for n, r in ratios if math.isfinite(r) and r > 0]
        if not ratios:
            plt.title("no optimizer updates at this step")
            self.refresh()
            return
        xs = list(range(1, len(ratios) + 1))
        plt.yscale("log")
        plt.scatter(xs, [r for _, r in ratios], label="|Δw|/|w|", color="cyan")
        low, high = UPDATE_BAND
        plt.horizontal_line(low, color="gray")
        plt.horizontal_line(high, color="gray")
        outside = [(x, r) for x, (n, r) in zip(xs, ratios) if not low <= r <= high or n in named]
        if outside:
            plt.scatter([x for x, _ in outside], [r for _, r in outside], marker="x", color="red")
        every = max(1, math.ceil(len(ratios) / max(1, self.size.width // 12)))
        ticks = xs[::every]
        plt.xticks(ticks, [_short(ratios[x - 1][0]) for x in ticks])
        plt.title(f"update/weight per parameter, step {step}  (band {low:g}..{high:g})")
        self.refresh()
