"""Snapshot tests of the main screens at fixed sizes (pytest-textual-snapshot).

Update the stored pictures after a deliberate change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

import pytest

from gradscope.tui.app import make_app
from test_tui import loaded, recorded_run


@pytest.fixture
def record(tmp_path):
    return recorded_run(tmp_path / "run.sqlite")


def test_main_screen_80x24(snap_compare, record):
    assert snap_compare(make_app(record), terminal_size=(80, 24), run_before=loaded)


def test_main_screen_with_details_120x40(snap_compare, record):
    async def select_fc1(pilot):
        await loaded(pilot)
        await pilot.press("down", "down")
        await pilot.pause(0.5)

    assert snap_compare(make_app(record), terminal_size=(120, 40), run_before=select_fc1)


def test_help_screen(snap_compare, record):
    async def open_help(pilot):
        await loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(make_app(record), terminal_size=(100, 34), run_before=open_help)


def test_autograd_view(snap_compare, record):
    async def expand(pilot):
        await loaded(pilot)
        pilot.app.query_one("#views").active = "tab-autograd"
        await pilot.pause(0.1)
        tree = pilot.app.query_one("#autograd")
        tree.focus()
        top = tree.root.children[0]
        top.expand()
        await pilot.pause(0.1)
        for child in top.children:
            child.expand()
        await pilot.pause(0.3)

    assert snap_compare(make_app(record), terminal_size=(120, 40), run_before=expand)
