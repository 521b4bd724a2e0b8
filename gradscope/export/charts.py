"""Charts of a record: gradient flow per layer, and loss and learning rate over the steps.

A chart is first a `Scene` of a few primitives (lines, boxes, text, markers) in pixel
coordinates, then written either as plain SVG (no dependency at all) or, for png and pdf, as a
Graphviz graph of pinned points (``neato -n2``), so no plotting library is needed.

- grad-flow: for each parameter in forward order (the order its module's calls finished), the
  gradient's root mean square (its typical magnitude) and its largest magnitude on a log axis;
  over a range of steps the root mean square becomes a band from its smallest to its largest
  value, with the median as a line. Parameters with findings are marked in the colour of their
  worst severity; non-finite gradients get a cross.
- loss: the recorded loss and each optimizer group's learning rate (right axis) per step,
  findings as vertical bands over the steps they cover, non-finite losses as crosses.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from statistics import median

import graphviz

from ..curves import one_per_place, thinned
from ..errors import GradscopeError
from ..findings import severity_rank
from ..record.reader import Record
from .render import FINDING_COLOURS, pipe

CHARTS = ("grad-flow", "loss")
_LEFT, _RIGHT, _TOP = 70, 70, 50
_PLOT_H = 300
_BLUE, _ORANGE, _GREEN, _GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#999999"


@dataclass
class Scene:
    width: float
    height: float
    title: str
    items: list[tuple] = field(default_factory=list)

    def line(self, points, colour, width=1.5, dash=False, tip=""):
        if len(points) >= 2:
            self.items.append(("line", points, colour, width, dash, tip))

    def box(self, x, y, w, h, fill, tip=""):
        self.items.append(("box", x, y, w, max(h, 1), fill, tip))

    def text(self, x, y, text, size=11, anchor="middle", colour="#222222", rotate=0):
        self.items.append(("text", x, y, text, size, anchor, colour, rotate))

    def mark(self, x, y, shape, colour, tip=""):
        self.items.append(("mark", x, y, shape, colour, tip))


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def to_svg(scene: Scene) -> bytes:
    """The scene as a standalone SVG document."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width:.0f}" height="{scene.height:.0f}" '
           f'viewBox="0 0 {scene.width:.0f} {scene.height:.0f}" font-family="Helvetica, Arial, sans-serif">',
           f"<title>{_e(scene.title)}</title>",
           '<rect width="100%" height="100%" fill="white"/>']
    for item in scene.items:
        kind = item[0]
        if kind == "line":
            _, points, colour, width, dash, tip = item
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="{width}"'
                       + (' stroke-dasharray="4 3"' if dash else "") + (f"><title>{_e(tip)}</title></polyline>" if tip else "/>"))
        elif kind == "box":
            _, x, y, w, h, fill, tip = item
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"'
                       + (f"><title>{_e(tip)}</title></rect>" if tip else "/>"))
        elif kind == "text":
            _, x, y, text, size, anchor, colour, rotate = item
            turn = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                       f'fill="{colour}"{turn}>{_e(text)}</text>')
        else:
            _, x, y, shape, colour, tip = item
            title = f"<title>{_e(tip)}</title>" if tip else ""
            if shape == "cross":
                out.append(f'<g stroke="{colour}" stroke-width="2.5"><path d="M{x - 5:.1f},{y - 5:.1f} '
                           f'L{x + 5:.1f},{y + 5:.1f} M{x - 5:.1f},{y + 5:.1f} L{x + 5:.1f},{y - 5:.1f}"/>{title}</g>')
            elif shape == "triangle":
                out.append(f'<path d="M{x:.1f},{y + 6:.1f} L{x - 6:.1f},{y - 5:.1f} L{x + 6:.1f},{y - 5:.1f} Z" '
                           f'fill="{colour}">{title}</path>')
            else:
                fill = "white" if shape == "ring" else colour
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{colour}">{title}</circle>')
    out.append("</svg>\n")
    return "\n".join(out).encode("utf-8")


def to_digraph(scene: Scene) -> graphviz.Graph:
    """The scene as a Graphviz graph of pinned nodes, for ``neato -n2`` (y grows upwards there)."""
    g = graphviz.Graph("chart", engine="neato", graph_attr={
        "bb": f"0,0,{scene.width:.0f},{scene.height:.0f}", "splines": "line", "outputorder": "edgesfirst",
        "bgcolor": "white", "pad": "0.1"},
        node_attr={"fontname": "Helvetica", "label": "", "shape": "none", "width": "0", "height": "0",
                   "margin": "0"})
    counter = iter(range(10_000_000))
    turned = iter(range(10_000_000))  # rotated labels (no rotation here): staggered in rows instead

    def at(x, y):
        return f"{x:.1f},{scene.height - y:.1f}!"

    def point(x, y):
        name = f"p{next(counter)}"
        g.node(name, pos=at(x, y))
        return name

    for item in scene.items:
        kind = item[0]
        if kind == "line":
            _, points, colour, width, dash, _ = item
            names = [point(x, y) for x, y in points]
            for a, b in zip(names, names[1:]):
                g.edge(a, b, color=colour, penwidth=str(width), style="dashed" if dash else "solid")
        elif kind == "box":
            _, x, y, w, h, fill, _ = item
            g.node(f"b{next(counter)}", pos=at(x + w / 2, y + h / 2), shape="box", style="filled",
                   fillcolor=fill, color=fill, fixedsize="true", width=f"{w / 72:.3f}", height=f"{h / 72:.3f}")
        elif kind == "text":
            _, x, y, text, size, anchor, colour, rotate = item
            if rotate:
                text = str(text) if len(str(text)) <= 10 else str(text)[:9] + "…"
                x, y, anchor = x - 3, y + 2 + 12 * (next(turned) % 3), "middle"
            shift = {"start": 1, "end": -1}.get(anchor, 0) * 0.28 * size * len(str(text))
            g.node(f"t{next(counter)}", pos=at(x + shift, y - size * 0.35), label=text, fontsize=str(size),
                   fontcolor=colour, shape="plaintext")
        else:
            _, x, y, shape, colour, _ = item
            if shape == "cross":
                g.node(f"m{next(counter)}", pos=at(x, y), label="×", fontsize="16", fontcolor=colour, shape="plaintext")
            else:
                g.node(f"m{next(counter)}", pos=at(x, y), shape="triangle" if shape == "triangle" else "circle",
                       style="filled", fillcolor="white" if shape == "ring" else colour, color=colour,
                       fixedsize="true", width="0.1", height="0.1")
    return g


def render_chart(scene: Scene, fmt: str) -> bytes:
    if fmt == "svg":
        return to_svg(scene)
    g = to_digraph(scene)
    if fmt == "dot":
        return g.source.encode("utf-8")
    return pipe(g, fmt, neato_no_op=2, failed="Graphviz failed",
                missing=f"rendering a {fmt} chart needs Graphviz (apt-get install graphviz, brew install graphviz, "
                "conda install graphviz), or write svg, which needs nothing")


# -- axes ------------------------------------------------------------------------------------
class _Axis:
    """Maps values to pixels between `top` and `bottom`, linear or log10."""

    def __init__(self, values, top, bottom, log):
        finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        self.log = log and bool(finite)
        if self.log:
            self.low = 10 ** math.floor(math.log10(min(finite)))
            self.high = 10 ** math.ceil(math.log10(max(finite)))
            if self.high <= self.low:
                self.high = self.low * 10
        else:
            self.low, self.high = (min(finite), max(finite)) if finite else (0.0, 1.0)
            if self.high <= self.low:  # one value: centre it
                pad = abs(self.low) / 2 or 0.5
                self.low, self.high = self.low - pad, self.high + pad
        self.top, self.bottom = top, bottom

    def __call__(self, v: float) -> float:
        if self.log:
            v = min(max(v, self.low), self.high)
            t = (math.log10(v) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        else:
            t = (v - self.low) / (self.high - self.low)
        return self.bottom - t * (self.bottom - self.top)

    def ticks(self) -> list[float]:
        if self.log:
            lo, hi = round(math.log10(self.low)), round(math.log10(self.high))
            step = max(1, (hi - lo) // 6)
            return [10.0 ** e for e in range(lo, hi + 1, step)]
        return [self.low + (self.high - self.low) * i / 4 for i in range(5)]


def _draw_axis(scene: Scene, axis: _Axis, x: float, side: str, colour: str, name: str, width: float):
    anchor, dx = ("end", -6) if side == "left" else ("start", 6)
    for t in axis.ticks():
        y = axis(t)
        if side == "left":
            scene.line([(x, y), (x + width, y)], "#eeeeee", 1)
        scene.text(x + dx, y + 4, f"{t:.0e}" if axis.log else f"{t:.3g}", 10, anchor, colour)
    scene.line([(x, axis.top), (x, axis.bottom)], colour, 1)
    scene.text(x, axis.top - 12, name, 11, "end" if side == "left" else "start", colour)


def _worst(findings: list[dict]) -> str:
    return min((f["severity"] for f in findings), key=severity_rank)


def _legend(scene: Scene, x: float, y: float, entries: list[tuple[str, str]]):
    for colour, text in entries:
        scene.line([(x, y - 4), (x + 18, y - 4)], colour, 3)
        scene.text(x + 22, y, text, 10, "start")
        x += 30 + 6.5 * len(text)


# -- grad-flow -------------------------------------------------------------------------------
def _forward_order(record: Record, step: int) -> list[str]:
    """Parameters in the order their modules' calls finished in `step` (for a light step, which
    records its root call only, in the last step that described every call)."""
    params = record.parameters()
    finished = {}
    for i, c in enumerate(record.calls_as_of(step)):
        finished.setdefault(c["module"], i)
    registered = {p["name"]: i for i, p in enumerate(params)}
    module = {p["name"]: p.get("module") for p in params}
    return sorted(registered, key=lambda n: (finished.get(module[n], math.inf), registered[n]))


def _steps(record: Record, steps: tuple[int, int] | None, step: int | None) -> list[int]:
    have = sorted(set(record.step_numbers()))
    if not have:
        raise GradscopeError(f"{record.path}: no steps recorded, nothing to chart")
    if steps is not None:
        chosen = [s for s in have if steps[0] <= s <= steps[1]]
        if not chosen:
            raise GradscopeError(f"{record.path}: no steps in {steps[0]}:{steps[1]} (steps {have[0]}..{have[-1]})")
        return chosen
    if step is not None and step not in have:
        raise GradscopeError(f"{record.path}: no step {step} (steps {have[0]}..{have[-1]})")
    return [have[-1] if step is None else step]


def grad_flow(record: Record, *, step: int | None = None, steps: tuple[int, int] | None = None,
              title: str = "") -> Scene:
    chosen = _steps(record, steps, step)
    per: dict[str, list] = {}
    for s in chosen:
        for stat in record.stats(step=s, kind="grad"):
            if stat.call == 0 and stat.path == "" and stat.count:
                per.setdefault(stat.subject, []).append(stat)
    if not per:
        raise GradscopeError(f"{record.path}: no gradients recorded in step {chosen[0]}"
                             + (f"..{chosen[-1]}" if len(chosen) > 1 else ""))
    layers = [n for n in _forward_order(record, chosen[-1]) if n in per]
    findings: dict[str, list[dict]] = {}
    for f in record.findings():
        first, last = f.get("step"), f.get("last_step") or f.get("step")
        if first is not None and (last < chosen[0] or first > chosen[-1]):
            continue
        for name in layers:
            if f["subject"] == name or name.startswith(f["subject"] + "."):
                findings.setdefault(name, []).append(f)
    rms = {n: [s.norm / math.sqrt(s.count) for s in per[n]] for n in layers}
    peak = {n: [max(abs(s.min), abs(s.max)) for s in per[n]] for n in layers}
    label_room = min(9 * max(len(n) for n in layers), 160)
    col = max(18.0, min(40.0, 900 / len(layers)))
    width = _LEFT + col * len(layers) + _RIGHT
    height = _TOP + _PLOT_H + label_room + 30
    span = f"step {chosen[0]}" if len(chosen) == 1 else f"steps {chosen[0]}..{chosen[-1]} ({len(chosen)} recorded)"
    scene = Scene(max(width, 420), height, f"{title}gradient flow, {span}")
    scene.text(scene.width / 2, 20, scene.title, 14)
    values = [v for n in layers for v in rms[n] + peak[n]]
    axis = _Axis(values, _TOP, _TOP + _PLOT_H, log=True)
    _draw_axis(scene, axis, _LEFT, "left", "#222222", "|grad|", col * len(layers))
    xs = {n: _LEFT + col * (i + 0.5) for i, n in enumerate(layers)}
    for n in layers:
        x = xs[n]
        finite = [v for v in rms[n] if math.isfinite(v)]
        if len(chosen) > 1 and finite:
            scene.box(x - col * 0.3, axis(max(finite)), col * 0.6, axis(min(finite)) - axis(max(finite)), "#c6dbef",
                      f"{n}: rms {min(finite):.3g}..{max(finite):.3g}")
        bad = any(s.nonfinite for s in per[n]) or len(finite) < len(rms[n])
        if bad:
            scene.mark(x, axis.top - 4, "cross", FINDING_COLOURS["error"], f"{n}: non-finite gradient")
        colour = "#222222"
        if finding := findings.get(n):
            colour = FINDING_COLOURS.get(_worst(finding), _GREY)
            scene.mark(x, axis.top - 18, "triangle", colour,
                       "; ".join(sorted({f"{f['severity']}: {f['check']}" for f in finding})))
        scene.text(x + 3, axis.bottom + 12, n, 10, "end", colour, rotate=-60)
    mid = [(xs[n], axis(median(v))) for n in layers if (v := [x for x in rms[n] if math.isfinite(x) and x > 0])]
    top = [(xs[n], axis(max(v))) for n in layers if (v := [x for x in peak[n] if math.isfinite(x) and x > 0])]
    scene.line(top, _ORANGE, 1.5, dash=True)
    scene.line(mid, _BLUE, 2)
    for x, y in top:
        scene.mark(x, y, "ring", _ORANGE)
    for x, y in mid:
        scene.mark(x, y, "dot", _BLUE)
    for n in layers:  # zero gradients sit on the axis floor
        if all(v == 0 for v in rms[n]):
            scene.mark(xs[n], axis.bottom, "ring", _BLUE, f"{n}: gradient is zero")
    entries = [(_BLUE, "rms |grad|" + (" (median; band: range)" if len(chosen) > 1 else "")), (_ORANGE, "max |grad|")]
    _legend(scene, _LEFT, scene.height - 10, entries)
    return scene


# -- loss ------------------------------------------------------------------------------------
def _columns(pairs: list[tuple[int, float]], plot_w: float, xmap, ymap) -> tuple[list, list]:
    """The chart's x and y of the (step, value) `pairs` of a curve, thinned to about two points
    a pixel column (`curves.thinned`)."""
    if not pairs:
        return [], []
    xs, ys = thinned(*map(list, zip(*pairs)), int(plot_w))
    return list(map(xmap, xs)), list(map(ymap, ys))


def loss_chart(record: Record, *, steps: tuple[int, int] | None = None, title: str = "") -> Scene:
    rows = record.steps()
    if steps is not None:
        rows = [r for r in rows if steps[0] <= r["step"] <= steps[1]]
    if not rows:
        raise GradscopeError(f"{record.path}: no steps recorded" + (" in that range" if steps else "") + ", nothing to chart")
    wanted = {r["step"] for r in rows}
    loss = {s: stat for s, stat in record.stat_series("loss", "loss") if s in wanted}
    lrs: dict[str, dict[int, float]] = {}
    for r in rows:
        for opt, groups in sorted(r["lrs"].items()):
            for g, lr in enumerate(groups[:4]):
                if isinstance(lr, (int, float)):
                    lrs.setdefault(f"{opt} group {g}" if len(groups) > 1 else opt, {})[r["step"]] = float(lr)
    first, last = rows[0]["step"], rows[-1]["step"]
    width = _LEFT + max(480, min(1200, 6 * (last - first + 1))) + _RIGHT
    scene = Scene(width, _TOP + _PLOT_H + 70, f"{title}loss and learning rate, steps {first}..{last}")
    scene.text(width / 2, 20, scene.title, 14)
    plot_w = width - _LEFT - _RIGHT
    xmap = lambda s: _LEFT + (plot_w * (s - first) / (last - first) if last > first else plot_w / 2)
    values = [st.mean for st in loss.values() if math.isfinite(st.mean)]
    positive = bool(values) and min(values) > 0
    y = _Axis(values, _TOP, _TOP + _PLOT_H, log=positive and max(values) / min(values) > 100)
    _draw_axis(scene, y, _LEFT, "left", _BLUE, "loss", plot_w)
    for f in record.findings():
        if f.get("step") is None:
            continue
        until = f.get("last_step") or f["step"]
        if f["step"] > last or until < first:
            continue
        a, b = xmap(max(f["step"], first)), xmap(min(until, last))
        colour = FINDING_COLOURS.get(f["severity"], _GREY)
        scene.box(a - 1.5, _TOP, max(b - a, 0) + 3, _PLOT_H, colour + "40",
                  f"steps {f['step']}..{until}: {f['severity']}: {f['check']}: {f['message']}")
        scene.mark(a, _TOP - 4, "triangle", colour, f"{f['severity']}: {f['check']} at step {f['step']}")
    lr_values = [v for series in lrs.values() for v in series.values()]
    if lr_values:
        lr_pos = min(lr_values) > 0
        lr_axis = _Axis(lr_values, _TOP, _TOP + _PLOT_H, log=lr_pos and max(lr_values) / min(lr_values) > 10)
        _draw_axis(scene, lr_axis, width - _RIGHT, "right", _GREEN, "lr", 0)
        for i, series in enumerate(lrs.values()):
            line = list(zip(*_columns(sorted(series.items()), plot_w, xmap, lr_axis)))
            scene.line(line, _GREEN, 1.5, dash=i > 0)
            if len(line) <= 60:
                for px, py in line:
                    scene.mark(px, py, "ring", _GREEN)
    bad = {s for s, st in loss.items() if not math.isfinite(st.mean) or st.nonfinite}
    points = list(zip(*_columns([(s, st.mean) for s, st in sorted(loss.items()) if s not in bad], plot_w, xmap, y)))
    scene.line(points, _BLUE, 2)
    if len(points) <= 60:
        for px, py in points:
            scene.mark(px, py, "dot", _BLUE)
    for s in one_per_place(sorted(bad), int(plot_w)):
        scene.mark(xmap(s), y.bottom - 6, "cross", FINDING_COLOURS["error"], f"step {s}: non-finite loss")
    for t in sorted({first, last, *range(first, last + 1, max(1, (last - first) // 8 or 1))}):
        scene.text(xmap(t), y.bottom + 16, str(t), 10)
    scene.text(_LEFT + plot_w / 2, y.bottom + 32, "step", 11)
    entries = [(_BLUE, "loss")] + ([(_GREEN, "learning rate")] if lr_values else [])
    entries += [(FINDING_COLOURS["error"], "non-finite loss")] if bad else []
    _legend(scene, _LEFT, scene.height - 8, entries)
    if not loss:
        scene.text(_LEFT + plot_w / 2, _TOP + _PLOT_H / 2, "no loss recorded", 12, colour=_GREY)
    return scene
