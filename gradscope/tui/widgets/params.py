"""Left panel, third tab: every parameter with its gradient and update at this step."""

from __future__ import annotations

from textual.widgets import DataTable

from ..messages import SubjectSelected
from ..state import ViewState


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


class ParamTable(DataTable):
    """name, shape, grad norm, update ratio, optimizer."""

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._signature = None

    def on_mount(self) -> None:
        self._columns = self.add_columns("parameter", "shape", "grad norm", "update/weight", "optimizer")

    def show(self, state: ViewState, query: str) -> None:
        """Rebuild when the parameters or the filter change; otherwise update the cells, so the
        cursor stays where the user put it."""
        grads = {s.subject: s.norm for s in state.data.stats if s.kind == "grad"} if state.data else {}
        updates = state.data.updates if state.data else {}
        signature = (tuple((p["name"], tuple(p["optimizers"])) for p in state.parameters), query)
        rebuild = signature != self._signature
        self._signature = signature
        if rebuild:
            self.clear()
        for p in state.parameters:
            if query and query.lower() not in p["name"].lower():
                continue
            update = updates.get(p["name"])
            cells = (_num(grads.get(p["name"])), _num(update.ratio if update else None))
            if rebuild:
                held = ", ".join(f"#{i}" for i in p["optimizers"]) or "none"
                self.add_row(p["name"], "x".join(map(str, p["shape"])) or "scalar", *cells, held, key=p["name"])
            else:
                self.update_cell(p["name"], self._columns[2], cells[0])
                self.update_cell(p["name"], self._columns[3], cells[1])

    def select_name(self, name: str) -> bool:
        try:
            row = self.get_row_index(name)
        except Exception:
            return False
        self.move_cursor(row=row)
        return True

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.post_message(SubjectSelected("param", event.row_key.value))
