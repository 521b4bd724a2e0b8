"""Runs under torchrun / torch.distributed: one record per rank, named so ranks find each other.

Rank and world size come from the environment torchrun sets (RANK, WORLD_SIZE), so nothing here
talks to the process group: gradscope adds no collective to the training loop. Records of one
job share a base name and differ by a ``-rank<N>`` suffix: `record_path` names this process's
record, `peer_paths` lists every rank's.

Sharded parameters (FSDP2's DTensors) are summarized per rank, on the rank's own shard; the run
field ``placements`` maps each of them to its layout (see `gradscope.trace.shards.placement`).
Whoever holds the records of every rank combines the shards' figures into the global
parameter's (`combine`); ranks whose copies of a parameter should be identical are found by
`same_values`.
"""

from __future__ import annotations

import glob
import math
import os
import re
import time
from pathlib import Path

from .record.paths import STAMP_FORMAT

_RANKED = re.compile(r"^(?P<base>.*)-rank(?P<rank>\d+)$")
_STAMPED = re.compile(r"^(?P<stamp>\d{8}-\d{6})-(?P<rest>.+)$")
#: how far apart (seconds) the ranks of one job may read the clock that names their records
_STAMP_SPREAD = 120


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
    """The records of every rank of the job that wrote `path` (rank order).

    Records named by default (``<time>-<label>-<job>-rank<N>``) carry the time each rank
    started, which may differ by a second or more between ranks: a rank whose record is not
    under this rank's time is looked for under a nearby one (same label and job)."""
    match = _RANKED.match(path.stem)
    if match is None:
        return [path]
    paths = [path.with_name(f"{match['base']}-rank{r}{path.suffix}") for r in range(world)]
    return [p if p.exists() else _restamped(p) or p for p in paths]


def _restamped(path: Path) -> Path | None:
    match = _STAMPED.match(path.stem)
    if match is None:
        return None
    mine = _started(match["stamp"])
    best = None
    for other in path.parent.glob(f"*-{glob.escape(match['rest'])}{path.suffix}"):
        found = _STAMPED.match(other.stem)
        if found is None or found["rest"] != match["rest"]:
            continue
        gap = abs(_started(found["stamp"]) - mine)
        if gap <= _STAMP_SPREAD and (best is None or gap < best[0]):
            best = (gap, other)
    return None if best is None else best[1]


def _started(stamp: str) -> float:
    """The time a record name's stamp (`STAMP_FORMAT`) says."""
    return time.mktime(time.strptime(stamp, STAMP_FORMAT))


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


def describe(layout: dict | None) -> str:
    """A parameter's layout in words: ``Shard(0) over 2 ranks``, ``Replicate(), Shard(0) over
    2x4 ranks``; '' for an ordinary (unsharded) parameter."""
    if not layout:
        return ""
    mesh = "x".join(str(n) for n in layout["mesh"])
    return f"{', '.join(layout['placements'])} over {mesh} ranks"


def is_sharded(layout: dict | None) -> bool:
    """Whether the ranks hold different parts of the parameter (some mesh dimension shards it)."""
    return bool(layout) and any(p.startswith("Shard") for p in layout["placements"])


def same_values(a: dict | None, b: dict | None) -> bool:
    """Whether two ranks whose layouts of one parameter are `a` and `b` hold the same values:
    always for an ordinary (replicated, as under DDP) parameter; for a DTensor, when they sit at
    the same place along every mesh dimension that shards it (HSDP's replicas)."""
    if not a or not b:
        return not a and not b
    if a["placements"] != b["placements"] or a["coordinate"] is None or b["coordinate"] is None:
        return False
    return all(
        x == y for p, x, y in zip(a["placements"], a["coordinate"], b["coordinate"])
        if not p.startswith("Replicate")
    )


def one_replica(layouts: dict[int, dict | None]) -> list[int] | None:
    """The ranks that together hold one whole copy of a parameter, given each rank's layout of
    it (rank -> layout): for a DTensor, the ranks at the first place along every replicating
    mesh dimension; for an ordinary parameter, the lowest rank. None when the ranks given do not
    cover every shard of such a copy."""
    if not layouts:
        return None
    first = layouts[min(layouts)]
    if not first:
        return [min(layouts)]
    sharding = [i for i, p in enumerate(first["placements"]) if p.startswith("Shard")]
    chosen: dict[tuple, int] = {}
    for rank, layout in sorted(layouts.items()):
        if not layout or layout["coordinate"] is None:
            continue
        coordinate = layout["coordinate"]
        if any(coordinate[i] != 0 for i, p in enumerate(layout["placements"]) if p.startswith("Replicate")):
            continue
        chosen.setdefault(tuple(coordinate[i] for i in sharding), rank)
    wanted = math.prod(first["mesh"][i] for i in sharding)
    return sorted(chosen.values()) if len(chosen) == wanted else None


def combine(parts: list):
    """The statistics of a whole tensor from those of its disjoint parts (the shards of a
    parameter), each a `gradscope.Stat`: counts, sums and sums of squares add, extremes take the
    extreme. A part with no elements adds nothing; None when no part has any."""
    parts = [p for p in parts if p.count]
    if not parts:
        return None
    count = sum(p.count for p in parts)
    total = sum(p.mean * p.count for p in parts)
    squares = sum(p.norm * p.norm for p in parts)
    mean = total / count
    spread = squares / count - mean * mean
    std = math.sqrt(max(spread, 0.0)) if spread == spread else math.nan
    return parts[0]._replace(
        count=count, mean=mean, std=std, min=min(p.min for p in parts),
        max=max(p.max for p in parts), norm=math.sqrt(squares),
        zeros=sum(p.zeros for p in parts), nonfinite=sum(p.nonfinite for p in parts),
    )


def rank_ranges(ranks) -> str:
    """Ranks in words, runs folded: ``2..7``, ``1, 3..4``."""
    ranks = sorted(set(ranks))
    out: list[str] = []
    start = prev = None
    for r in ranks + [None]:
        if start is not None and (r is None or r != prev + 1):
            out.append(str(start) if start == prev else f"{start}..{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ", ".join(out)
