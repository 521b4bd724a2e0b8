"""ddp-desync: replicas that should be identical are not.

Under torch.distributed every rank writes its own record (``...-rank<N>.sqlite``). On rank 0,
this check reads the other ranks' records (no collective, nothing on the training thread) and
compares, every `every` (10) steps, the per-parameter statistics that act as checksums: the
weights after the step and the gradients after all-reduce (count, mean, min, max, norm). The
first step where a parameter differs between ranks is reported, naming the parameter.

Only copies meant to be equal are compared: ordinary parameters (DDP replicates them on every
rank) and, for sharded ones (FSDP2, HSDP), ranks that hold the same shard (HSDP's replicas).
Shards of one parameter differ by design and are never flagged.

When ranks run on machines without a shared filesystem, rank 0 finds no record of theirs: it
says so once (``ranks 2..7: no record here; cross-rank checks skipped``) instead of passing in
silence. ``gradscope report run-rank*.sqlite``, once the records are copied together, runs the
same comparison after the fact (``gradscope_ranks``).
"""

from __future__ import annotations

import time

import gradscope
from gradscope import Finding
from gradscope.distributed import rank_ranges, same_values

FIELDS = ("count", "mean", "min", "max", "norm")


def _checksums(stats) -> dict[tuple[str, str], tuple]:
    return {(s.kind, s.subject): tuple(getattr(s, f) for f in FIELDS)
            for s in stats if s.kind in ("weight", "grad")}


def _same(a: tuple, b: tuple) -> bool:
    """Equal, counting NaN as equal to NaN (both replicas broken the same way agree)."""
    return all(x == y or (x != x and y != y) for x, y in zip(a, b))


def _skipped(missing: list[int], step) -> Finding:
    ranks = ("rank " if len(missing) == 1 else "ranks ") + rank_ranges(missing)
    return Finding(
        "ddp-desync", "info", ranks, step,
        f"{ranks}: no record here; cross-rank checks skipped",
        {"missing_ranks": sorted(missing)},
        "Ranks on other machines write their records there. Copy every rank's record into one "
        "folder and run: gradscope report run-rank*.sqlite",
    )


class DdpDesync:
    def __init__(self):
        self._pending: list[tuple[int, dict]] = []  # (step, this rank's checksums)
        self._peers: dict[int, object] = {}
        self._reported: set[str] = set()

    @gradscope.hookimpl
    def gradscope_configure(self, config):
        self.every = config.get("ddp-desync", "every", 10)
        self.wait = config.get("ddp-desync", "wait", 30.0)

    def _peer_records(self, run) -> dict[int, object] | None:
        if run.rank != 0 or run.world_size < 2 or run.record is None:
            return None
        for rank, path in enumerate(run.peer_records()):
            if rank and rank not in self._peers:
                try:
                    self._peers[rank] = gradscope.open_record(path)
                except gradscope.errors.RecordError:
                    pass  # not created yet: try again at a later step
        return self._peers

    @gradscope.hookimpl
    def gradscope_step(self, step, run):
        if run.rank != 0 or run.world_size < 2:
            return None
        if step.step % self.every == 0 and step.stats.of_kind("weight"):
            self._pending.append((step.step, _checksums(step.stats)))
        return self._compare(run, wait=0.0)

    @gradscope.hookimpl
    def gradscope_run_end(self, run):
        if run.rank != 0 or run.world_size < 2:
            return None
        try:
            peers = self._peer_records(run) or {}
            missing = [r for r in range(1, run.world_size) if r not in peers]
            # A rank whose record never appeared in the whole run writes it elsewhere (another
            # machine): waiting for it would only delay the end of the run.
            findings = self._compare(run, wait=0.0 if missing else self.wait)
            if missing:
                findings.append(_skipped(missing, run.steps - 1 if run.steps else None))
            return findings
        finally:
            for peer in self._peers.values():
                peer.close()

    @gradscope.hookimpl
    def gradscope_ranks(self, records):
        """After the fact: compare the records of every rank, as rank 0 does during the run."""
        if not records:
            return None
        first = min(records)
        run = records[first].run()
        world = run.get("world_size") or 1
        if world < 2:
            return None
        layouts = {rank: record.run().get("placements") or {} for rank, record in records.items()}
        findings = []
        for step in records[first].step_numbers():  # every step with weights: no run to slow down
            mine = _checksums(records[first].stats(step=step))
            if not any(kind == "weight" for kind, _ in mine):
                continue
            for rank in sorted(records):
                if rank != first:
                    theirs = _checksums(records[rank].stats(step=step))
                    findings += self._diff(step, first, mine, layouts[first], rank, theirs, layouts[rank])
        missing = [r for r in range(world) if r not in records]
        if missing:
            findings.append(_skipped(missing, None))
        return findings

    def _compare(self, run, wait: float):
        peers = self._peer_records(run)
        if not peers:
            return []
        mine_layouts = run.info.get("placements") or {}
        deadline = time.monotonic() + wait
        findings = []
        while self._pending:
            step, mine = self._pending[0]
            ready = len(peers) == run.world_size - 1 and all(
                step in p.step_numbers() for p in peers.values())
            if not ready:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
                peers = self._peer_records(run)
                continue
            self._pending.pop(0)
            for rank, peer in sorted(peers.items()):
                theirs = _checksums(peer.stats(step=step))
                layouts = peer.run().get("placements") or {}
                findings += self._diff(step, 0, mine, mine_layouts, rank, theirs, layouts)
        return findings

    def _diff(self, step, base, mine, mine_layouts, rank, theirs, their_layouts) -> list[Finding]:
        findings = []
        for key in sorted(mine):
            kind, param = key
            if key not in theirs or param in self._reported:
                continue
            if not same_values(mine_layouts.get(param), their_layouts.get(param)):
                continue  # different shards of one parameter: different by design
            if _same(theirs[key], mine[key]):
                continue
            self._reported.add(param)
            what = "weights" if kind == "weight" else "gradients after all-reduce"
            findings.append(Finding(
                "ddp-desync", "error", param, step,
                f"rank {rank}'s {what} of {param} differ from rank {base}'s at step {step} "
                f"(norm {theirs[key][4]:.6g} vs {mine[key][4]:.6g})",
                {"kind": kind, "ranks": [base, rank], "step": step,
                 f"rank{base}": dict(zip(FIELDS, mine[key])), f"rank{rank}": dict(zip(FIELDS, theirs[key]))},
                "Replicas diverged: look for updates made on one rank only (rank-dependent "
                "code, .data writes), parameters DDP does not synchronise, or a missed "
                "initial broadcast.",
            ))
        return findings
