"""The command line protects the user's files and terminal and keeps the script's status:
paths checked before anything runs, resolved before the script can chdir, signals that still
close the record, doctored records and hostile names answered in one inert line."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


TRAIN = """
import os, sys, torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    opt.zero_grad()
    model(torch.randn(16, 4)).pow(2).mean().backward()
    opt.step()
print("ran", flush=True)
{tail}
"""


def _one_error_line(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradscope: error:"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "ran" not in proc.stdout  # refused before the script ran


def test_record_never_replaces_what_is_not_a_record(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail=""))
    precious = script("print('my own script')\n", name="precious.py")
    _one_error_line(run_cli("run", "--headless", "--record", precious, path), "not a gradscope record")
    assert precious.read_text() == "print('my own script')\n"
    _one_error_line(run_cli("run", "--headless", "--record", "/dev/null", path), "not a regular file")
    assert Path("/dev/null").is_char_device()
    _one_error_line(run_cli("run", "--headless", "--record", tmp_path, path), "not a regular file")


def test_an_existing_record_is_replaced_only_with_overwrite(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail=""))
    run_cli("run", "--headless", "--record", "r.sqlite", path, check=0)
    _one_error_line(run_cli("run", "--headless", "--record", "r.sqlite", path), "--overwrite")
    proc = run_cli("run", "--headless", "--overwrite", "--record", "r.sqlite", path, check=0)
    assert "ran" in proc.stdout


def test_unwritable_paths_are_refused_before_the_script_runs(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail=""))
    missing = tmp_path / "no" / "such"
    _one_error_line(run_cli("run", "--headless", "--report", missing / "r.json", path), "cannot write the report", "no such folder")
    _one_error_line(run_cli("run", "--headless", "--report", tmp_path, path), "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_error_line(run_cli("run", "--headless", "--record", blocker / "r.sqlite", path), "--record")
    run_cli("run", "--headless", "--record", "r.sqlite", path, check=0)
    _one_error_line(run_cli("report", "r.sqlite", "-o", missing / "r.json"), "cannot write the report", "no such folder")
    _one_error_line(run_cli("export", "r.sqlite", "-o", missing / "g.dot"), "cannot write the diagram", "no such folder")


def test_report_that_fails_at_the_end_keeps_the_script_status(run_cli, script, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = script(TRAIN.format(tail=f"import shutil; shutil.rmtree({str(out)!r}); sys.exit(4)"))
    proc = run_cli("run", "--headless", "--report", out / "r.json", path)
    assert proc.returncode == 4
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("gradscope: error:")]
    assert len(errors) == 1 and "report was not written" in errors[0]


def test_relative_paths_survive_a_chdir(run_cli, script, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    path = script(TRAIN.format(tail="os.chdir('elsewhere')"))
    proc = run_cli("run", "--headless", "--record", "r.sqlite", "--report", "r.json", path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["run"]["steps"] == 3
    assert (tmp_path / "r.sqlite").exists() and not (tmp_path / "elsewhere" / "r.json").exists()


def _run_until_signalled(tmp_path, script_text, sig, presses, ready="ran"):
    path = tmp_path / "train.py"
    path.write_text(script_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradscope", "run", "--headless", "--record", "r.sqlite", "--report", "r.json",
         str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while proc.stdout.readline().strip() != ready:
            assert proc.poll() is None, proc.stderr.read()
        for _ in range(presses):
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, err


BUSY = TRAIN.format(tail="while True:\n    sum(range(1000))")
# the script's KeyboardInterrupt handler runs while the second Ctrl-C arrives
SLOW_EXIT = TRAIN.format(tail="""
import signal, threading, time
def press():  # Ctrl-C pressed again and again until gradscope has written the report
    while not os.path.exists("r.json"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0)  # let the main thread run between presses
try:
    print("looping", flush=True)
    while True:
        sum(range(1000))
except KeyboardInterrupt:
    threading.Thread(target=press, daemon=True).start()
    raise
""")


@pytest.mark.parametrize("text, ready", [(BUSY, "ran"), (SLOW_EXIT, "looping")], ids=["once", "again"])
def test_ctrl_c_leaves_an_interrupted_record_and_a_report(tmp_path, text, ready):
    code, err = _run_until_signalled(tmp_path, text, signal.SIGINT, 1, ready)
    assert code == 130, err
    assert "gradscope/launch.py" not in err and "KeyboardInterrupt" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["status"] == "interrupted" and report["run"]["steps"] == 3


def test_sigterm_leaves_a_killed_record_and_a_report(tmp_path):
    code, err = _run_until_signalled(tmp_path, BUSY, signal.SIGTERM, 1)
    assert code == -signal.SIGTERM, err  # the process still dies of SIGTERM, as under python
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["status"] == "killed" and report["run"]["steps"] == 3
    assert not (tmp_path / "r.sqlite-wal").exists()


HOSTILE = "evil\x1b]52;c;aGk=\x07\x1b[2J\x1b]0;pwned\x07"


def test_control_characters_never_reach_the_terminal(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail=f"""
m = nn.Linear(2, 2)
net = nn.Sequential()
net.add_module({HOSTILE!r}, m)
o = torch.optim.SGD(net.parameters(), lr=0.1)
with torch.no_grad():
    m.weight[0, 0] = float('nan')
for _ in range(2):
    o.zero_grad(); net(torch.ones(1, 2)).sum().backward(); o.step()
"""), name="train\x1b[2J.py")
    proc = run_cli("run", "--headless", path)
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "evil\\x1b]52" in proc.stderr  # shown, escaped
    runs = run_cli("runs", check=0)
    assert "\x1b" not in runs.stdout and "train\\x1b[2J" in runs.stdout
    bad = run_cli("report", "missing\x1b[2J.sqlite")
    assert "\x1b" not in bad.stderr and bad.returncode == 2


def _doctor(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("sql, message", [
    ("UPDATE run SET value = '{not json' WHERE key = 'status';", "corrupt record"),
    ("UPDATE run SET value = '" + "[" * 100000 + "' WHERE key = 'target';", "corrupt record"),
    ("DROP TABLE steps; CREATE VIEW steps AS WITH RECURSIVE r(step) AS (SELECT 0 UNION ALL"
     " SELECT step + 1 FROM r) SELECT step, 0 AS time, 0 AS backwards, '[]' AS optimizer_steps,"
     " '[]' AS zero_grad, '[]' AS eval_modules, '{}' AS lrs, 0 AS calls FROM r;", "unexpected view"),
    ("DROP TABLE findings; CREATE TABLE findings (id INTEGER);", "corrupt record"),
])
def test_doctored_records_give_one_line(run_cli, script, tmp_path, sql, message):
    path = script(TRAIN.format(tail=""))
    run_cli("run", "--headless", "--record", "r.sqlite", path, check=0)
    _doctor(tmp_path / "r.sqlite", sql)
    for command in (["report", "r.sqlite"], ["export", "r.sqlite", "-o", "g.dot"]):
        proc = run_cli(*command)
        _one_error_line(proc, message)
    (tmp_path / ".gradscope" / "runs").mkdir(parents=True)
    os.replace(tmp_path / "r.sqlite", tmp_path / ".gradscope" / "runs" / "r.sqlite")
    proc = run_cli("runs")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr


def test_bad_settings_are_refused_with_the_known_keys(run_cli, script):
    path = script(TRAIN.format(tail=""))
    for option, value in (("--graph-every", "-5"), ("--sample", "-1"), ("--stats-every", "0")):
        proc = run_cli("run", "--headless", option, value, path)
        assert proc.returncode == 2 and f"argument {option}" in proc.stderr and "ran" not in proc.stdout
    proc = run_cli("run", "--headless", "--set", "exploding-grad.ratoi=3", path)
    _one_error_line(proc, "exploding-grad.ratoi", "growth, patience, ratio")
    proc = run_cli("run", "--headless", "--set", "exploding-grd.ratio=3", path)
    _one_error_line(proc, "exploding-grd", "exploding-grad")
    assert run_cli("run", "--headless", "--set", "exploding-grad.ratio=3", path).returncode == 0
