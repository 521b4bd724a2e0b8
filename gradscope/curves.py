"""Long curves drawn at the resolution of their chart: a run of 100,000 steps has 100,000
points per curve, and a chart a few hundred columns. Drawing every point was slow in the
terminal UI (plotext: two lines of 10,000 points took 0.76 s a frame, of 100,000 points 8.2 s)
and made exported charts megabytes of SVG."""

from __future__ import annotations


def thinned(xs: list, ys: list, runs: int) -> tuple[list, list]:
    """The points of a line (x in order) cut into `runs` equal runs, each given by its lowest
    and its highest point, in order, and the last point: a line through them keeps every spike
    and dip of the whole series and ends where it ends, at about two points a column."""
    n = len(ys)
    if n <= 2 * runs:
        return xs, ys
    out_x, out_y = [], []
    for r in range(runs):
        start, end = r * n // runs, (r + 1) * n // runs
        part = ys[start:end]
        low, high = part.index(min(part)), part.index(max(part))
        for i in sorted({low, high}):
            out_x.append(xs[start + i])
            out_y.append(part[i])
    if out_x[-1] != xs[-1]:
        out_x.append(xs[-1])
        out_y.append(ys[-1])
    return out_x, out_y


def one_per_place(xs: list, places: int) -> list:
    """Of the positions `xs` (in order) to mark with a symbol, the first in each of `places`
    equal parts of their range: one marker per place on the chart, however many fall there."""
    if len(xs) <= places:
        return xs
    low, span = xs[0], max(xs[-1] - xs[0], 1)
    kept, seen = [], set()
    for x in xs:
        place = (x - low) * places // span
        if place not in seen:
            seen.add(place)
            kept.append(x)
    return kept
