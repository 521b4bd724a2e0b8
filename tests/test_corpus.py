"""The corpus of correct training scripts (tests/corpus): under `gradscope run` each one gets no
warning and no error, and ends with exactly the weights plain python gives it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CORPUS = Path(__file__).resolve().parent / "corpus"
SCRIPTS = sorted(p.name for p in CORPUS.glob("*.py"))


def _weights(path):
    return torch.load(path, weights_only=True)


def _assert_same(plain, watched, where=""):
    if isinstance(plain, dict):
        assert isinstance(watched, dict) and plain.keys() == watched.keys(), where
        for key in plain:
            _assert_same(plain[key], watched[key], f"{where}.{key}")
    elif isinstance(plain, torch.Tensor):
        assert torch.equal(plain, watched), f"{where} differs under gradscope"
    else:
        assert plain == watched, where


_PLAIN = """
import runpy, sys
for script, out in zip(sys.argv[1::2], sys.argv[2::2]):
    sys.argv = [script, out]
    runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory):
    """Every script's final weights under plain python (one process: torch is imported once)."""
    folder = tmp_path_factory.mktemp("plain")
    args = [a for name in SCRIPTS for a in (str(CORPUS / name), str(folder / f"{name}.pt"))]
    proc = subprocess.run([sys.executable, "-c", _PLAIN, *args], cwd=folder, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return {name: _weights(folder / f"{name}.pt") for name in SCRIPTS}


#: The parameter names some scripts must get: the trained model plain, other models prefixed
#: by their variable name, and every optimizer known from the start.
NAMES = {
    "gan.py": {"gen.main.0.weight", "gen.main.2.bias", "disc.main.0.weight", "disc.main.2.bias"},
    "lbfgs.py": {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
    "distillation.py": {"0.weight", "2.bias", "teacher.0.weight", "teacher.3.bias"},
    "ema_mean_teacher.py": {"0.weight", "3.bias", "teacher.0.weight", "teacher.3.bias"},
}


def test_the_corpus_is_there():
    assert len(SCRIPTS) >= 18


@pytest.mark.parametrize("name", SCRIPTS)
def test_correct_script_is_quiet_and_unchanged(name, tmp_path, run_cli, plain_weights):
    script = CORPUS / name
    watched = run_cli("run", "--headless", "--record", tmp_path / "r.sqlite", "--report",
                      tmp_path / "report.json", script, tmp_path / "watched.pt")
    assert watched.returncode == 0, watched.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    serious = [f"{f['check']} {f['severity']} at step {f['step']}: {f['subject']}: {f['message']}"
               for f in report["findings"] if f["severity"] in ("error", "warning")]
    assert serious == []
    names = {p["name"] for p in report["parameters"]}
    assert NAMES.get(name, set()) <= names
    assert not any(n.startswith("optimizer") for n in names)  # every parameter has its module's name
    assert all(o["first_step"] == 0 for o in report["optimizers"])  # known before they step
    noise = [line for line in watched.stderr.splitlines()
             if not line.startswith("gradscope: ") and line.split()[:1] not in (["info"], ["warning"], ["error"])]
    assert noise == []  # gradscope's summary only: no warning from torch about its hooks
    _assert_same(plain_weights[name], _weights(tmp_path / "watched.pt"))
