"""The JSON report: one document per record, for CI pipelines and scripts.

Top-level keys: ``format`` (report format version), ``run`` (the run's fields: target, status,
exit code, steps...), ``modules`` (each ``name``, ``type``, ``root``, ``calls`` of the latest step
that called it, with input/output shapes), ``parameters`` (each ``name``, ``shape``, ``dtype``,
``requires_grad``, ``in_optimizer``, ``grad`` and ``weight`` statistics and ``update`` of the
latest step), ``optimizers``, ``graph`` (the last recorded autograd graph, networkx node-link
data with ``nodes`` and ``edges``), ``steps`` (one summary per step, with the loss) and
``findings`` (each ``check``, ``severity`` — ``error``, ``warning`` or ``info`` — ``subject``,
``step``, ``last_step``, ``count``, ``message``, ``evidence`` and ``hint``).

JSON has no NaN or infinity: such values are written as the strings "nan", "inf" and "-inf".
Several records (the ranks of one torchrun job) merge into ``{"format", "ranks": [...]}``, one
report per rank with its ``rank``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import networkx as nx

from .errors import GradscopeError
from .record.reader import Record
from .trace.autograd import to_networkx

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
    row = dataclasses.asdict(stat)
    for key in ("kind", "subject", "call", "path"):
        row.pop(key)
    return {"step": step, **row}


def _update(entry) -> dict | None:
    if entry is None:
        return None
    step, update = entry
    row = dataclasses.asdict(update)
    row.pop("param")
    return {"step": step, **row, "ratio": update.ratio}


def build(record: Record) -> dict:
    """The report of `record` as a JSON-ready dict."""
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
            "sampled": p["sampled"], "grad": _stat(grads.get(p["name"])),
            "weight": _stat(weights.get(p["name"])), "update": _update(updates.get(p["name"])),
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
        "findings": record.findings(),
    })


def merge(records: list[Record]) -> dict:
    """One report for the ranks of a torchrun job: ``ranks`` lists each rank's report."""
    reports = sorted((build(r) for r in records), key=lambda rep: rep["run"].get("rank") or 0)
    return {"format": FORMAT, "ranks": [dict(rep, rank=rep["run"].get("rank")) for rep in reports]}


def write(record: Record | list[Record], out: str | Path) -> None:
    """Write the report of `record` (or the merged report of several) to `out` ('-': stdout)."""
    data = merge(record) if isinstance(record, list) else build(record)
    text = json.dumps(data, indent=1, allow_nan=False)
    if str(out) == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        Path(out).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise GradscopeError(f"cannot write the report {out}: {exc.strerror}") from None
