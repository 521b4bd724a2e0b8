"""Where records live by default: ``.gradscope/runs/`` under the working directory.

The folder carries a ``.gitignore`` of ``*`` (as pytest does for its cache), so records never
show up as untracked files. A generated name is only a proposal: the writer takes it
exclusively and moves on to ``<name>-2`` when another run got there first (`is_generated`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RUNS_DIR = Path(".gradscope") / "runs"
#: The start time that begins a generated record name (``<time>-<label>.sqlite``).
STAMP_FORMAT = "%Y%m%d-%H%M%S"

_generated: set[str] = set()


def _runs_dir() -> Path:
    runs = Path(os.path.abspath(RUNS_DIR))
    runs.mkdir(parents=True, exist_ok=True)
    ignore = runs.parent / ".gitignore"
    if not ignore.exists():
        try:
            ignore.write_text("# created by gradscope: records are not source\n*\n")
        except OSError:
            pass
    return runs


def new_record_path(label: str) -> Path:
    """A fresh record path: ``.gradscope/runs/<time>-<label>.sqlite`` (absolute)."""
    stamp = time.strftime(STAMP_FORMAT)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label) or "run"
    runs = _runs_dir()
    path = runs / f"{stamp}-{safe}.sqlite"
    n = 1
    while path.exists():
        n += 1
        path = runs / f"{stamp}-{safe}-{n}.sqlite"
    _generated.add(str(path))
    return path


def is_generated(path: Path) -> bool:
    """Whether `path` came from `new_record_path` (so another free name may replace it)."""
    return str(Path(os.path.abspath(path))) in _generated


def list_records(folder: Path = RUNS_DIR) -> list[Path]:
    """Records under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.sqlite"), key=lambda p: p.stat().st_mtime)


def check_record_target(path: str | Path, overwrite: bool = False) -> Path:
    """The absolute path `--record` may write to, checked before anything runs: a new path in a
    writable folder, or (with `overwrite`) an existing gradscope record. `GradscopeError`
    (one line) otherwise: nothing of the user's is ever replaced."""
    from ..errors import GradscopeError
    from .writer import is_record_file

    path = Path(os.path.abspath(path))
    if os.path.lexists(path):
        if path.is_symlink() or not path.is_file():
            raise GradscopeError(f"--record {path}: exists and is not a regular file; not replacing it")
        if not is_record_file(path):
            raise GradscopeError(f"--record {path}: exists and is not a gradscope record; not replacing it")
        if not overwrite:
            raise GradscopeError(f"--record {path}: a record is already there; --overwrite replaces it")
        if not os.access(path, os.W_OK):
            raise GradscopeError(f"--record {path}: not writable")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise GradscopeError(f"--record {path}: cannot create files in {folder}")
    return path


def check_output(path: str | Path, what: str) -> Path:
    """The absolute path of an output file (`what`: "the report", "the diagram"), checked
    before anything runs; `GradscopeError` (one line) when it cannot be written."""
    from ..errors import GradscopeError

    given, path = path, Path(os.path.abspath(path))
    problem = None
    if path.is_dir():
        problem = "is a directory"
    elif path.exists():
        if not os.access(path, os.W_OK):
            problem = "not writable"
    elif not path.parent.is_dir():
        problem = f"no such folder {path.parent}"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"cannot create files in {path.parent}"
    if problem:
        raise GradscopeError(f"cannot write {what} {given}: {problem}")
    return path
