"""Where records live by default: ``.gradscope/runs/`` under the working directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

RUNS_DIR = Path(".gradscope") / "runs"


def new_record_path(label: str) -> Path:
    """A fresh record path: ``.gradscope/runs/<time>-<label>.sqlite``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label) or "run"
    path = RUNS_DIR / f"{stamp}-{safe}.sqlite"
    n = 1
    while path.exists():
        n += 1
        path = RUNS_DIR / f"{stamp}-{safe}-{n}.sqlite"
    return Path(os.path.abspath(path))


def list_records(folder: Path = RUNS_DIR) -> list[Path]:
    """Records under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.sqlite"), key=lambda p: p.stat().st_mtime)
