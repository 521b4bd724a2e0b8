"""Left panel, third view: every parameter with its gradient and update at this step.

Numbers come first and long names are shortened in the middle, so a 40-character parameter
name never pushes the values off-screen; `o` (or a click on a header) sorts by a column.
Parameters a finding names carry its severity colour.
"""

from __future__ import annotations

import math

from textual.widgets import DataTable

from ..messages import SubjectSelected
from ..state import ViewState
from ..text import clean, literal
from .findings import COLOURS
from .modules import worst_severity

NAME_WIDTH = 30
COLUMNS = ("parameter", "grad norm", "upd/w", "shape", "opt")


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def shorten(name: str, width: int = NAME_WIDTH) -> str:
    """`name` cut in the middle to `width` characters (both ends tell most)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def _sort_value(cell) -> tuple:
    text = str(cell)
    try:
        number = float(text)
        return (0, -math.inf if math.isnan(number) else number, "")
    except ValueError:
        return (-1, 0.0, text)


class ParamTable(DataTable):
    """name, grad norm, update ratio, shape, optimizer."""

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._signature = None
        self._columns = ()
        self.sort_column: int | None = None

    def on_mount(self) -> None:
        self._columns = self.add_columns(*COLUMNS)

    def show(self, state: ViewState, query: str) -> None:
        """Rebuild when the parameters or the filter change; otherwise update the cells, so the
        cursor stays where the user put it."""
        grads = {s.subject: s.norm for s in state.data.stats if s.kind == "grad"} if state.data else {}
        updates = state.data.updates if state.data else {}
        severity = worst_severity(state.findings)
        signature = (tuple((p["name"], tuple(p["optimizers"])) for p in state.parameters), query)
        rebuild = signature != self._signature
        self._signature = signature
        if rebuild:
            self.clear()
        for p in state.parameters:
            if query and query.lower() not in p["name"].lower():
                continue
            update = updates.get(p["name"])
            name = literal(shorten(clean(p["name"])), COLOURS.get(severity.get(p["name"]), ""))
            cells = (_num(grads.get(p["name"])), _num(update.ratio if update else None))
            if rebuild:
                held = ", ".join(f"#{i}" for i in p["optimizers"]) or "none"
                self.add_row(name, *cells, "x".join(map(str, p["shape"])) or "scalar", held, key=p["name"])
            else:
                self.update_cell(p["name"], self._columns[0], name)
                self.update_cell(p["name"], self._columns[1], cells[0])
                self.update_cell(p["name"], self._columns[2], cells[1])
        if self.sort_column is not None:
            self._sort()

    def cycle_sort(self) -> str:
        """Sort by the next column (parameter order after the last); returns what it sorts by."""
        self.sort_column = 0 if self.sort_column is None else self.sort_column + 1
        if self.sort_column >= len(COLUMNS):
            self.sort_column = None
            self._signature = None  # the next reading rebuilds in parameter order
            return "parameter order"
        self._sort()
        return COLUMNS[self.sort_column]

    def _sort(self) -> None:
        numeric = self.sort_column in (1, 2)
        self.sort(self._columns[self.sort_column], key=_sort_value, reverse=numeric)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.sort_column = event.column_index
        self._sort()

    def select_name(self, name: str) -> bool:
        try:
            row = self.get_row_index(name)
        except Exception:
            return False
        self.move_cursor(row=row)
        return True

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.post_message(SubjectSelected("param", event.row_key.value, self, event.time))
