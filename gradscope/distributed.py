"""Runs under torchrun / torch.distributed: one record per rank, named so ranks find each other.

Rank and world size come from the environment torchrun sets (RANK, WORLD_SIZE), so nothing here
talks to the process group: gradscope adds no collective to the training loop. Records of one
job share a base name and differ by a ``-rank<N>`` suffix: `record_path` names this process's
record, `peer_paths` lists every rank's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_RANKED = re.compile(r"^(?P<base>.*)-rank(?P<rank>\d+)$")


def rank_and_world() -> tuple[int, int] | None:
    """(rank, world size) under torch.distributed launchers with more than one process."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 else None


def job_id() -> str:
    """A name the ranks of one job share: the rendezvous id, else the launcher's process id."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return run_id if run_id and run_id != "none" else f"job{os.getppid()}"


def ranked(path: Path, rank: int) -> Path:
    """`path` with ``-rank<N>`` before its suffix (unless it already names a rank)."""
    if _RANKED.match(path.stem):
        return path
    return path.with_name(f"{path.stem}-rank{rank}{path.suffix}")


def record_path(record: str | Path | None, label: str) -> Path:
    """Where this process records: `record`, or a fresh path under ``.gradscope/runs`` named for
    `label`; under torch.distributed, with this rank's ``-rank<N>`` (and a fresh path also names
    the job, so that the ranks' records sit side by side)."""
    from .record.paths import new_record_path

    ranks = rank_and_world()
    if ranks is None:
        return Path(record) if record else new_record_path(label)
    if record:
        return ranked(Path(record), ranks[0])
    return ranked(new_record_path(f"{label}-{job_id()}"), ranks[0])


def run_fields() -> dict:
    """The run fields that place this process in its job: ``rank`` (None alone) and ``world_size``."""
    ranks = rank_and_world()
    return {"rank": None if ranks is None else ranks[0], "world_size": 1 if ranks is None else ranks[1]}


def peer_paths(path: Path, world: int) -> list[Path]:
    """The records of every rank of the job that wrote `path` (rank order)."""
    match = _RANKED.match(path.stem)
    if match is None:
        return [path]
    return [path.with_name(f"{match['base']}-rank{r}{path.suffix}") for r in range(world)]


def unwrap(module):
    """The module a DistributedDataParallel / DataParallel / torch.compile wrapper trains."""
    seen = set()
    while id(module) not in seen:
        seen.add(id(module))
        name = type(module).__name__
        if name in ("DistributedDataParallel", "DataParallel") and hasattr(module, "module"):
            module = module.module
        elif name == "OptimizedModule" and hasattr(module, "_orig_mod"):
            module = module._orig_mod
    return module
