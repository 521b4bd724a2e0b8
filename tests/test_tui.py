"""The terminal UI with Textual's Pilot, against real recorded runs (and a real script process).

No fixed sleeps: every wait is for a condition, with a deadline (`until`).
"""

import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from rich.console import Group
from torch import nn

import gradscope
from gradscope.record import schema
from gradscope.record.writer import DROP_BEHIND, DROP_FAILED
from gradscope.settings import DEFAULTS
from gradscope.tui.app import make_app
from gradscope.tui.messages import DetailsLoaded, FindingChosen, RecordUpdated
from gradscope.tui.process import ScriptProcess
from gradscope.tui.screens.help import HelpScreen
from gradscope.tui.state import Reader, open_when_ready, read_details
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


def train(path, make_model, steps, batch, *, params=None, loss=lambda out: out.sum()):
    """Record `steps` steps of SGD on `make_model()` (seeded) fed random `batch`-shaped inputs;
    `params(model)` picks what the optimizer gets (default: every parameter)."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters() if params is None else params(model), lr=0.01)
    with gradscope.watch(model, opt, record=path):
        for _ in range(steps):
            opt.zero_grad()
            loss(model(torch.randn(*batch))).backward()
            opt.step()
    return path


def recorded_run(path, steps=5):
    return train(path, Net, steps, (4, 4), loss=lambda out: out.pow(2).mean(),
                 params=lambda m: [*m.fc1.parameters(), *m.fc2.parameters()])  # fc3 left out


async def until(pilot, condition, timeout=10.0, message="condition never held"):
    """Let the app run until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message() if callable(message) else message
        await pilot.pause(0.02)


async def expand(pilot, node):
    """Expand `node` as a user pressing enter would, and wait for its children (loaded lazily)."""
    node.expand()
    await until(pilot, lambda: node.children or not node.allow_expand)


async def loaded(pilot, timeout=10.0, steps=None):
    app = pilot.app
    await until(pilot, lambda: app.state is not None and (steps is None or len(app.state.steps) >= steps),
                timeout, "the record never loaded")
    await pilot.wait_for_scheduled_animations()


def status(app) -> str:
    return str(app.query_one("#status").render())


def screen_text(app) -> str:
    """What the terminal shows, as text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def details_text(app) -> str:
    return str(app.query_one("#details-head").render())


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
        await until(pilot, lambda: app.state.step == 2)
        assert "step 2 of 0..4" in status(app) and "history" in status(app)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: app.state.step == 3)
        await pilot.press("l")
        await until(pilot, lambda: app.state.step == 4 and app.shown_step is None)


async def test_details_answered_late_for_an_earlier_selection_are_not_shown(record, monkeypatch):
    """A details worker that passed its cancelled check just before a newer selection still posts
    its answer: the pane must keep the newer subject."""
    built, release = threading.Event(), threading.Event()
    app = make_app(record)
    post = app.post_message

    def post_first_late(message):
        if isinstance(message, DetailsLoaded) and not built.is_set():  # the model's details, checked, not posted
            built.set()
            release.wait(10)
        return post(message)

    monkeypatch.setattr(app, "post_message", post_first_late)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, built.is_set)
        await loaded(pilot)
        app.query_one(ModuleTree).focus()
        await pilot.press("down", "down")  # the model, then fc1
        await until(pilot, lambda: "fc1  (module)" in details_text(app))
        release.set()
        await until(pilot, lambda: not any(w.group == "details" and w.is_running for w in app.workers))
        await pilot.pause()
        assert "fc1  (module)" in details_text(app)


async def test_answers_arriving_as_the_app_closes_are_dropped(tmp_path, monkeypatch):
    """What workers post (details, a new reading of the record, the script's output and exit) as
    the app closes can be handled after its screens are gone: the app must close normally, not
    fail on a missing widget (seen as a failure at the end of a live-run test)."""
    import asyncio

    from gradscope.tui.messages import ScriptExited, ScriptOutput
    from gradscope.tui.state import Details

    record = tmp_path / "closing.sqlite"
    process = ScriptProcess(live_script(tmp_path, "closing"), record)
    app = make_app(record, process)
    close_all = app._close_all  # textual's own step of closing: the screens go first
    handled = asyncio.Event()
    on_script_exited = type(app).on_script_exited

    def exited_then_tell(self, message):  # the last answer posted: the others were handled before it
        try:
            on_script_exited(self, message)
        finally:
            handled.set()

    async def close_all_then_answer():
        await close_all()
        app.post_message(DetailsLoaded(Details("module", "fc1", None), app._details_asked))
        app.post_message(RecordUpdated(app.state))
        app.post_message(ScriptOutput("stderr", ["interrupted"]))
        app.post_message(ScriptExited(-2))
        await asyncio.wait_for(handled.wait(), 30)  # the app's message loop handles them meanwhile

    monkeypatch.setattr(app, "_close_all", close_all_then_answer)
    monkeypatch.setattr(type(app), "on_script_exited", exited_then_tell)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot, timeout=60)
            await until(pilot, lambda: app.details_current, 30)
        assert app.return_code in (None, 0)
    finally:
        process.stop()


async def test_search_filters_every_view(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("slash", *"fc2")
        await until(pilot, lambda: {n.data for n in app.query_one(ModuleTree).root.children[0].children} == {"fc2"})
        assert app.query_one(ParamTable).row_count == 2
        await pilot.press("escape")
        assert isinstance(app.focused, ModuleTree)


@pytest.mark.parametrize("key", ["escape", "q", "question_mark", "h"])
async def test_help_opens_and_closes_with_each_key(record, key):
    app = make_app(record)
    async with app.run_test(size=(100, 34)) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press(key)
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        assert app.is_running  # closing help once crashed the app
        await pilot.press("down", "3")  # the main screen still answers keys
        await until(pilot, lambda: app.query_one("#views").active == "tab-params")
        assert app.is_running


async def test_help_lists_each_key_once(record):
    app = make_app(record)
    rows = app.help_keys()
    keys = [k for keys, _ in rows for k in keys.split()]
    assert len(keys) == len(set(keys)), keys
    assert {"?", "q", "ctrl+q", "j", "k", "g", "G", "1", "2", "3", "z", "c"} <= set(keys)


async def test_views_keys_and_vi_moves(record):
    app = make_app(record)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        table = app.query_one(ParamTable)
        await until(pilot, lambda: app.focused is table)
        await pilot.press("G")
        assert table.cursor_row == table.row_count - 1
        await pilot.press("k")
        assert table.cursor_row == table.row_count - 2
        await pilot.press("g")
        assert table.cursor_row == 0
        await pilot.press("j")
        assert table.cursor_row == 1
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.focused, AutogradTree))
        await pilot.press("1")
        await until(pilot, lambda: isinstance(app.focused, ModuleTree))
        await pilot.press("z")
        await until(pilot, lambda: app.screen.maximized is app.focused)
        await pilot.press("z")
        await until(pilot, lambda: app.screen.maximized is None)


async def test_status_line_says_how_many_steps_were_dropped_and_why(record):
    """A record whose writer dropped steps (here: as the writer counts them in the run table)."""
    with sqlite3.connect(record) as conn:
        schema.RUN.insert(conn, [schema.RunField("dropped_steps", 7),
                                 schema.RunField("dropped", {DROP_BEHIND: 5, DROP_FAILED: 2})], replace=True)
    app = make_app(record)
    async with app.run_test(size=(160, 40)) as pilot:
        await loaded(pilot)
        assert f"7 steps dropped (5: {DROP_BEHIND}; 2: {DROP_FAILED})" in status(app)


async def test_parameter_table_sorts_by_each_column_and_back(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        table = app.query_one(ParamTable)
        column = lambda i: [str(table.get_row_at(r)[i]) for r in range(table.row_count)]
        names = [k.value for k in table.rows]  # parameter order
        await pilot.press("o")
        await until(pilot, lambda: column(0) == sorted(column(0)))
        await pilot.press("o")  # gradient norm, largest first
        await until(pilot, lambda: table.sort_column == 1)
        norms = [float(v) for v in column(1)]
        assert norms == sorted(norms, reverse=True) and len(set(norms)) > 1
        await pilot.press("o")  # update/weight ratio, largest first, parameters without one last
        await until(pilot, lambda: table.sort_column == 2)
        ratios = column(2)
        assert ratios[-2:] == ["-", "-"]  # fc3 is in no optimizer
        assert [float(v) for v in ratios[:-2]] == sorted((float(v) for v in ratios[:-2]), reverse=True)
        await pilot.press("left_square_bracket")  # another step keeps the order
        await until(pilot, lambda: app.state.step == 3)
        assert column(2)[-2:] == ["-", "-"]
        await pilot.press("o", "o", "o")  # past the last column: parameter order again
        await until(pilot, lambda: [str(table.get_row_at(r)[0]) for r in range(table.row_count)] == names)


async def test_footer_shows_only_keys_that_apply_and_fits_80_columns(record):
    app = make_app(record)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        footer = screen_text(app).splitlines()[-1]
        for key in ("? help", "q quit", "/ filter", "[ prev", "z zoom"):
            assert key in footer, footer
        for live_only in ("pause", "break", "latest"):  # no script here; following the latest step
            assert live_only not in footer, footer
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: "l latest" in screen_text(app).splitlines()[-1])


async def test_ctrl_q_asks_like_q_while_the_script_runs(tmp_path):
    record = tmp_path / "slow.sqlite"
    process = ScriptProcess(live_script(tmp_path, "slow"), record)
    app = make_app(record, process)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("ctrl+q")
            await until(pilot, lambda: app.screen.__class__.__name__ == "QuitScreen")
            await pilot.press("n")
            await until(pilot, lambda: app.screen.__class__.__name__ != "QuitScreen")
            assert app.is_running and process.running
            await pilot.press("ctrl+q")
            await until(pilot, lambda: app.screen.__class__.__name__ == "QuitScreen")
            await pilot.press("y")
    finally:
        process.stop()
    assert not process.running


async def test_findings_table_keeps_cursor_and_scroll_while_counts_grow(record):
    app = make_app(record)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        table = app.query_one(FindingsTable)
        findings = [dict(f) for f in app.state.findings]
        table.focus()
        table.move_cursor(row=1)
        table.scroll_x = 12
        chosen = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        for _ in range(3):  # a repeating finding counts up every step
            for f in findings:
                f["count"] += 1
                f["last_step"] += 1
            table.show(findings)
            await pilot.pause()
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key == chosen
        assert table.scroll_x == 12
        new = dict(findings[0], check="nonfinite", severity="error", subject="fc1", count=1, step=7, last_step=7)
        table.show(findings + [new])  # a new error sorts first; the cursor stays on its finding
        await pilot.pause()
        assert table.row_count == 3
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key == chosen
        count = next(f["count"] for f in findings if f"{f['check']}\x00{f['subject']}" == chosen.value)
        assert f"({count}x)" in str(table.get_row(chosen)[3])
        for f in findings:  # a long run of steps: its cell widens the column (not cut at "3..6 (4x)")
            f["count"], f["last_step"] = 123454, 123456
        table.show(findings + [new])
        await pilot.pause()
        assert list(table.columns.values())[3].content_width >= len(str(table.get_row(chosen)[3])) > 16


def _finding(subject, check="demo-check", severity="warning"):
    return {"check": check, "severity": severity, "subject": subject, "step": 3, "last_step": 3,
            "count": 1, "message": f"something about {subject}", "evidence": {"value": 42.5},
            "hint": "a hint for " + subject}


async def _choose(pilot, finding):
    app = pilot.app
    app.post_message(FindingChosen(finding))
    await until(pilot, lambda: finding["message"] in details_text(app) and "a hint" in details_text(app),
                message=lambda: details_text(app))


async def test_finding_jumps_for_every_subject_kind(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        views = app.query_one("#views")
        await pilot.press("slash", *"fc2", "enter")  # a filter left from before must not misdirect a jump
        await _choose(pilot, _finding("fc3.weight"))
        assert views.active == "tab-params" and app.query_one("#search").value == ""
        table = app.query_one(ParamTable)
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == "fc3.weight"
        assert "value: 42.5" in details_text(app)

        await _choose(pilot, _finding("fc2"))
        modules = app.query_one(ModuleTree)
        await until(pilot, lambda: modules.cursor_node.data == "fc2")
        assert views.active == "tab-modules"

        await _choose(pilot, _finding("input", "nonfinite", "error"))  # the model's input: its root module
        await until(pilot, lambda: modules.cursor_node.data == "")  # the root module
        assert views.active == "tab-modules"

        graph = app.state.graph
        op = next(n for n in graph.nodes if n.get("scope") and not n.get("param") and n["kind"] == "op")
        await _choose(pilot, _finding(f"{op['op']} in {op['scope']}", "softmax-before-ce", "error"))
        tree = app.query_one(AutogradTree)
        await until(pilot, lambda: tree.cursor_node is not None and tree.cursor_node.data == op["id"])
        assert views.active == "tab-autograd"
        assert app.query_one("#search").value == ""

        await _choose(pilot, _finding("loss", "nonfinite", "error"))
        await until(pilot, lambda: tree.cursor_node.data == graph.nodes[0]["id"])
        assert views.active == "tab-autograd"

        await _choose(pilot, _finding("optimizer0", "missing-zero-grad"))  # shown in details
        assert "SGD" in details_text(app)
        await _choose(pilot, _finding("some-plugin", "internal-error"))
        assert app.is_running


async def test_choosing_a_finding_in_the_table_shows_it_whole(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        app.query_one(FindingsTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: "param-not-in-optimizer" in details_text(app))
        assert app.query_one("#views").active == "tab-params"
        text = details_text(app)
        assert "hint:" in text and "fc3." in text


async def test_autograd_view_expands_lazily_and_marks_shared_nodes(record):
    app = make_app(record)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        app.query_one("#views").active = "tab-autograd"
        tree = app.query_one(AutogradTree)
        assert tree.guide_depth <= 2  # deep graphs stay readable
        top = tree.root.children[0]
        assert "MeanBackward0" in str(top.label) and not top.children
        labels, queue = [], [top]
        while queue:  # expand everything, as a user pressing enter would
            node = queue.pop()
            await expand(pilot, node)
            labels += [str(c.label) for c in node.children]
            queue += [c for c in node.children if c.allow_expand]
        assert any("shared" in l for l in labels)
        assert any("fc1.weight" in l for l in labels)


async def test_control_needs_a_script(record):
    app = make_app(record)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        await pilot.pause()
        assert not app.paused


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(30))
        self.head_with_a_rather_long_descriptive_name = nn.Linear(4, 1)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head_with_a_rather_long_descriptive_name(x)


async def test_a_deep_model_opens_two_levels_and_keeps_numbers_visible(tmp_path):
    app = make_app(train(tmp_path / "deep.sqlite", Deep, 2, (2, 4)))
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        tree = app.query_one(ModuleTree)
        assert tree.last_line + 1 <= 35  # root, blocks, 30 blocks, head (not ~95 rows)
        await pilot.press("3")
        table = app.query_one(ParamTable)
        await until(pilot, lambda: app.focused is table)
        await pilot.press("G")
        grad = str(table.get_row_at(table.cursor_row)[1])
        await until(pilot, lambda: grad in screen_text(app))  # the number is on screen, not cut off


HOSTILE = ["[/]", "[link=https://example/com]x[/link]", "a\x1b]0;owned\x07b", "c\x1b[2Jd", "[bold red]e"]


def hostile_model():
    model = nn.Sequential()
    for name in HOSTILE:
        model.add_module(name, nn.Linear(3, 3))
    return model


async def test_hostile_names_are_shown_literally(tmp_path):
    path = train(tmp_path / "hostile.sqlite", hostile_model, 3, (2, 3),
                 params=lambda m: list(m.parameters())[:4])  # findings name the others
    app = make_app(path)
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot)
        assert app.state.findings
        labels = [str(n.label) for n in app.query_one(ModuleTree).root.children[0].children]
        assert any(label.startswith("[/]") for label in labels), labels
        assert any("[link=https://example/com]x[/link]" in label for label in labels), labels
        assert any("a\\x1b]0;owned\\x07b" in label for label in labels), labels
        text = screen_text(app)
        assert "\x1b" not in text and "\x07" not in text
        for key in ("2", "3", "f", "enter"):  # every view, and a finding chosen
            await pilot.press(key)
        await until(pilot, lambda: "hint" in details_text(app))
        await pilot.press("slash", *"[/]")  # typing markup into the filter
        await until(pilot, lambda: app.query_one("#search").value == "[/]")
        await pilot.press("escape")
        assert app.is_running
        assert "\x1b" not in screen_text(app)


async def test_poller_reads_only_when_the_record_changes(record, monkeypatch):
    reads, looks = [], []
    real_read, real_version = Reader.read, Reader.version
    monkeypatch.setattr(Reader, "read", lambda self, step: reads.append(step) or real_read(self, step))
    monkeypatch.setattr(Reader, "version", lambda self, step: looks.append(step) or real_version(self, step))
    app = make_app(record)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        seen = len(looks)
        await until(pilot, lambda: len(looks) >= seen + 5)  # the poller kept looking...
        assert len(reads) == 1  # ...but a finished record was read once
        await pilot.press("left_square_bracket")  # another step: read again
        await until(pilot, lambda: len(reads) == 2)


def test_a_commit_while_the_ui_reads_is_read_at_the_next_poll(record):
    """The writer committed (a break: ``paused``) while the poller was reading the record: the
    state read must not claim that commit's version, or the poller never reads it."""
    import fcntl

    writer = sqlite3.connect(record)
    writer.execute("PRAGMA journal_mode=WAL")  # a live record, its writer holding the lock
    lock = os.open(record, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        reader = Reader(open_when_ready(record))
        real_run = reader.record.run

        def run_then_commit():  # the first read of the run fields; the writer commits right after
            fields = real_run()
            reader.record.run = real_run
            writer.execute("INSERT OR REPLACE INTO run (key, value) VALUES ('paused', '7')")
            writer.commit()
            return fields

        reader.record.run = run_then_commit
        state = reader.read(None)
        assert "paused" not in state.run
        if reader.version(None) != state.version:  # what the poller does
            state = reader.read(None)
        assert state.run.get("paused") == 7
        reader.record.close()
    finally:
        os.close(lock)
        writer.close()


def test_reading_a_record_for_the_ui_does_not_import_torch(record):
    code = textwrap.dedent(f"""
        import sys
        from gradscope.tui.app import make_app
        from gradscope.tui.state import Reader, open_when_ready
        state = Reader(open_when_ready(__import__("pathlib").Path({str(record)!r}))).read(None)
        assert state.steps and state.graph is not None
        import gradscope, gradscope.cli, gradscope.report, gradscope.export
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["runs"], ["view", "--help"], ["report", "--help"], ["export", "R", "-o", "g.dot"]])
def test_commands_that_read_records_do_not_import_torch(record, tmp_path, argv):
    argv = [str(record) if a == "R" else a for a in argv]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradscope", *argv],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported


SCRIPT = """
import sys, torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
print("x" * 150, flush=True)  # a long line: the output pane wraps it, it does not cut it
for step in range(400):
    x = torch.randn(2, 4)
    if step == 40:
        x[0, 0] = float("nan")
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    print("step", step, flush=True)
    # end of step
open(sys.argv[1]).read()  # trained: stay up until the test releases this FIFO (or stops the script)
"""


def live_script(tmp_path, name, text=SCRIPT):
    """The script's argv for ScriptProcess: it runs `text`, which ends waiting on a FIFO, so the
    child is still running whenever the UI reacts (no pacing: control pauses it at exact steps)."""
    script, hold = tmp_path / f"{name}.py", tmp_path / f"{name}.hold"
    script.write_text(text)
    os.mkfifo(hold)
    return ["run", str(script), str(hold)]


def _paused_at(app):
    return app.state.run.get("paused") if app.state is not None else None


async def test_break_on_error_pauses_at_the_step_of_the_finding(tmp_path):
    record = tmp_path / "live.sqlite"
    process = ScriptProcess(live_script(tmp_path, "train"), record)
    app = make_app(record, process)
    updates = []
    async with app.run_test(size=(120, 40), message_hook=lambda m: updates.append(m) if isinstance(m, RecordUpdated) else None) as pilot:
        await pilot.press("b")  # break on error
        assert "break on error" in status(app)
        await loaded(pilot, timeout=60, steps=1)
        await until(pilot, lambda: _paused_at(app) is not None, 60, lambda: status(app))
        # the NaN input at step 40 is an error: the script stops right after step 40, before step 41
        assert _paused_at(app) == 41 and app.state.steps[-1] == 40
        await until(pilot, lambda: app.state.step == 40 and "PAUSED" in status(app))
        assert any(f["check"] == "nonfinite" and f["step"] == 40 for f in app.state.findings)
        await pilot.press("s")  # exactly one more step
        await until(pilot, lambda: _paused_at(app) == 42, 30)
        assert app.state.steps[-1] == 41
        await pilot.press("p")  # resume
        await until(pilot, lambda: not app.paused and len(app.state.steps) >= 60, 60)
        log = app.query_one("#log")
        assert any("step 40" in str(line.text) for line in log.lines)
        width = log.scrollable_content_region.width
        assert max(line.cell_length for line in log.lines) <= width  # wrapped to the pane
        assert sum("x" * 20 in line.text for line in log.lines) >= 2
        await pilot.press("q")
        await until(pilot, lambda: app.screen.__class__.__name__ == "QuitScreen")
        await pilot.press("y")
    assert not process.running
    assert len(updates) >= 3


BREAK_EARLY = """
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(200):
    x = torch.randn(2, 4)
    if step == 2:
        x[0, 0] = float("nan")
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
"""


async def test_break_on_option_catches_step_2_and_every_new_error(tmp_path):
    script = tmp_path / "early.py"
    script.write_text(BREAK_EARLY)
    record = tmp_path / "early.sqlite"
    process = ScriptProcess(["run", "--break-on", "error", str(script)], record)
    app = make_app(record, process, break_on="error")
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            assert "break on error" in status(app)
            await until(pilot, lambda: _paused_at(app) is not None, 60, lambda: status(app))
            assert _paused_at(app) == 3 and app.state.steps[-1] == 2
            await pilot.press("p")
            await until(pilot, lambda: (_paused_at(app) or 0) > 3, 60, lambda: status(app))
            # the NaN gradients of step 2 made the weights NaN: a new error at step 3 breaks again
            assert _paused_at(app) == 4 and app.state.steps[-1] == 3
            assert any(f["step"] == 3 and f["severity"] == "error" for f in app.state.findings)
            await pilot.press("b", "b")  # warning, then off
            assert "break off" in status(app)
            await pilot.press("p")
            await until(pilot, lambda: app._exit_code is not None, 60)
            assert len(app.state.steps) == 200
            await pilot.press("q")
    finally:
        process.stop()


def test_break_on_needs_the_ui(run_cli, script):
    path = script(BREAK_EARLY)
    proc = run_cli("run", "--headless", "--break-on", "error", path)
    assert proc.returncode == 2 and "--break-on" in proc.stderr and "Traceback" not in proc.stderr


async def test_script_crash_keeps_the_ui_up_with_the_traceback(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT.replace("    # end of step", "    if step == 3:\n        raise RuntimeError('diverged')"))
    record = tmp_path / "crash.sqlite"
    app = make_app(record, ScriptProcess(["run", str(script)], record))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app._exit_code is not None, 60)
        await loaded(pilot, steps=4)
        text = "\n".join(str(line.text) for line in app.query_one("#log").lines)
        assert "Traceback" in text and "RuntimeError: diverged" in text
        assert "script exited (1)" in status(app)
        assert len(app.state.steps) == 4  # the record kept every step up to the crash
        assert "Traceback" in "\n".join(app.stderr_tail)  # printed again when the UI closes
        await pilot.press("e")  # export the shown step's graph from the UI
        exported = [record.with_name(f"crash-step3.{fmt}") for fmt in ("svg", "dot")]
        await until(pilot, lambda: any(p.exists() for p in exported), 60)
        await pilot.press("q")
    assert app.return_value == 1  # gradscope run under the UI exits with the script's status

    view = make_app(record)  # a crashed record, opened later, shows the script's error
    async with view.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: view.query("#log") and view.query_one("#log").lines)
        text = "\n".join(str(line.text) for line in view.query_one("#log").lines)
        assert "RuntimeError: diverged" in text
        assert "crashed" in status(view)


async def test_a_file_that_is_not_a_record_is_reported_not_fatal(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a record")
    app = make_app(bad)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: any("not a gradscope record" in str(n.message) for n in app._notifications))
        assert app.state is None and app.is_running


async def test_following_a_live_run_keeps_the_cursor_and_open_nodes(tmp_path):
    import threading

    path = tmp_path / "growing.sqlite"
    go_on = threading.Event()

    def train():
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gradscope.watch(model, opt, record=path, checks=False):
            for step in range(60):
                if step == 3:
                    go_on.wait(60)  # the test sets its place first
                opt.zero_grad()
                model(torch.randn(4, 4)).pow(2).mean().backward()
                opt.step()

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        app = make_app(path)
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot, steps=3, timeout=60)
            app.query_one("#views").active = "tab-params"
            table = app.query_one(ParamTable)
            table.focus()
            table.move_cursor(row=3)
            tree = app.query_one(AutogradTree)
            tree.root.children[0].expand()
            await until(pilot, lambda: tree.root.children[0].children)
            go_on.set()
            await until(pilot, lambda: len(app.state.steps) >= 60, 60)
            assert table.cursor_row == 3
            assert tree.root.children[0].is_expanded and tree.root.children[0].children
    finally:
        go_on.set()
        trainer.join()


async def test_repeated_blocks_fold_in_the_autograd_view(tmp_path):
    app = make_app(train(tmp_path / "deep.sqlite", Deep, 1, (2, 4)))
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        tree = app.query_one(AutogradTree)
        node, folds = tree.root.children[0], []
        for _ in range(12):  # follow the first input down, as a user expanding would
            await expand(pilot, node)
            if not node.children:
                break
            folds += [c for c in node.children if "repeats" in str(c.label)]
            node = node.children[0]
        assert folds, "30 identical blocks are not folded"
        assert "in blocks.#" in str(folds[0].label) or "AddBackward0" in str(folds[0].label)
        fold = folds[0]
        fold.expand()
        await until(pilot, lambda: fold.children)
        assert fold.children[0].allow_expand  # the fold opens at the last repeat


async def test_details_say_how_often_module_statistics_are_taken(tmp_path):
    """Past the dense start a module's statistics come from the last statistics step; the
    details say which step, and the interval the run was recorded with (from the record)."""
    steps = DEFAULTS.dense_steps + 3
    path = recorded_run(tmp_path / "run.sqlite", steps=steps)
    app = make_app(path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("down", "down")
        await until(pilot, lambda: "fc1  (module)" in str(app.query_one("#details-head").render()))
        shown = app.query_one("#details-stats")
        await until(pilot, lambda: isinstance(shown.content, Group))  # a caption over the table
        text = str(shown.content.renderables[0])
        last = max(s for s in range(steps) if s < DEFAULTS.dense_steps or s % DEFAULTS.stats_every == 0)
        assert last < steps - 1  # the last step took no module statistics
        assert f"statistics of step {last} (module statistics every {DEFAULTS.stats_every} steps)" in text


@pytest.mark.parametrize("settings", ['"every fifty"', '{"stats_every": "50"}', '{"stats_every": true}', "null"])
def test_details_of_a_record_with_odd_settings_say_only_periodic(tmp_path, settings):
    """What a record says of its settings is data: a value of the wrong type is not shown as
    an interval and breaks nothing."""
    steps = DEFAULTS.dense_steps + 3
    path = recorded_run(tmp_path / "run.sqlite", steps=steps)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE run SET value = ? WHERE key = 'settings'", (settings,))
    with gradscope.open_record(path) as record:
        details = read_details(record, "module", "fc1", steps - 1)
    assert details.stats_step is not None and details.stats_every is None


async def test_charts_of_a_long_run_draw_what_their_width_shows_and_keep_its_spikes():
    """plotext draws every point it is given, slowly (two lines of 100,000 points: seconds a
    frame, on the UI thread). A chart gets at most two points per column of its width, each
    column's lowest and highest, so a one-step spike or dip still shows, and the line ends at
    the last step; NaN/inf markers at most one per column, an isolated one kept."""
    from textual.app import App

    from gradscope.tui.state import Series
    from gradscope.tui.widgets.charts import SpeedChart, TrainingChart

    n = 100_000
    series = Series(steps=list(range(n)), loss=[1.0 + (i % 7) / 100 for i in range(n)],
                    lr=[0.1 * 0.5 ** (i // 25_000) for i in range(n)], speed=[20.0 + i % 3 for i in range(n)],
                    memory=[500.0] * n, nonfinite=[5, *range(90_000, n)])
    series.loss[31_337], series.loss[77_777], series.loss[-1] = 50.0, 0.001, 1.005  # the last: neither low nor high
    series.speed[12_345] = 0.5

    class Host(App):
        def compose(self):
            yield TrainingChart()
            yield SpeedChart()

    app = Host()
    async with app.run_test(size=(100, 40)):
        for chart, data in ((app.query_one(TrainingChart), (series, [], None)), (app.query_one(SpeedChart), (series,))):
            lines, marks = [], []
            chart.plt.plot = lambda xs, ys, **style: lines.append((list(xs), list(ys)))
            chart.plt.scatter = lambda xs, ys, **style: marks.append(list(xs))
            chart.show(*data)
            chart.render()
            width = chart.size.width
            assert lines and all(len(xs) <= 2 * max(width, 40) + 1 and xs == sorted(xs) for xs, _ in lines)
            if isinstance(chart, TrainingChart):
                (loss_x, loss), (_, lr) = lines
                assert 50.0 in loss and 0.001 in loss and (loss_x[-1], loss[-1]) == (n - 1, 1.005)
                assert set(lr) == {0.1, 0.05, 0.025, 0.0125}
                (marked,) = marks
                assert marked[0] == 5 and 90_000 in marked and len(marked) <= max(width, 40) + 1
            else:
                (_, speed), (_, memory) = lines
                assert 0.5 in speed and max(speed) == 22.0 and set(memory) == {500.0}


def growing_record(tmp_path, steps=8, cut=4):
    """A recorded run (`full`) and a copy of it as it was before step `cut` (`live`, its
    connection open); `grow()` adds the steps taken out, as a writer committing them would."""
    import shutil

    full = recorded_run(tmp_path / "full.sqlite", steps=steps)
    live = tmp_path / "live.sqlite"
    shutil.copy(full, live)
    conn = sqlite3.connect(live)
    conn.execute("DELETE FROM series")  # rows are taken out below: no listing may point at them
    for table in ("steps", "stats", "updates"):
        conn.execute(f"DELETE FROM {table} WHERE step >= ?", (cut,))
    conn.commit()

    def grow():
        conn.execute("ATTACH DATABASE ? AS full", (str(full),))
        for table in ("steps", "stats", "updates"):
            conn.execute(f"INSERT INTO {table} SELECT * FROM full.{table} WHERE step >= ?", (cut,))
        conn.commit()
        conn.execute("DETACH DATABASE full")

    return full, live, conn, grow


def test_the_poller_reads_only_the_steps_recorded_since_its_last_reading(tmp_path):
    """A live run's charts are read again at every commit: a reading adds the steps recorded
    since the last one (reading every step took seconds a time at 100,000 steps) and gives what
    reading the whole record gives; a state handed to the UI stays as it was. Should the record
    hold other steps than those read and those added, everything is read again."""
    from gradscope.record.reader import Record
    from gradscope.tui.state import read_series

    full, live, conn, grow = growing_record(tmp_path)
    reader = Reader(open_when_ready(live))
    first = reader.read(None)
    assert first.steps == [0, 1, 2, 3]
    grow()
    asked = []
    real_steps = reader.record.steps
    reader.record.steps = lambda **kwargs: asked.append(kwargs) or real_steps(**kwargs)
    second = reader.read(None)
    assert asked == [{"after": 3}]
    assert second.steps == list(range(8)) and first.steps == [0, 1, 2, 3] and len(first.series.loss) == 4
    with Record(full) as whole:
        assert second.series == read_series(whole) and not math.isnan(second.series.loss[7])
    conn.execute("DELETE FROM steps WHERE step = 2")  # not only added: read again whole
    conn.commit()
    asked.clear()
    third = reader.read(None)
    assert asked == [{"after": 7}, {}] and third.steps == [0, 1, 3, 4, 5, 6, 7]
    assert third.series.loss == [second.series.loss[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    reader.record.close()
    conn.close()


def test_details_histories_read_only_the_steps_recorded_since(tmp_path):
    """The details panel is read again at every commit of a live run: a parameter's gradient
    norms and update ratios over the run are read once, then the steps recorded since are
    added; the same as reading them whole. Another subject, or a record holding other steps,
    is read whole."""
    from gradscope.record.reader import Record
    from gradscope.tui.state import Histories

    full, live, conn, grow = growing_record(tmp_path)
    histories = Histories()
    with Record(live) as record:
        norms = read_details(record, "param", "fc1.weight", 3, histories).grad_norms
        assert len(norms) == 4
    grow()
    asked = []
    with Record(live) as record:
        real = record.stat_series, record.update_series
        record.stat_series = lambda *args, **kwargs: asked.append(kwargs["after"]) or real[0](*args, **kwargs)
        record.update_series = lambda *args, **kwargs: asked.append(kwargs["after"]) or real[1](*args, **kwargs)
        grown = read_details(record, "param", "fc1.weight", 7, histories)
        assert asked == [3, 3]
        other = read_details(record, "param", "fc2.weight", 7, histories)
        assert asked == [3, 3, None, None]
    with Record(full) as record:
        whole, whole_other = (read_details(record, "param", name, 7) for name in ("fc1.weight", "fc2.weight"))
    assert (grown.grad_norms, grown.ratios) == (whole.grad_norms, whole.ratios) and len(whole.ratios) == 8
    assert (other.grad_norms, other.ratios) == (whole_other.grad_norms, whole_other.ratios)
    conn.execute("DELETE FROM steps WHERE step = 2")
    conn.execute("DELETE FROM updates WHERE step = 2")
    conn.commit()
    with Record(live) as record:
        real = record.update_series
        record.update_series = lambda *args, **kwargs: asked.append(kwargs["after"]) or real(*args, **kwargs)
        again = read_details(record, "param", "fc2.weight", 7, histories)
    assert asked[-1] is None and again.ratios == [r for i, r in enumerate(whole_other.ratios) if i != 2]
    conn.close()
