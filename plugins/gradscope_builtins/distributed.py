"""ddp-desync: replicas that should be identical are not.

Under torch.distributed every rank writes its own record (``...-rank<N>.sqlite``). On rank 0,
this check reads the other ranks' records (no collective, nothing on the training thread) and
compares, every `every` (10) steps, the per-parameter statistics that act as checksums: the
weights after the step and the gradients after all-reduce (count, mean, min, max, norm). The
first step where a parameter differs between ranks is reported, naming the parameter.
"""

from __future__ import annotations

import time

import gradscope
from gradscope import Finding

FIELDS = ("count", "mean", "min", "max", "norm")


def _checksums(stats) -> dict[tuple[str, str], tuple]:
    return {(s.kind, s.subject): tuple(getattr(s, f) for f in FIELDS)
            for s in stats if s.kind in ("weight", "grad")}


def _same(a: tuple, b: tuple) -> bool:
    """Equal, counting NaN as equal to NaN (both replicas broken the same way agree)."""
    return all(x == y or (x != x and y != y) for x, y in zip(a, b))


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
        if step.step % self.every == 0 and any(s.kind == "weight" for s in step.stats):
            self._pending.append((step.step, _checksums(step.stats)))
        return self._compare(run, wait=0.0)

    @gradscope.hookimpl
    def gradscope_run_end(self, run):
        if run.rank != 0 or run.world_size < 2:
            return None
        try:
            return self._compare(run, wait=self.wait)
        finally:
            for peer in self._peers.values():
                peer.close()

    def _compare(self, run, wait: float):
        peers = self._peer_records(run)
        if not peers:
            return None
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
                for key in sorted(mine):
                    kind, param = key
                    if key in theirs and not _same(theirs[key], mine[key]) and param not in self._reported:
                        self._reported.add(param)
                        what = "weights" if kind == "weight" else "gradients after all-reduce"
                        findings.append(Finding(
                            "ddp-desync", "error", param, step,
                            f"rank {rank}'s {what} of {param} differ from rank 0's at step {step} "
                            f"(norm {theirs[key][4]:.6g} vs {mine[key][4]:.6g})",
                            {"kind": kind, "ranks": [0, rank], "step": step,
                             "rank0": dict(zip(FIELDS, mine[key])), f"rank{rank}": dict(zip(FIELDS, theirs[key]))},
                            "Replicas diverged: look for updates made on one rank only (rank-dependent "
                            "code, .data writes), parameters DDP does not synchronise, or a missed "
                            "initial broadcast.",
                        ))
        return findings
