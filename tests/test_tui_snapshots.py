"""Snapshot tests of the main screens at fixed sizes (pytest-textual-snapshot).

Update the stored pictures after a deliberate change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

import pytest

from gradscope.tui.app import make_app
from test_tui import loaded, recorded_run, until


@pytest.fixture
def record(tmp_path):
    return recorded_run(tmp_path / "run.sqlite", steps=30)


def _findings_laid_out(app) -> bool:
    """Every finding of the record is a row, and the columns have been sized to the rows (a
    table sizes them when it next gets idle: a picture taken before shows header widths)."""
    table = app.query_one("#findings")
    findings = app.state.findings if app.state else []
    check = list(table.columns.values())[1]
    return table.row_count == len(findings) and check.content_width >= max((len(f["check"]) for f in findings),
                                                                            default=0)


async def settled(pilot):
    """Loaded, the details pane showing the answer to the latest request, the findings laid out;
    checked again after the app has handled what was pending (a late answer may start a layout);
    the details head as tall as its text."""
    app = pilot.app
    await loaded(pilot)
    for _ in range(2):
        await until(pilot, lambda: app.details_current and "(" in str(app.query_one("#details-head").render())
                    and _findings_laid_out(app))
        await pilot.wait_for_scheduled_animations()
    head = app.query_one("#details-head")
    await until(pilot, lambda: head.region.height >= str(head.render()).count("\n") + 1,
                message=lambda: f"the details head kept {head.region.height} lines for {str(head.render())!r}")


def test_main_screen_80x24(snap_compare, record):
    assert snap_compare(make_app(record), terminal_size=(80, 24), run_before=settled)


def test_main_screen_with_details_120x40(snap_compare, record):
    async def select_fc1(pilot):
        await settled(pilot)
        await pilot.press("down", "down")
        await until(pilot, lambda: "fc1  (module)" in str(pilot.app.query_one("#details-head").render()))
        await settled(pilot)

    assert snap_compare(make_app(record), terminal_size=(120, 40), run_before=select_fc1)


def test_gradient_flow_chart_120x40(snap_compare, record):
    async def flow(pilot):
        await settled(pilot)
        await pilot.press("c", "c")
        await until(pilot, lambda: pilot.app.query_one("#charts").active == "chart-flow")
        await settled(pilot)

    assert snap_compare(make_app(record), terminal_size=(120, 40), run_before=flow)


def test_help_screen(snap_compare, record):
    async def open_help(pilot):
        await settled(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: pilot.app.screen.__class__.__name__ == "HelpScreen")

    assert snap_compare(make_app(record), terminal_size=(100, 34), run_before=open_help)


def test_autograd_view(snap_compare, record):
    async def expand(pilot):
        await settled(pilot)
        await pilot.press("2")
        tree = pilot.app.query_one("#autograd")
        top = tree.root.children[0]
        top.expand()
        await until(pilot, lambda: top.children)
        for child in top.children:
            child.expand()
        await until(pilot, lambda: all(c.children or not c.allow_expand for c in top.children))
        await settled(pilot)

    assert snap_compare(make_app(record), terminal_size=(120, 40), run_before=expand)
