"""The record never costs the user's run anything: a full disk, a stalled or failing writer, a
killed process, read-only storage, a name SQLite cannot encode. Conditions are created for
real (a small tmpfs when root) or injected into the writer; waits are for conditions."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope.record import writer as writer_module
from gradscope.record.reader import open_record
from waiting import wait_for

STOP_LINE = "recording stopped, training continues"

TRAIN = """
import sys, torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(int(sys.argv[1])):
    opt.zero_grad()
    loss = model(torch.randn(8, 64)).pow(2).mean()
    loss.backward()
    opt.step()
print("trained", flush=True)
{tail}
"""


@contextlib.contextmanager
def _small_disk(folder: Path, size: str):
    """A tmpfs of `size` at `folder` (needs root; the test is skipped with the reason otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _model_and_opt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def _train(model, opt, steps, nan_at=None):
    for step in range(steps):
        opt.zero_grad()
        x = torch.randn(4, 8)
        if step == nan_at:
            x[0, 0] = float("nan")
        model(x).pow(2).mean().backward()
        opt.step()


def test_full_disk_for_real_stops_recording_once_and_training_finishes(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail="sys.exit(5)"))
    with _small_disk(tmp_path / "small", "640k") as disk:
        proc = run_cli("run", "--headless", "--record", disk / "r.sqlite", path, "400")
        assert proc.returncode == 5, proc.stderr  # the script's own status
        assert "trained" in proc.stdout
        assert proc.stderr.count(STOP_LINE) == 1, proc.stderr
        line = next(l for l in proc.stderr.splitlines() if STOP_LINE in l)
        assert line.startswith(f"gradscope: record {disk / 'r.sqlite'}: ") and "full" in line
        assert "Traceback" not in proc.stderr
        assert "recording stopped at step" in proc.stderr  # the summary says what the record lacks
        with open_record(disk / "r.sqlite") as record:  # what was written before stays readable
            assert 0 < len(record.step_numbers()) < 400


def _inject(monkeypatch, fail_from=None, block: threading.Event | None = None):
    original = writer_module.RecordWriter._on_step

    def on_step(self, conn, snapshot):
        if block is not None:
            block.wait()
        if fail_from is not None and snapshot.data.step >= fail_from:
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, conn, snapshot)

    monkeypatch.setattr(writer_module.RecordWriter, "_on_step", on_step)


def test_injected_write_error_keeps_judging_in_memory(monkeypatch, tmp_path, capfd):
    _inject(monkeypatch, fail_from=5)
    model, opt = _model_and_opt()
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite")
    _train(model, opt, 30, nan_at=20)
    session.close()
    writer = session._writer
    err = capfd.readouterr().err
    assert err.count(STOP_LINE) == 1 and "disk I/O error" in err
    assert writer.stopped == "disk I/O error" and writer.stopped_at == 5
    assert writer.dropped == {writer_module.DROP_STOPPED: 25}
    # the NaN after the stop was still judged
    assert any(f["check"] == "nonfinite" for f in writer.unrecorded_findings)
    with open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == list(range(5))
        run = record.run()  # the storage answered again at close: the record says how it ended
        assert run["recording_stopped"] == "disk I/O error" and run["recording_stopped_at"] == 5


def _count_commits(monkeypatch) -> list[int]:
    commits = []
    original = writer_module._Connection.commit

    def commit(self):
        original(self)
        commits.append(1)

    monkeypatch.setattr(writer_module._Connection, "commit", commit)
    return commits


def test_steps_are_committed_together_and_all_reach_the_record(monkeypatch, tmp_path):
    commits = _count_commits(monkeypatch)
    monkeypatch.setattr(writer_module, "COMMIT_EVERY", 600.0)  # only what must go in at once
    model, opt = _model_and_opt()
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite")
    _train(model, opt, 30)
    session.close()
    assert len(commits) < 10, len(commits)  # one per step before
    with open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == list(range(30)) and record.run()["status"] == "finished"


def test_an_idle_recorder_commits_what_it_wrote(tmp_path):
    """Steps written within `COMMIT_EVERY` of each other go in together; once no more come, a
    reader of the live record sees them without waiting for the next step or the close."""
    model, opt = _model_and_opt()
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite")
    try:
        _train(model, opt, 3)
        opt.zero_grad()  # the next step begins: the third one is complete

        def seen():
            with open_record(tmp_path / "r.sqlite") as record:
                return record.step_numbers() == [0, 1, 2] and record.run()["steps"] == 3  # counted with them

        wait_for(seen, "the three steps in the live record", timeout=60)
    finally:
        session.close()


@pytest.mark.parametrize("steps", [12, 6], ids=["steps after it", "the last step"])
def test_a_step_that_fails_is_undone_alone_among_uncommitted_ones(monkeypatch, tmp_path, steps):
    """Step 5 fails half-written: its rows are undone, the steps around it in the same
    transaction stay, and the failure is a finding, committed with the steps before it (the
    record counts them, even when no step comes after)."""
    original = writer_module.RecordWriter._on_step

    def on_step(self, conn, snapshot):
        original(self, conn, snapshot)
        if snapshot.data.step == 5:
            raise RuntimeError("half-written")

    monkeypatch.setattr(writer_module.RecordWriter, "_on_step", on_step)
    monkeypatch.setattr(writer_module, "COMMIT_EVERY", 600.0)
    model, opt = _model_and_opt()
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite")
    _train(model, opt, steps)
    session.close()
    assert session._writer.dropped == {writer_module.DROP_FAILED: 1}
    kept = [s for s in range(steps) if s != 5]
    with open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == kept and record.run()["steps"] == kept[-1] + 1
        assert record.stats(step=5) == [] and record.updates(step=5) == []
        assert any("half-written" in f.message for f in record.findings())


def test_stalled_writer_never_blocks_training_and_close_gives_up(monkeypatch, tmp_path, capfd):
    gate = threading.Event()
    _inject(monkeypatch, block=gate)
    monkeypatch.setattr(writer_module, "STALL_SECONDS", 1.0)
    model, opt = _model_and_opt()
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False)
    steps = writer_module.MAX_PENDING + 100
    _train(model, opt, steps)  # would hang at MAX_PENDING + 1 if sending waited
    writer = session._writer
    assert writer.dropped[writer_module.DROP_BEHIND] >= steps - writer_module.MAX_PENDING - 1
    session.close()  # returns although the writer never progresses
    assert STOP_LINE in capfd.readouterr().err
    gate.set()


def test_slow_writer_drops_are_counted_in_record_summary_and_report(monkeypatch, tmp_path):
    gate = threading.Event()
    _inject(monkeypatch, block=gate)
    model, opt = _model_and_opt()
    session = gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False)
    steps = writer_module.MAX_PENDING + 40
    _train(model, opt, steps)
    behind = session._writer.dropped[writer_module.DROP_BEHIND]
    assert behind >= 39
    gate.set()
    session.close()
    from gradscope import report, summary

    with open_record(tmp_path / "r.sqlite") as record:
        assert len(record.step_numbers()) == steps - behind
        run = record.run()
        assert run["dropped_steps"] == behind
        assert run["dropped"] == {writer_module.DROP_BEHIND: behind}
        text = summary.summarize_record(record)
        assert f"{behind} steps dropped ({writer_module.DROP_BEHIND})" in text
        assert report.build(record)["run"]["dropped_steps"] == behind


def test_a_killed_run_loses_only_unwritten_steps_and_is_recovered_on_first_open(script, tmp_path):
    path = script(TRAIN.format(tail="sys.stdin.read()"))
    proc = subprocess.Popen([sys.executable, "-m", "gradscope", "run", "--headless", "--record", "r.sqlite",
                             path, "30"], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "trained"

        def written():
            with open_record(tmp_path / "r.sqlite") as record:  # live: read as it is, not recovered
                return len(record.step_numbers()) == 30

        wait_for(written, "the recorder to write 30 steps")
        assert (tmp_path / "r.sqlite-wal").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    with open_record(tmp_path / "r.sqlite") as record:
        assert len(record.step_numbers()) == 30
        assert record.run()["status"] == "killed"
    assert not (tmp_path / "r.sqlite-wal").exists() and not (tmp_path / "r.sqlite-shm").exists()
    shutil.copy(tmp_path / "r.sqlite", tmp_path / "copy.sqlite")  # the file alone is the record
    with open_record(tmp_path / "copy.sqlite") as record:
        assert len(record.step_numbers()) == 30


def _journal_mode_byte(path: Path) -> int:
    return path.read_bytes()[18]  # 1: rollback journal, 2: WAL


def test_finished_record_is_one_file_and_reads_on_read_only_storage(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail=""))
    run_cli("run", "--headless", "--record", "r.sqlite", "--report", "r.json", path, "3", check=0)
    run_cli("report", "r.sqlite", "-o", "again.json", check=0)
    run_cli("export", "r.sqlite", "-o", "g.dot", check=0)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(("-wal", "-shm", "-journal"))]
    assert leftovers == []
    assert _journal_mode_byte(tmp_path / "r.sqlite") == 1
    with _small_disk(tmp_path / "ro", "2m") as disk:
        shutil.copy(tmp_path / "r.sqlite", disk / "r.sqlite")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        proc = run_cli("report", disk / "r.sqlite", check=0)
        assert len(json.loads(proc.stdout)["steps"]) == 3


def test_lone_surrogate_in_a_name_loses_nothing_else(tmp_path):
    model, opt = _model_and_opt()
    model.add_module("\udcff", nn.Identity())
    model.forward = lambda x, m=model: m[2](m[1](m[0](m[3](x))))
    with gradscope.watch(model, opt, record=tmp_path / "r.sqlite", checks=False):
        _train(model, opt, 4)
    with open_record(tmp_path / "r.sqlite") as record:
        assert record.step_numbers() == [0, 1, 2, 3]
        names = {m["name"] for m in record.modules()}
        assert {"0", "2", "\\udcff"} <= names
        assert {"0.weight", "2.bias"} <= {p["name"] for p in record.parameters()}
        assert [f for f in record.findings() if f["check"] == "internal-error"] == []
        assert {c["module"] for c in record.calls(step=3)} >= {"\\udcff", "0"}


def test_zero_step_report_has_steps(run_cli, script, tmp_path):
    path = script("print('nothing to train')\n")
    run_cli("run", "--headless", "--report", "r.json", path, check=0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["steps"] == 0 and report["steps"] == []


def test_default_names_are_taken_exclusively(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from gradscope.record.paths import new_record_path

    model, opt = _model_and_opt()
    proposed = new_record_path("watch")
    # another process takes the same name before this run creates its record
    other = gradscope.watch(nn.Linear(2, 2), record=proposed, checks=False)
    other.close()
    before = proposed.read_bytes()
    sessions = [gradscope.watch(model, opt, record=proposed, checks=False)]
    sessions += [gradscope.watch(model, opt, checks=False) for _ in range(3)]
    for s in sessions:
        s.close()
    paths = {s.path for s in sessions} | {proposed}
    assert len(paths) == 5 and proposed.read_bytes() == before
    assert (tmp_path / ".gradscope" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_writer_refuses_to_replace_what_is_not_a_record(tmp_path):
    precious = tmp_path / "notes.sqlite"
    precious.write_text("my notes")
    with pytest.raises(OSError, match="not a gradscope record"):
        gradscope.watch(nn.Linear(2, 2), record=precious, checks=False)
    assert precious.read_text() == "my notes"
