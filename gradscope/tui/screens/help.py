"""The help screen: every key once, and what the panels show."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = Text.from_markup("""[b]gradscope[/b] shows a training run step by step, live while it runs or replayed from its record.

[b]Left[/b]: three views of the shown step — [b]1[/b] the module tree (input -> output shapes),
[b]2[/b] the autograd graph from the loss (expand a node to see the ops that produced its inputs;
a node reached twice says [i]shared[/i]), [b]3[/b] the parameter table (gradient norm, update/weight).
[b]Right[/b]: charts (loss and learning rate, speed and memory, gradient flow per layer, update
ratios), details of the selected item, the findings (Enter shows one whole and jumps to its
subject) and, under [b]gradscope run[/b], the script's output. Red is an error, yellow a warning.
""")


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,h", "close", "close")]

    def __init__(self, keys: list[tuple[str, str]]):
        super().__init__()
        self._keys = keys  # (keys, what they do); not `_bindings`, which is Textual's own

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for keys, text in self._keys:
            table.add_row(keys, text)
        with VerticalScroll(id="help"):
            yield Static(INTRO)
            yield Static(table)
            yield Static(Text("escape, q or ? closes this screen", style="dim"))

    def action_close(self) -> None:
        self.dismiss()
