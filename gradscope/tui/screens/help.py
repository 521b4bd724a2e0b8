"""The help screen: every key, and what the panels show."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = """[b]gradscope[/b] shows a training run step by step, live while it runs or replayed from its record.

[b]Left[/b]: three views of the shown step — the module tree (with input -> output shapes), the
autograd graph from the loss (expand a node to see the ops that produced its inputs; a node
reached twice says [i]shared[/i]), and the parameter table (gradient norm, update/weight ratio).
[b]Right[/b]: details of the selected item (statistics at this step, gradient norm and update
ratio over steps, gradient histogram), the findings (choose one with Enter to jump to its
subject), and the script's output.
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def __init__(self, bindings: list[tuple[str, str]]):
        super().__init__()
        self._bindings = bindings

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        for keys, text in self._bindings:
            table.add_row(keys, text)
        table.add_row("r", "next rank (runs under torchrun: one record per rank)")
        table.add_row("tab / shift+tab", "move between panels")
        table.add_row("enter", "expand a node / choose a finding")
        table.add_row("escape / enter", "leave the search box")
        with VerticalScroll(id="help"):
            yield Static(INTRO)
            yield Static(table)
            yield Static("[dim]escape closes this screen[/dim]")
