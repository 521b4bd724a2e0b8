"""The recorder thread: turns step snapshots into host data, runs the analyzers, writes SQLite.

Only this thread touches the database connection. The training thread hands over messages
through a bounded queue and never waits: when the queue is full a step is dropped and counted
(``dropped_steps`` in the run table). Each step is committed on its own, and the database runs in
WAL mode, so readers can follow a record that is still being written and a crash loses at most
the step in flight.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..data import KINDS, Stat, StepData, Update
from ..trace.batch import FrozenBatch
from . import schema


@dataclass
class StepSnapshot:
    """What the training thread hands over at a step boundary (values still on their way)."""

    data: StepData  # host fields filled in; stats and updates come from `rows`
    rows: FrozenBatch


def decode(snapshot: StepSnapshot) -> StepData:
    """Wait for the snapshot's device values and fold them into its `StepData`."""
    data = snapshot.data
    opt_updates: dict[str, tuple[int, list[float]]] = {}
    step_updates: dict[str, list[float]] = {}
    for kind, key, count, values in snapshot.rows.read():
        if kind in KINDS:
            subject, call, path = key
            *floats, zeros, nonfinite = values
            data.stats.append(Stat(kind, subject, call, path, count, *floats, int(zeros), int(nonfinite)))
        elif kind == "update":
            name, optimizer = key
            opt_updates[name] = (optimizer, values)
        elif kind == "step-update":
            step_updates[key] = values
        elif kind == "tail":
            data.tails[key] = (int(values[0]), count)
        elif kind == "hist":
            data.hists[key] = (values[0], values[1], [int(v) for v in values[2:]])
    for name, (step_delta, step_weight) in step_updates.items():
        optimizer, values = opt_updates.get(name, (None, [None, None, None]))
        data.updates[name] = Update(name, optimizer, *values, step_delta, step_weight)
    return data


class RecordWriter:
    """Owns the record file and the thread that writes it."""

    def __init__(self, path: Path, run: dict, analyzer=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        self._queue: queue.Queue = queue.Queue(maxsize=256)
        self._analyzer = analyzer  # gradscope.analysis.Analyzer, or None for no checks
        self._dropped = 0
        #: set once a non-finite statistic was recorded (read by the training thread, no lock)
        self.alarm = False
        #: set once an error finding was recorded (for break-on-error; read the same way)
        self.error_seen = False
        self._findings: dict[tuple[str, str], int] = {}
        self._error: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="gradscope-recorder", daemon=True)
        self._run = dict(run, started=time.time(), status="running")
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise OSError(self._error)

    # -- training thread -------------------------------------------------------------------
    def send(self, kind: str, payload) -> None:
        """Queue a metadata message (modules, parameters, optimizers, run fields, findings)."""
        self._queue.put((kind, payload))

    def send_step(self, snapshot: StepSnapshot) -> None:
        """Queue a step; drop it (and count it) instead of waiting when the recorder lags."""
        try:
            self._queue.put_nowait(("step", snapshot))
        except queue.Full:
            self._dropped += 1

    def close(self, **run_fields) -> None:
        """Finish writing: every queued step is written before this returns."""
        self._queue.put(("close", run_fields))
        self._thread.join()

    # -- recorder thread -------------------------------------------------------------------
    def _main(self) -> None:
        try:
            # Build the empty record under a temporary name, then move it into place: a reader
            # polling for the file never sees one without its schema.
            fresh = self.path.with_name(f".{self.path.name}.new")
            fresh.unlink(missing_ok=True)
            conn = sqlite3.connect(fresh)
            schema.create(conn)
            self._set_run(conn, self._run)
            conn.commit()
            conn.close()
            os.replace(fresh, self.path)
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            self._error = f"cannot write the record {self.path}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        if self._analyzer is not None:
            self._analyzer.start(self.path, self._run)
        while True:
            kind, payload = self._queue.get()
            try:
                if kind == "close":
                    if self._analyzer is not None:
                        for finding in self._analyzer.finish():
                            self._on_finding(conn, finding)
                    self._set_run(conn, dict(payload, finished=time.time(), dropped_steps=self._dropped))
                    conn.commit()
                    break
                getattr(self, f"_on_{kind}")(conn, payload)
                if self._analyzer is not None and kind in ("modules", "parameters", "optimizer", "run"):
                    self._analyzer.observe(kind, payload)
                conn.commit()
            except Exception as exc:  # the record must survive whatever one message does
                conn.rollback()
                self._on_finding(conn, _internal_finding(f"recorder ({kind})", exc))
                conn.commit()
        conn.close()

    def _set_run(self, conn, fields: dict) -> None:
        schema.RUN.insert(conn, [schema.RunField(k, v) for k, v in fields.items()], replace=True)

    def _on_run(self, conn, fields: dict) -> None:
        self._set_run(conn, fields)

    def _on_modules(self, conn, rows: list[dict]) -> None:
        schema.MODULES.insert(conn, rows, replace=True)

    def _on_parameters(self, conn, rows: list[dict]) -> None:
        schema.PARAMETERS.insert(conn, rows, replace=True)

    def _on_optimizer(self, conn, row: dict) -> None:
        schema.OPTIMIZERS.insert(conn, [row], replace=True)

    def _on_finding(self, conn, finding: dict) -> None:
        if finding["severity"] == "error":
            self.error_seen = True
        key = (finding["check"], finding["subject"])
        rowid = self._findings.get(key)
        if rowid is not None:
            conn.execute(
                f"UPDATE {schema.FINDINGS.name} SET count = count + 1, last_step = ? WHERE id = ?",
                (finding.get("step"), rowid),
            )
            return
        row = dict(finding, step=finding.get("step"), last_step=finding.get("step"), count=1)
        self._findings[key] = schema.FINDINGS.insert(conn, [row]).lastrowid

    def _on_step(self, conn, snapshot: StepSnapshot) -> None:
        data = decode(snapshot)
        if not self.alarm and any(s.nonfinite for s in data.stats):
            self.alarm = True
        step = data.step
        schema.STEPS.insert(conn, [schema.StepRow.of(data)], replace=True)
        schema.CALLS.insert(conn, [dict(c, step=step) for c in data.calls], replace=True)
        schema.STATS.insert(conn, data.stats, step=step)
        schema.UPDATES.insert(conn, data.updates.values(), replace=True, step=step)
        if data.graph is not None:
            schema.GRAPHS.insert(conn, [schema.GraphRow(step, data.graph.to_json())], replace=True)
        self._set_run(conn, {"steps": step + 1})
        schema.TAILS.insert(conn, [schema.TailRow(step, m, c, n, count, total)
                                   for (m, c, n), (count, total) in data.tails.items()])
        schema.HISTS.insert(conn, [schema.HistRow(step, n, low, high, counts)
                                   for n, (low, high, counts) in data.hists.items()])
        if self._analyzer is not None:
            for finding in self._analyzer.step(data):
                self._on_finding(conn, finding)


def _internal_finding(where: str, exc: BaseException, step: int | None = None) -> dict:
    """A failure inside gradscope, as a finding (training goes on)."""
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return {
        "check": "internal-error",
        "severity": "warning",
        "subject": where,
        "step": step,
        "message": f"gradscope failed in {where}: {type(exc).__name__}: {exc}",
        "evidence": {"exception": type(exc).__name__, "where": f"{where}{at}"},
        "hint": "Training was not affected; this part of gradscope is off for the failing item. "
        "Please report it with the evidence.",
    }
