import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_cli(tmp_path):
    """Run gradscope's real entry point (python -m gradscope) in a fresh working directory."""

    def run(*args, cwd=None, check=None, env=None):
        proc = subprocess.run(
            [sys.executable, "-m", "gradscope", *map(str, args)],
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=600,
        )
        if check is not None:
            assert proc.returncode == check, proc.stderr
        return proc

    return run


@pytest.fixture
def script(tmp_path):
    """Write a Python script into the test's folder and return its path."""

    def write(text, name="train.py"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
