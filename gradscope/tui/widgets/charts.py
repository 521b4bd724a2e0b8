"""Right panel, top: charts drawn with plotext (through textual-plotext).

- training: the loss (log scale with `L`, when every value is positive) and the learning rate
  on a second axis; steps with a non-finite loss are `x` markers at the top, steps where a
  finding first fired are vertical lines in its colour, the shown step a dotted line.
- speed: steps per second, and memory (device memory on GPUs, else the process's RSS).
- grad flow: per-layer gradient magnitude (RMS and largest |g|) of the shown step in forward
  order, in decades, with the line under which a layer counts as starved (three decades under
  the strongest layer, the vanishing-grad check's ratio); layers a finding names marked red.
- updates: |Δw|/|w| per parameter at the shown step against the update-ratio check's band.

Names and values come from the record: they are cleaned of control characters before
plotext sees them (its output is parsed as ANSI).
"""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from ...curves import one_per_place, thinned
from ..state import Series
from ..text import clean, literal

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
    """A plotext plot of the data last handed to `show`, drawn at render time (when its size,
    which decides how many labels fit, is known)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._data: tuple | None = None

    def show(self, *data) -> None:
        self._data = data
        self.refresh()

    def render(self):
        plt = self.plt
        plt.clear_figure()
        plt.frame(False)
        if self._data is not None:
            try:
                self.draw(plt, *self._data)
            except Exception as exc:  # odd values must not take the UI down with the chart
                plt.clear_figure()
                plt.title(clean(f"chart unavailable: {type(exc).__name__}: {exc}"))
        try:
            return super().render()
        except Exception as exc:
            return literal(f"chart unavailable: {type(exc).__name__}: {exc}")

    def draw(self, plt, *data) -> None:
        raise NotImplementedError

    @property
    def columns(self) -> int:
        """How many places along x the chart can show apart."""
        return max(self.size.width, 40)

    def plot(self, plt, xs: list, ys: list, **style) -> None:
        """Draw a line of finite points, thinned to what this chart's width can show."""
        plt.plot(*thinned(xs, ys, self.columns), marker="braille", **style)


class TrainingChart(Chart):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log_scale = False

    def draw(self, plt, series: Series, findings: list[dict], step: int | None) -> None:
        xs, loss = _finite(series.steps, series.loss)
        title = [f"loss {_g(loss[-1] if loss else None)}"]
        log = self.log_scale and loss and min(loss) > 0
        if loss:
            self.plot(plt, xs, loss, label="loss", color="cyan")
        if log:
            plt.yscale("log")
        lx, lr = _finite(series.steps, series.lr)
        if lr:
            self.plot(plt, lx, lr, label="lr", color="magenta", yside="right")
            title.append(f"lr {_g(lr[-1])}")
        top = max(loss) if loss else 1.0
        if series.nonfinite:
            marked = one_per_place(series.nonfinite, self.columns)
            plt.scatter(marked, [top] * len(marked), marker="x", color="red", label="NaN/inf")
        for f in findings:
            if f["step"] is not None and f["severity"] in ("error", "warning"):
                plt.vertical_line(f["step"], color=SEVERITY_COLOURS[f["severity"]])
        if step is not None and series.steps and step != series.steps[-1]:
            plt.vertical_line(step, color="white")
        plt.title("  ".join(title) + ("  (log)" if log else ""))
        plt.xlabel("step")


class SpeedChart(Chart):
    def draw(self, plt, series: Series) -> None:
        xs, speed = _finite(series.steps, series.speed)
        mx, memory = _finite(series.steps, series.memory)
        title = []
        if speed:
            self.plot(plt, xs, speed, label="steps/s", color="green")
            recent = speed[-20:]
            title.append(f"{sum(recent) / len(recent):.3g} steps/s")
        if memory:
            self.plot(plt, mx, memory, label=series.memory_label, color="yellow", yside="right")
            title.append(f"{series.memory_label} {memory[-1]:.0f}")
        else:
            title.append("memory not recorded")
        plt.title("  ".join(title))
        plt.xlabel("step")


class GradFlowChart(Chart):
    """Bars per layer on decades (plotext cannot draw bars on a log axis: heights are log10
    values above the lowest decade, and the ticks name the decades)."""

    def draw(self, plt, layers: list[tuple[str, float, float]], named: dict[str, str], step: int | None) -> None:
        layers = [(n, r, m) for n, r, m in layers if math.isfinite(r) and math.isfinite(m) and r > 0 and m > 0]
        if not layers:
            plt.title("no parameter gradients at this step")
            return
        strongest = max(r for _, r, _ in layers)
        band = strongest * VANISHING_RATIO
        low = math.floor(math.log10(min(min(r for _, r, _ in layers), band)))
        high = math.ceil(math.log10(max(m for _, _, m in layers)))
        height = lambda v: math.log10(v) - low + 0.2
        xs = list(range(1, len(layers) + 1))
        plt.multiple_bar(xs, [[height(m) for _, _, m in layers], [height(r) for _, r, _ in layers]],
                         labels=["max |g|", "rms g"], color=["cyan", "blue"])
        plt.yticks([height(10 ** k) for k in range(low, high + 1)], [f"1e{k}" for k in range(low, high + 1)])
        plt.horizontal_line(height(band), color="gray")
        flagged = [(x, r) for x, (n, r, _) in zip(xs, layers) if n in named]
        if flagged:
            plt.scatter([x for x, _ in flagged], [height(r) + 0.3 for _, r in flagged], marker="x", color="red",
                        label="finding")
        every = max(1, math.ceil(len(layers) / max(1, self.size.width // 12)))
        ticks = xs[::every]
        plt.xticks(ticks, [_short(layers[x - 1][0]) for x in ticks])
        plt.title(f"gradient per layer, step {step}  (gray: 1e-3 of the strongest)")


class UpdatesChart(Chart):
    def draw(self, plt, ratios: list[tuple[str, float]], named: dict[str, str], step: int | None) -> None:
        ratios = [(n, r) for n, r in ratios if math.isfinite(r) and r > 0]
        if not ratios:
            plt.title("no optimizer updates at this step")
            return
        xs = list(range(1, len(ratios) + 1))
        plt.yscale("log")
        plt.scatter(xs, [r for _, r in ratios], label="|Δw|/|w|", color="cyan")
        low, high = UPDATE_BAND
        bottom = math.floor(math.log10(min(low, min(r for _, r in ratios))))
        top = math.ceil(math.log10(max(high, max(r for _, r in ratios))))
        plt.yticks([10 ** k for k in range(bottom, top + 1)], [f"1e{k}" for k in range(bottom, top + 1)])
        plt.horizontal_line(low, color="gray")
        plt.horizontal_line(high, color="gray")
        outside = [(x, r) for x, (n, r) in zip(xs, ratios) if not low <= r <= high or n in named]
        if outside:
            plt.scatter([x for x, _ in outside], [r for _, r in outside], marker="x", color="red")
        every = max(1, math.ceil(len(ratios) / max(1, self.size.width // 12)))
        ticks = xs[::every]
        plt.xticks(ticks, [_short(ratios[x - 1][0]) for x in ticks])
        plt.title(f"update/weight per parameter, step {step}  (band {low:g}..{high:g})")
