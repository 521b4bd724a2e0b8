"""Right panel: the selected subject's shapes, statistics, sparklines and gradient histogram;
a chosen finding is shown whole above it (message, every piece of evidence, hint)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Sparkline, Static

from ...distributed import describe
from ..state import Details
from ..text import clean, literal
from .findings import COLOURS

BARS = " ▁▂▃▄▅▆▇█"


def _g(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _stats_table(details: Details) -> Table:
    """One column per kind of tensor (activation, gradient, weight...), one row per statistic."""
    stats = [s for s in details.stats if not s.call]
    table = Table(box=None, padding=(0, 1), header_style="bold")
    table.add_column("")
    for s in stats:
        table.add_column(literal(s.kind + (f" {s.path}" if s.path else "")), justify="right",
                         style="bold red" if s.nonfinite else "")
    for field in ("count", "mean", "std", "min", "max", "norm", "zeros", "nonfinite"):
        values = [getattr(s, field) for s in stats]
        table.add_row(field, *(str(v) if isinstance(v, int) else _g(v) for v in values))
    return table


def _histogram(hist) -> Text:
    low, high, counts = hist
    top = max(counts) or 1
    bars = "".join(BARS[round(c / top * (len(BARS) - 1))] for c in counts)
    return Text.assemble(("gradient histogram  ", "bold"), (f"{low:.3g} ", "dim"), (bars, "cyan"), (f" {high:.3g}", "dim"))


class Block(Static):
    """A Static measured again on every update. Textual counts a layout refresh only when none
    is pending, and a layout done meanwhile caches the old content's height under that count:
    the details then kept the height of the text they replaced (one line) until a resize."""

    def update(self, content="", *, layout: bool = True) -> None:
        if layout:
            self._layout_required = False  # this refresh then counts: the height is measured anew
        super().update(content, layout=layout)


class DetailsPanel(VerticalScroll):
    """Everything about one module or parameter at the shown step."""

    def compose(self) -> ComposeResult:
        yield Block("Select a module, parameter or autograd node.", id="details-head")
        yield Block(id="details-stats")
        yield Label("gradient norm over steps", id="grad-label")
        yield Sparkline([], id="grad-spark")
        yield Label("update / weight over steps", id="ratio-label")
        yield Sparkline([], id="ratio-spark")
        yield Block(id="details-hist")

    def show(self, details: Details, findings: list[dict] = ()) -> None:
        info = details.info
        head = Text()
        if details.finding is not None:
            head.append_text(finding_text(details.finding))
            head.append("\n\n")
        head.append_text(literal(details.name or info.get("type", "model"), "bold"))
        head.append(f"  ({details.kind})")
        for f in findings:
            if f is details.finding or (details.finding and (f["check"], f["subject"]) == (details.finding["check"], details.finding["subject"])):
                continue
            head.append(f"\n{f['severity']} ", style=COLOURS[f["severity"]])
            head.append_text(literal(f"{f['check']}: {f['message']}\n  hint: {f['hint']}"))
        if details.kind == "optimizer" and info:
            head.append_text(literal(f"\n{info.get('type')}: {len(info.get('params', []))} parameters, "
                                     f"first step {info.get('first_step')}"))
            for i, group in enumerate(info.get("groups") or []):
                head.append_text(literal(f"\ngroup {i}: {group}"))
        if details.kind == "param" and info:
            head.append_text(literal(f"\nshape {info.get('shape')}  {info.get('dtype')}  on {info.get('device')}"
                        f"  requires_grad={info.get('requires_grad')}  in optimizer: {info.get('in_optimizer')}"))
            if info.get("placement"):
                head.append_text(literal(f"\n{describe(info['placement'])}; statistics of this rank's shard"))
        if details.kind == "module" and info:
            head.append_text(literal(f"\ntype {info.get('type')}  own parameters {info.get('params')}"))
            for call in details.calls[:3]:
                fmt = lambda xs: ", ".join(f"{x.get('shape', x.get('type'))} {x.get('dtype', '')}".strip() for x in xs)
                head.append_text(literal(f"\ncall {call['call']}: in {fmt(call['inputs'])} -> out {fmt(call['outputs'])}"
                                         f"  ({'train' if call['training'] else 'eval'})"))
        if details.update is not None:
            u = details.update
            head.append(f"\nupdate |Δw| {_g(u.delta)}  |w| {_g(u.weight)}  ratio {_g(u.ratio)}"
                        f"  outside step() {_g(u.outside)}  whole step {_g(u.step_delta)}")
        self.query_one("#details-head", Static).update(head)
        stats = _stats_table(details) if details.stats else ""
        if details.stats and details.stats_step is not None:
            every = (f"module statistics every {details.stats_every} steps" if details.stats_every
                     else "module statistics are periodic")
            stats = Group(Text(f"statistics of step {details.stats_step} ({every})", style="dim"), stats)
        self.query_one("#details-stats", Static).update(stats)
        self.query_one("#grad-spark", Sparkline).data = details.grad_norms
        self.query_one("#ratio-spark", Sparkline).data = details.ratios
        self.query_one("#ratio-label").display = self.query_one("#ratio-spark").display = bool(details.ratios)
        self.query_one("#details-hist", Static).update(_histogram(details.hist) if details.hist else "")


def finding_text(f: dict) -> Text:
    """One finding whole: what, where, when, the evidence and the hint."""
    text = Text()
    text.append(f"{f['severity']} ", style=COLOURS[f["severity"]])
    text.append_text(literal(f["check"], "bold"))
    when = "" if f["step"] is None else f"  step {f['step']}" + (
        f"..{f['last_step']} ({f['count']} times)" if f["count"] > 1 else "")
    text.append_text(literal(f"  on {f['subject']}{when}\n"))
    text.append_text(literal(f["message"]))
    for key, value in (f.get("evidence") or {}).items():
        text.append_text(literal(f"\n  {key}: {clean(value)}", "dim"))
    if f.get("hint"):
        text.append("\nhint: ", style="bold")
        text.append_text(literal(f["hint"]))
    return text
