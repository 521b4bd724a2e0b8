"""The command line through its real entry point: python -m gradscope and the console script."""

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

import gradscope
from gradscope.record import schema

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed_tutorial.py"

TRAIN = """
import sys, torch
from torch import nn
print("argv", sys.argv[1:], "name", __name__, "path0", sys.path[0])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    opt.zero_grad()
    loss = model(torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    opt.step()
{tail}
"""


def _report(path):
    return json.loads(Path(path).read_text())


def test_seed_tutorial_report_has_what_the_tutorial_printed(run_cli, tmp_path):
    proc = run_cli("run", "--report", "report.json", SEED, check=0)
    assert "conv1.bias.grad after backward" in proc.stdout
    assert "gradscope" not in proc.stdout  # the summary goes to stderr only
    assert "3 steps, 10 parameters" in proc.stderr
    report = _report(tmp_path / "report.json")
    assert set(report) >= {"run", "modules", "parameters", "graph", "steps", "findings"}
    params = {p["name"]: p for p in report["parameters"]}
    assert len(params) == 10
    assert params["conv1.weight"]["shape"] == [6, 1, 3, 3]
    assert params["fc1.weight"]["shape"] == [120, 576]
    assert params["fc1.weight"]["in_optimizer"] and params["fc1.weight"]["requires_grad"]
    modules = {m["name"]: m for m in report["modules"]}
    assert modules["fc1"]["type"] == "Linear"
    assert modules["fc1"]["calls"][0]["inputs"][0]["shape"] == [1, 576]
    # the chain the tutorial printed through grad_fn.next_functions
    graph = report["graph"]
    ops = {n["id"]: n for n in graph["nodes"]}
    root = next(n for n in graph["nodes"] if n["id"] == "n0")
    assert root["op"] == "MseLossBackward0"
    children = lambda nid: sorted(
        (e for e in graph["edges"] if e["source"] == nid), key=lambda e: e["index"]
    )
    addmm = ops[children("n0")[0]["target"]]
    assert addmm["op"] == "AddmmBackward0" and addmm["scope"] == "fc3"
    assert [ops[e["target"]]["op"] for e in children(addmm["id"])] == [
        "AccumulateGrad", "ReluBackward0", "TBackward0"
    ]
    # conv1.bias has no gradient before the first backward and has one after it
    steps = report["steps"]
    assert steps[0]["zero_grad"] == [{"by": "", "set_to_none": True}]
    assert params["conv1.bias"]["grad"]["count"] == 6 and params["conv1.bias"]["grad"]["norm"] > 0
    assert report["findings"] == []
    assert report["run"]["status"] == "finished" and report["run"]["exit_code"] == 0


def test_report_leaves_what_a_step_did_not_measure_null(run_cli, script, tmp_path):
    """Past the dense steps, a gradient's latest figures are its norm only: the rest is null, not
    "nan" (which would claim the gradient held NaNs)."""
    path = script(TRAIN.format(tail=""))
    run_cli("run", "--headless", "--stats-every", "10", "--report", "r.json", path, "23", check=0)
    grad = {p["name"]: p["grad"] for p in _report(tmp_path / "r.json")["parameters"]}["0.weight"]
    assert grad["step"] == 22 and grad["norm"] > 0 and grad["nonfinite"] == 0
    assert [grad[k] for k in ("mean", "std", "min", "max", "zeros")] == [None] * 5


def test_script_sees_argv_path_and_main(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail=""))
    proc = run_cli("run", "--record", "r.sqlite", path, "2", "--flag", check=0)
    assert f"argv ['2', '--flag'] name __main__ path0 {tmp_path}" in proc.stdout
    proc = run_cli("report", "r.sqlite", check=0)
    assert len(json.loads(proc.stdout)["steps"]) == 2


def test_module_mode(run_cli, script, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(TRAIN.format(tail=""))
    proc = run_cli("run", "--report", "r.json", "-m", "pkg.train", "4", check=0)
    assert "argv ['4']" in proc.stdout
    assert len(_report(tmp_path / "r.json")["steps"]) == 4


def test_crash_keeps_exit_code_traceback_and_record(run_cli, script, tmp_path):
    path = script(TRAIN.format(tail="raise ValueError('diverged at the end')"))
    proc = run_cli("run", "--record", "r.sqlite", "--report", "r.json", path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: diverged at the end" in proc.stderr
    assert "runpy" not in proc.stderr and "gradscope/launch.py" not in proc.stderr
    assert f'File "{path}"' in proc.stderr
    report = _report(tmp_path / "r.json")
    assert report["run"]["status"] == "crashed" and len(report["steps"]) == 3


def test_exit_code_passes_through(run_cli, script):
    path = script(TRAIN.format(tail="sys.exit(7)"))
    assert run_cli("run", path).returncode == 7


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.py", "no such file"),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "data.bin").write_bytes(b"\x00\x01binary") and p / "data.bin", "not a Python script"),
        (lambda p: (p / "notes.txt").write_text("this is: not python") and p / "notes.txt", "not a Python script"),
    ],
)
def test_bad_script_gets_one_line_error(run_cli, tmp_path, make, message):
    proc = run_cli("run", make(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("gradscope: error:") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".gradscope").exists()  # nothing recorded for nothing run


def test_missing_module_and_no_target(run_cli):
    proc = run_cli("run", "-m", "no_such_module_here")
    assert proc.returncode == 2 and "no module named 'no_such_module_here'" in proc.stderr
    proc = run_cli("run")
    assert proc.returncode == 2 and "give a SCRIPT or -m MODULE" in proc.stderr


def test_forward_only_script_without_parameters(run_cli, script, tmp_path):
    path = script(
        "import torch\nfrom torch import nn\n"
        "print(nn.Softmax(-1)(torch.randn(2, 3)).shape)\n"
        "m = nn.Linear(2, 2)\nwith torch.no_grad():\n    m(torch.randn(1, 2))\n"
        "print(nn.Flatten()(torch.arange(6).reshape(2, 3)))\n"
    )
    proc = run_cli("run", "--report", "r.json", path, check=0)
    assert "torch.Size([2, 3])" in proc.stdout
    report = _report(tmp_path / "r.json")
    assert {m["type"] for m in report["modules"]} >= {"Softmax", "Linear", "Flatten"}
    flatten = next(m for m in report["modules"] if m["type"] == "Flatten")
    assert flatten["calls"][0]["outputs"][0]["dtype"] == "int64"


def test_record_errors_are_one_line(run_cli, tmp_path):
    (tmp_path / "text.sqlite").write_text("hello")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    newer = sqlite3.connect(tmp_path / "newer.sqlite")
    schema.create(newer)
    newer.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    newer.commit()
    newer.close()
    good = sqlite3.connect(tmp_path / "cut.sqlite")
    schema.create(good)
    good.close()
    data = (tmp_path / "cut.sqlite").read_bytes()
    (tmp_path / "cut.sqlite").write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    cases = {
        "absent.sqlite": "no such record",
        "text.sqlite": "not an SQLite file",
        "other.sqlite": "an SQLite file of another program",
        "newer.sqlite": "written by a newer gradscope",
        "cut.sqlite": "corrupt record",
        ".": "is a directory",
    }
    for name, message in cases.items():
        proc = run_cli("report", tmp_path / name)
        assert proc.returncode == 2, name
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_runs_lists_records(run_cli, script, tmp_path):
    assert "no records" in run_cli("runs", check=0).stderr
    run_cli("run", script(TRAIN.format(tail="")), check=0)
    out = run_cli("runs", check=0).stdout
    assert "-train.sqlite" in out and "finished" in out and "3 steps" in out


def test_demo_and_bug(run_cli, tmp_path):
    proc = run_cli("demo", "--steps", "30", "--report", "d.json", check=0)
    assert "demo: step 30/30" in proc.stderr
    report = _report(tmp_path / "d.json")
    assert len(report["steps"]) == 30 and report["run"]["mode"] == "demo"
    assert {p["name"] for p in report["parameters"]} >= {"conv1.weight", "fc3.bias"}
    proc = run_cli("demo", "--steps", "35", "--bug", "nan", "--report", "n.json", check=0)
    losses = [s["loss"] for s in _report(tmp_path / "n.json")["steps"]]
    assert "nan" in losses[30:]  # JSON carries non-finite numbers as strings


def test_help_teaches_and_console_script_works(run_cli):
    out = run_cli("--help", check=0).stdout
    for word in ("run", "demo", "report", "runs", "examples:"):
        assert word in out
    assert "-m MODULE" in run_cli("run", "--help", check=0).stdout
    exe = shutil.which("gradscope", path=str(Path(sys.executable).parent))
    assert exe is not None
    import subprocess

    assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.startswith("gradscope ")


def test_hard_crash_keeps_committed_steps(run_cli, script, tmp_path):
    killed_once_recorded = """
import os, signal, time, gradscope
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # until the recorder has committed the three steps
    with gradscope.open_record("r.sqlite") as record:
        if len(record.step_numbers()) == 3:
            break
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""
    path = script(TRAIN.format(tail=killed_once_recorded))
    proc = run_cli("run", "--record", "r.sqlite", path)
    assert proc.returncode != 0
    report = json.loads(run_cli("report", "r.sqlite", check=0).stdout)
    assert len(report["steps"]) == 3 and report["run"]["status"] == "killed"


def test_view_and_export_reject_bad_records_in_one_line(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("not a record")
    for command in (["view", "notes.txt"], ["export", "notes.txt", "-o", "g.dot"], ["view", "missing.sqlite"]):
        proc = run_cli(*command)
        assert proc.returncode == 2, command
        assert proc.stderr.startswith("gradscope: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_usage_errors_and_unwritable_outputs_are_one_line(run_cli, tmp_path):
    proc = run_cli()
    assert proc.returncode == 2 and "COMMAND" in proc.stdout  # no command: the help
    for args, message in (
        (["bogus"], "invalid choice: 'bogus'"),
        (["run", "--fail-on", "bad", "x.py"], "invalid choice: 'bad'"),
        (["report", "r.sqlite", "-o", "nodir/x.json"], "cannot write the report nodir/x.json"),
        (["report", "r.sqlite", "-o", "."], "cannot write the report ."),
        (["export", "r.sqlite", "-o", "g.dot"], "no steps recorded"),
    ):
        if not (tmp_path / "r.sqlite").exists():
            empty = sqlite3.connect(tmp_path / "r.sqlite")
            schema.create(empty)
            empty.close()
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("gradscope"), proc.stderr
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "g.dot").exists()


def test_runs_lists_an_unreadable_record_and_goes_on(run_cli, tmp_path):
    runs = tmp_path / ".gradscope" / "runs"
    runs.mkdir(parents=True)
    (runs / "broken.sqlite").write_text("not a record")
    proc = run_cli("runs", check=0)
    assert "broken.sqlite  unreadable:" in proc.stdout and "not an SQLite file" in proc.stdout


def test_run_takes_every_global_module_hook_out_on_light_steps(run_cli, script, tmp_path):
    """Under ``gradscope run`` the attaching hooks go out with the session's on light steps: the
    model's inner calls take torch's fast path there, and the loss module the script calls
    after the model is still attached, from the steps that see every call."""
    path = script(
        "import torch\nfrom torch import nn\nfrom torch.nn.modules import module as m\n"
        "class Probe(nn.Module):\n"
        "    seen = []\n"
        "    def forward(self, x):\n"
        "        Probe.seen.append(bool(m._global_forward_pre_hooks or m._global_forward_hooks))\n"
        "        return x\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(4, 4), Probe(), nn.Linear(4, 1))\n"
        "loss_fn = nn.MSELoss()\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(24):\n"
        "    opt.zero_grad()\n"
        "    loss_fn(model(torch.randn(3, 4)), torch.zeros(3, 1)).backward()\n"
        "    opt.step()\n"
        "print('seen', ''.join('1' if s else '0' for s in Probe.seen))\n"
    )
    proc = run_cli("run", "--headless", "--no-checks", "--stats-every", "1000", "--graph-every", "0",
                   "--record", tmp_path / "r.sqlite", path, check=0)
    assert "seen " + "1" * 20 + "0" * 4 in proc.stdout
    record = gradscope.open_record(tmp_path / "r.sqlite")
    assert {c["module"] for c in record.step(19).calls} >= {"", "0", "1", "2", "MSELoss"}
    assert [c["module"] for c in record.step(22).calls] == [""] and not record.step(22).described
