"""The JSON report: one document per record, for CI pipelines and scripts.

Top-level keys: ``format`` (report format version), ``run`` (the run's fields: target, status,
exit code, steps...), ``modules`` (each ``name``, ``type``, ``root``, ``calls`` of the latest step
that called it, with input/output shapes), ``parameters`` (each ``name``, ``shape``, ``dtype``,
``requires_grad``, ``in_optimizer``, ``grad`` and ``weight`` statistics and ``update`` of the
latest step), ``optimizers``, ``graph`` (the last recorded autograd graph, networkx node-link
data with ``nodes`` and ``edges``), ``steps`` (one summary per step, with the loss) and
``findings`` (each ``check``, ``severity`` — ``error``, ``warning`` or ``info`` — ``subject``,
``step``, ``last_step``, ``count``, ``message``, ``evidence`` and ``hint``).

A sharded parameter (FSDP2, a DTensor) keeps its original name and global ``shape`` and has a
``placement`` (``placements`` such as ``["Shard(0)"]``, the device ``mesh`` shape, this rank's
``coordinate`` and ``local_shape``, and ``text``: "Shard(0) over 2 ranks"); its ``grad`` and
``weight`` statistics are this rank's shard's, marked ``"scope": "local shard"``, and so are the
findings about it (checks judge what the rank holds). Ordinary parameters have ``placement`` null.

A gradient's latest figures may come from a step between full-statistics steps (every
``run.settings.stats_every`` steps after the first ``dense_steps``; ``--stats-every``): then only
its ``count``, ``norm`` and ``nonfinite`` were measured, and ``mean``,
``std``, ``min``, ``max`` and ``zeros`` are null. JSON has no NaN or infinity: such measured
values are written as the strings "nan", "inf" and "-inf".
Several records (the ranks of one torchrun job) merge into ``{"format", "ranks": [...],
"global": {...}, "findings": [...]}``: ``ranks`` holds one report per rank with its ``rank``;
``global`` the whole parameters' figures at the latest step every record reached (``step``;
per parameter ``grad`` and ``weight`` combined from the shards of every rank, or taken from one
replica, with the ``ranks`` they come from; a parameter whose shards are not all there is left
out and listed in ``incomplete``); ``findings`` those of the cross-rank checks run on the records
together (``ddp-desync``), including which ranks had no record.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import networkx as nx

from .distributed import combine, describe, is_sharded, one_replica
from .errors import GradscopeError
from .record.reader import Record
from .data import to_networkx

FORMAT = 1


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):  # dicts and record rows
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _stat(entry) -> dict | None:
    if entry is None:
        return None
    step, stat = entry
    row = stat._asdict()
    for key in ("kind", "subject", "call", "path"):
        row.pop(key)
    if stat.zeros is None:  # a gradient between full-statistics steps: only its norm was measured
        row.update(mean=None, std=None, min=None, max=None)
    return {"step": step, **row}


def _update(entry) -> dict | None:
    if entry is None:
        return None
    step, update = entry
    row = update._asdict()
    row.pop("param")
    return {"step": step, **row, "ratio": update.ratio}


def _placement(layout: dict | None) -> dict | None:
    return None if not layout else dict(layout, text=describe(layout))


def _scoped(stat: dict | None, layout: dict | None) -> dict | None:
    return dict(stat, scope="local shard") if stat is not None and is_sharded(layout) else stat


def build(record: Record) -> dict:
    """The report of `record` as a JSON-ready dict."""
    layouts = record.run().get("placements") or {}
    calls = record.latest_calls()
    grads = record.latest_stats("grad")
    weights = record.latest_stats("weight")
    updates = record.latest_updates()
    losses = {step: stat.mean for step, stat in record.stat_series("loss", "loss")}
    modules = [
        {"name": m["name"], "type": m["type"], "root": m["root"], "calls": calls.get(m["name"], [])}
        for m in record.modules()
    ]
    parameters = [
        {
            "name": p["name"], "module": p["module"], "shape": p["shape"], "dtype": p["dtype"],
            "device": p["device"], "requires_grad": p["requires_grad"],
            "in_optimizer": p["in_optimizer"], "optimizers": p["optimizers"],
            "sampled": p["sampled"], "placement": _placement(layouts.get(p["name"])),
            "grad": _scoped(_stat(grads.get(p["name"])), layouts.get(p["name"])),
            "weight": _scoped(_stat(weights.get(p["name"])), layouts.get(p["name"])),
            "update": _update(updates.get(p["name"])),
        }
        for p in record.parameters()
    ]
    graph = record.graph()
    steps = [dict(s, loss=losses.get(s["step"])) for s in record.steps()]
    return _clean({
        "format": FORMAT,
        "run": record.run(),
        "modules": modules,
        "parameters": parameters,
        "optimizers": record.optimizers(),
        "graph": None if graph is None else nx.node_link_data(to_networkx(graph), edges="edges"),
        "steps": steps,
        "findings": [_scoped(f, layouts.get(f["subject"])) for f in record.findings()],
    })


def by_rank(records: list[Record]) -> dict[int, Record]:
    """rank -> record, for records that each name a distinct rank of one job; else {}."""
    runs = [r.run() for r in records]
    ranks = [run.get("rank") for run in runs]
    if None in ranks or len(set(ranks)) != len(ranks) or len({run.get("world_size") for run in runs}) != 1:
        return {}
    return dict(zip(ranks, records))


def _global(ranked: dict[int, Record]) -> dict:
    """The whole parameters' figures from every rank's record (see the module's docstring)."""
    if not ranked:
        return {"step": None, "parameters": [], "incomplete": []}
    steps = [set(r.step_numbers()) for r in ranked.values()]
    common = set.intersection(*steps)
    step = max(common) if common else None
    layouts = {rank: r.run().get("placements") or {} for rank, r in ranked.items()}
    first = ranked[min(ranked)]
    weight_steps = [s for s, _ in first.latest_stats("weight").values() if step is not None and s <= step]
    weight_step = max(weight_steps) if weight_steps else None
    rows = {}
    for kind, at in (("grad", step), ("weight", weight_step)):
        for rank, record in ranked.items():
            for stat in record.stats(step=at, kind=kind) if at is not None else ():
                if stat.call == 0 and stat.path == "":
                    rows.setdefault((kind, stat.subject), {})[rank] = stat
    parameters, incomplete = [], []
    for p in first.parameters():
        name = p["name"]
        holders = one_replica({rank: layouts[rank].get(name) for rank in ranked})
        if holders is None:
            incomplete.append(name)
            continue
        entry = {"name": name, "shape": p["shape"], "placement": _placement(layouts[min(ranked)].get(name)),
                 "ranks": holders}
        for kind, at in (("grad", step), ("weight", weight_step)):
            found = rows.get((kind, name), {})
            whole = combine([found[r] for r in holders if r in found])
            entry[kind] = None if whole is None else _stat((at, whole))
        parameters.append(entry)
    return {"step": step, "weight_step": weight_step, "parameters": parameters, "incomplete": incomplete}


def merge(records: list[Record], findings: list[dict] | None = None) -> dict:
    """One report for the ranks of a torchrun job: ``ranks`` lists each rank's report, ``global``
    the whole parameters' figures, ``findings`` those of the cross-rank checks (`findings`)."""
    reports = sorted((build(r) for r in records), key=lambda rep: rep["run"].get("rank") or 0)
    return _clean({
        "format": FORMAT,
        "ranks": [dict(rep, rank=rep["run"].get("rank")) for rep in reports],
        "global": _global(by_rank(records)),
        "findings": list(findings or []),
    })


def write(record: Record | list[Record], out: str | Path, findings: list[dict] | None = None) -> None:
    """Write the report of `record` (or the merged report of several, with the cross-rank
    `findings`) to `out` ('-': stdout)."""
    data = merge(record, findings) if isinstance(record, list) else build(record)
    text = json.dumps(data, indent=1, allow_nan=False)
    if str(out) == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        Path(out).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise GradscopeError(f"cannot write the report {out}: {exc.strerror}") from None
