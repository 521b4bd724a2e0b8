"""The terminal UI with Textual's Pilot, against real recorded runs (and a real script process)."""

import asyncio
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import gradscope
from gradscope.tui.app import make_app
from gradscope.tui.messages import RecordUpdated
from gradscope.tui.process import ScriptProcess
from gradscope.tui.widgets.autograd import AutogradTree
from gradscope.tui.widgets.findings import FindingsTable
from gradscope.tui.widgets.modules import ModuleTree
from gradscope.tui.widgets.params import ParamTable


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(torch.relu(self.fc2(h)) + h)  # h is used twice: a shared node


def recorded_run(path, steps=5):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD([*model.fc1.parameters(), *model.fc2.parameters()], lr=0.01)  # fc3 left out
    with gradscope.watch(model, opt, record=path):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 4)).pow(2).mean().backward()
            opt.step()
    return path


async def loaded(pilot, timeout=10.0, steps=None):
    app = pilot.app
    deadline = time.monotonic() + timeout
    while app.state is None or (steps is not None and len(app.state.steps) < steps):
        assert time.monotonic() < deadline, "the record never loaded"
        await pilot.pause(0.05)
    await pilot.pause(0.1)


def status(app) -> str:
    return str(app.query_one("#status").render())


@pytest.fixture
def record(tmp_path):
    return recorded_run(tmp_path / "run.sqlite")


async def test_replay_shows_the_three_views_and_steps_through_history(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        tree = app.query_one(ModuleTree)
        assert {n.data for n in tree.root.children[0].children} == {"fc1", "fc2", "fc3"}
        table = app.query_one(ParamTable)
        assert table.row_count == 6
        assert app.query_one(FindingsTable).row_count == 2  # fc3.weight and fc3.bias
        assert "step 4 of 0..4" in status(app) and "following" in status(app)
        await pilot.press("left_square_bracket", "left_square_bracket")
        await loaded(pilot)
        while app.state.step != 2:
            await pilot.pause(0.05)
        assert "step 2 of 0..4" in status(app) and "browsing history" in status(app)
        await pilot.press("right_square_bracket")
        while app.state.step != 3:
            await pilot.pause(0.05)
        await pilot.press("l")
        while app.state.step != 4 or app.shown_step is not None:
            await pilot.pause(0.05)


async def test_search_filters_every_view(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("slash", *"fc2")
        await pilot.pause(0.2)
        names = {n.data for n in app.query_one(ModuleTree).root.children[0].children}
        assert names == {"fc2"}
        assert app.query_one(ParamTable).row_count == 2
        await pilot.press("escape")
        assert isinstance(app.focused, ModuleTree)


async def test_finding_jumps_to_its_subject_and_details_follow(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        findings = app.query_one(FindingsTable)
        findings.focus()
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.query_one("#views").active == "tab-params"
        table = app.query_one(ParamTable)
        row = table.get_row_at(table.cursor_row)
        assert row[0] in ("fc3.weight", "fc3.bias")
        deadline = time.monotonic() + 5
        text = ""
        while "param-not-in-optimizer" not in text:
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
            text = str(app.query_one("#details-head").render())
        assert row[0] in text and "hint:" in text


async def test_autograd_view_expands_lazily_and_marks_shared_nodes(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        app.query_one("#views").active = "tab-autograd"
        tree = app.query_one(AutogradTree)
        top = tree.root.children[0]
        assert "MeanBackward0" in str(top.label) and not top.children
        labels, queue = [], [top]
        while queue:  # expand everything, as a user pressing enter would
            node = queue.pop()
            node.expand()
            await pilot.pause(0.01)
            labels += [str(c.label) for c in node.children]
            queue += [c for c in node.children if c.allow_expand]
        assert any("shared" in l for l in labels)
        assert any("fc1.weight" in l for l in labels)


async def test_control_needs_a_script(record):
    app = make_app(record)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        await pilot.pause(0.1)
        assert not app.paused


SCRIPT = """
import sys, time, torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
time.sleep(1.0)
for step in range(400):
    x = torch.randn(2, 4)
    if step == 40:
        x[0, 0] = float("nan")
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    print("step", step, flush=True)
    time.sleep(0.01)
"""


async def test_pause_single_step_break_and_quit_with_a_running_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    record = tmp_path / "live.sqlite"
    process = ScriptProcess(["run", str(script)], record)
    app = make_app(record, process)
    updates = []
    async with app.run_test(size=(120, 40), message_hook=lambda m: updates.append(m) if isinstance(m, RecordUpdated) else None) as pilot:
        await pilot.press("b")  # break on the first error finding
        assert "break on error: on" in status(app)
        await loaded(pilot, timeout=60, steps=1)
        deadline = time.monotonic() + 60
        while app.state.run.get("paused") is None:  # the NaN at step 40 is an error: it breaks
            assert time.monotonic() < deadline, status(app)
            await pilot.pause(0.1)
        stopped = app.state.run["paused"]
        assert 40 <= stopped <= 45 and app.paused and "PAUSED" in status(app)
        assert any(f["check"] == "nonfinite" for f in app.state.findings)
        await pilot.pause(0.5)
        assert len(app.state.steps) == stopped  # nothing moves while paused
        await pilot.press("s")  # exactly one more step
        while app.state.run.get("paused") != stopped + 1:
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        await pilot.press("p")  # resume
        while app.paused or len(app.state.steps) < stopped + 20:
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        log = app.query_one("#log")
        assert any("step 40" in str(line.text) for line in log.lines)
        await pilot.press("q")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "QuitScreen"
        await pilot.press("y")
        await pilot.pause(0.5)
    assert not process.running
    assert len(updates) >= 3
    record_steps = gradscope.open_record(record).steps()
    assert len(record_steps) >= stopped + 20


async def test_script_crash_keeps_the_ui_up_with_the_traceback(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT.replace("time.sleep(1.0)", "").replace(
        "    time.sleep(0.01)", "    if step == 3:\n        raise RuntimeError('diverged')"))
    record = tmp_path / "crash.sqlite"
    app = make_app(record, ScriptProcess(["run", str(script)], record))
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 60
        while app._exit_code is None:
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        await loaded(pilot, steps=4)
        text = "\n".join(str(line.text) for line in app.query_one("#log").lines)
        assert "Traceback" in text and "RuntimeError: diverged" in text
        assert "script exited (1)" in status(app)
        assert len(app.state.steps) == 4  # the record kept every step up to the crash
        await pilot.press("e")  # export the shown step's graph from the UI
        exported = record.with_name("crash-step3.svg")
        while not exported.exists():
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        await pilot.press("q")
    assert app.return_value == 1  # gradscope run under the UI exits with the script's status


async def test_a_file_that_is_not_a_record_is_reported_not_fatal(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a record")
    app = make_app(bad)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.5)
        assert app.state is None and app.is_running
        assert any("not a gradscope record" in str(n.message) for n in app._notifications)


async def test_following_a_live_run_keeps_the_cursor_and_open_nodes(tmp_path):
    import threading

    path = tmp_path / "growing.sqlite"
    done = threading.Event()

    def train():
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gradscope.watch(model, opt, record=path, checks=False):
            for _ in range(60):
                opt.zero_grad()
                model(torch.randn(4, 4)).pow(2).mean().backward()
                opt.step()
                time.sleep(0.05)
        done.set()

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        app = make_app(path)
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot, steps=3)
            app.query_one("#views").active = "tab-params"
            table = app.query_one(ParamTable)
            table.focus()
            table.move_cursor(row=3)
            tree = app.query_one(AutogradTree)
            tree.root.children[0].expand()
            await pilot.pause(0.1)
            seen = len(app.state.steps)
            while len(app.state.steps) < seen + 10:
                await pilot.pause(0.1)
            assert table.cursor_row == 3
            assert tree.root.children[0].is_expanded and tree.root.children[0].children
    finally:
        trainer.join()
