"""Right panel: findings, errors first; choosing one shows it whole and jumps to its subject.

A live run updates the table in place (cells of known rows, new rows appended), so the cursor
and the horizontal scroll stay where the user put them while a repeating finding counts up.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual.widgets import DataTable

from ...findings import severity_rank
from ..messages import FindingChosen
from ..text import literal

COLOURS = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _steps(f: dict) -> str:
    if f["step"] is None:
        return "-"
    return str(f["step"]) if f["count"] == 1 else f"{f['step']}..{f['last_step']} ({f['count']}x)"


def _cells(f: dict) -> tuple:
    return (literal(f["severity"], COLOURS[f["severity"]]), literal(f["check"]), literal(f["subject"]),
            _steps(f), literal(f["message"]))


def _key(f: dict) -> str:
    return f"{f['check']}\x00{f['subject']}"


class FindingsTable(DataTable):
    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", **kwargs)
        self._findings: dict[str, dict] = {}
        self._columns = ()

    def on_mount(self) -> None:
        self._columns = self.add_columns("severity", "check", "subject", "steps", "message")

    def show(self, findings: list[dict]) -> None:
        fresh = [f for f in findings if _key(f) not in self._findings]
        for f in findings:
            key = _key(f)
            known = self._findings.get(key)
            if known is not None and (known["count"], known["last_step"]) != (f["count"], f["last_step"]):
                self.update_cell(key, self._columns[3], _steps(f), update_width=True)
            self._findings[key] = dict(f)
        if fresh:
            cursor = self.coordinate_to_cell_key(self.cursor_coordinate).row_key if self.row_count else None
            scroll_x = self.scroll_x
            rows = [_cells(f) for f in fresh]
            self._widen(rows)
            for f, cells in zip(fresh, rows):
                self.add_row(*cells, key=_key(f))
            self.sort(key=self._order)  # errors first, each by its first step
            if cursor is not None:
                self.move_cursor(row=self.get_row_index(cursor), animate=False, scroll=False)
            self.scroll_x = scroll_x
        errors = sum(1 for f in findings if f["severity"] == "error")
        self.border_title = f"findings ({len(findings)}{f', {errors} errors' if errors else ''})"
        self.set_class(not findings, "empty")

    def _widen(self, rows: list[tuple]) -> None:
        """Size the columns for `rows` before they are added. The table sizes them only when it
        next gets idle, and a line drawn in between (the header) could stay cached at the
        width of the column labels."""
        for column, cells in zip(self.columns.values(), zip(*rows)):
            column.content_width = max(column.content_width, *(cell_len(str(c)) for c in cells))

    def _order(self, row) -> tuple:
        severity, _, _, steps, _ = row
        first = str(steps).split(".")[0].split(" ")[0]
        return severity_rank(str(severity)), int(first) if first.isdigit() else -1

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        finding = self._findings.get(event.row_key.value)
        if finding is not None:
            self.post_message(FindingChosen(finding))
