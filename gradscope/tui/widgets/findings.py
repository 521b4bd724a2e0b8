"""Right panel: findings, errors first; choosing one jumps to its subject."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from ...findings import severity_rank
from ..messages import FindingChosen

COLOURS = {"error": "bold red", "warning": "yellow", "info": "cyan"}


class FindingsTable(DataTable):
    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", **kwargs)
        self._signature = None
        self._subjects: dict[str, str] = {}

    def on_mount(self) -> None:
        self.add_columns("severity", "check", "subject", "steps", "message")

    def show(self, findings: list[dict]) -> None:
        signature = tuple((f["check"], f["subject"], f["count"]) for f in findings)
        if signature == self._signature:
            return
        self._signature = signature
        self.clear()
        self._subjects = {}
        for i, f in enumerate(sorted(findings, key=lambda f: (severity_rank(f["severity"]), f["step"] or 0))):
            steps = "-" if f["step"] is None else (
                str(f["step"]) if f["count"] == 1 else f"{f['step']}..{f['last_step']} ({f['count']}x)")
            key = f"f{i}"
            self._subjects[key] = f["subject"]
            self.add_row(Text(f["severity"], style=COLOURS[f["severity"]]), f["check"], f["subject"],
                         steps, f["message"], key=key)
        self.border_title = f"findings ({len(findings)})"

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        subject = self._subjects.get(event.row_key.value)
        if subject is not None:
            self.post_message(FindingChosen(subject))
