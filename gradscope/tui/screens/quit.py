"""Asks before quitting while the script still runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "stop and quit"), Binding("n,escape", "answer(False)", "stay")]

    def compose(self) -> ComposeResult:
        with Vertical(id="quit"):
            yield Static("The script is still running. Stop it and quit?\n"
                         "(The record keeps everything up to now.)")
            yield Button("Stop and quit (y)", variant="error", id="yes")
            yield Button("Stay (n)", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
