"""The recorder thread: turns step snapshots into host data, runs the analyzers, writes SQLite.

Only this thread touches the database connection. The training thread hands over messages and
never waits for the recorder:

- a step is dropped (and counted, with the reason) when `MAX_PENDING` steps are already queued;
- metadata messages (modules, parameters, findings, run fields) always fit;
- `close` waits for the queue to drain only while the recorder makes progress, and gives up
  after `STALL_SECONDS` without any.

A write error that persists (a full disk, storage gone read-only, an I/O error) stops the
recording with one line on stderr; the recorder goes on judging steps in memory (`stopped`,
`unrecorded_findings`) and training goes on. One value the database cannot store (a name with
a lone surrogate) is stored escaped instead of failing its step.

What a crash can lose: steps are committed together in WAL mode, at most `COMMIT_EVERY`
seconds apart (at once when the recorder goes idle or a finding is written), so a process that
dies loses the steps of the last `COMMIT_EVERY` seconds and those still queued (none when the
recorder keeps up, at most `MAX_PENDING`). Each message is written in a savepoint of its own:
one that fails is undone alone. The record of a killed process is recovered by its first reader. On close
the record is checkpointed and switched out of WAL, so a finished record is one
self-contained file. While the writer lives it holds a shared ``flock`` on the record file:
readers tell a live record from a crashed one by it.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import queue
import secrets
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import KINDS, StepData
from ..findings import SEVERITIES, internal_error
from ..terminal import inert
from ..trace.batch import FrozenBatch
from . import paths, schema, series

try:
    import fcntl
except ImportError:  # Windows: no liveness lock; readers treat every -wal as live
    fcntl = None

#: Steps waiting for the recorder at most; one more is dropped and counted.
MAX_PENDING = 256
#: How long `close` (and the start) waits for a recorder that makes no progress at all.
STALL_SECONDS = 30.0
#: Seconds between commits at most while steps come in: a commit per step cost a fifth of the
#: recorder's time (every step rewrote the same last pages of each table into the WAL).
COMMIT_EVERY = 0.25

DROP_BEHIND = "the recorder fell behind"
DROP_FAILED = "the step could not be written"
DROP_STOPPED = "recording stopped"
#: Metadata messages the analyzer follows (`Analyzer.observe`), written or not.
OBSERVED = ("modules", "parameters", "optimizer", "run")


@dataclass
class StepSnapshot:
    """What the training thread hands over at a step boundary (values still on their way)."""

    data: StepData  # host fields filled in; stats and updates come from `rows`
    rows: FrozenBatch


def decode(snapshot: StepSnapshot) -> StepData:
    """Wait for the snapshot's device values and fold them into its `StepData`."""
    data = snapshot.data
    stats = data.stats.rows  # plain tuples (`Stats`)
    stepped: dict[str, tuple] = {}  # parameter -> (optimizer, delta, weight, outside)
    moved: list[tuple[list, list, list]] = []  # (names, step deltas, step weights)
    nan, finite = math.nan, math.isfinite
    for kind, keys, counts, columns in snapshot.rows.read():
        if kind in KINDS and len(columns) == 1:  # single values, sent as they are
            for (subject, call, path), v in zip(keys, columns[0]):
                stats.append((kind, subject, call, path, 1, v, 0.0, v, v, abs(v), int(v == 0), int(not finite(v))))
        elif kind in KINDS or kind == "stats":  # "stats": rows of several kinds, each key (kind, key)
            kinds = keys if kind == "stats" else zip(itertools.repeat(kind), keys)
            for (of, (subject, call, path)), count, mean, std, low, high, norm, zeros, nonfinite in zip(
                    kinds, counts, *columns):
                stats.append((of, subject, call, path, count, mean, std, low, high, norm, int(zeros), int(nonfinite)))
        elif kind == "grad-norm":  # a gradient between full-statistics steps: norm and flag
            for (subject, call, path), count, norm, largest in zip(keys, counts, *columns):
                stats.append(("grad", subject, call, path, count, nan, nan, nan, nan, norm, None,
                              0 if finite(largest) else 1))
        elif kind == "update":
            for (name, optimizer), delta, weight, outside in zip(keys, *columns):
                stepped[name] = (optimizer, delta, weight, outside)
        elif kind == "step-update":
            moved.append((keys, *columns))
        elif kind == "tail":
            for key, count, outside in zip(keys, counts, columns[0]):
                data.tails[key] = (int(outside), count)
        elif kind == "hist":
            for key, low, high, *bins in zip(keys, *columns):
                data.hists[key] = (low, high, [int(v) for v in bins])
    missing = (None, None, None, None)
    updates = data.updates.rows  # plain tuples (`Updates`)
    for names, step_deltas, step_weights in moved:
        for name, step_delta, step_weight in zip(names, step_deltas, step_weights):
            updates[name] = (name, *stepped.get(name, missing), step_delta, step_weight)
    return data


def _storable(value):
    """`value` with every string SQLite cannot encode (lone surrogates) escaped."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_storable(v) for v in value)
    return value


class _Connection:
    """The recorder's connection: a parameter SQLite cannot encode is escaped and retried, so
    one bad name loses nothing but its exact spelling. The common path costs nothing."""

    def __init__(self, conn: sqlite3.Connection):
        self.raw = conn

    def execute(self, sql, params=()):
        try:
            return self.raw.execute(sql, params)
        except UnicodeEncodeError:
            return self.raw.execute(sql, _storable(params))

    def executemany(self, sql, rows):
        rows = list(rows)
        done = 0

        def counted():
            nonlocal done
            for done, row in enumerate(rows, 1):
                yield row

        try:
            return self.raw.executemany(sql, counted())
        except UnicodeEncodeError:
            # rows before the one that failed are in; the rest go in escaped
            return self.raw.executemany(sql, [_storable(r) for r in rows[max(done - 1, 0):]])

    def commit(self):
        self.raw.commit()

    def begin(self):
        """Start one message's writes: a savepoint in the open transaction (begun if none is)."""
        if not self.raw.in_transaction:
            self.raw.execute("BEGIN")
        self.raw.execute("SAVEPOINT message")

    def keep(self):
        self.raw.execute("RELEASE message")

    def undo(self) -> bool:
        """Undo the writes of the message in progress alone; False when SQLite could not (it
        rolled back the whole transaction itself after an I/O error, or cannot go on)."""
        try:
            self.raw.execute("ROLLBACK TO message")
            self.raw.execute("RELEASE message")
            return True
        except sqlite3.Error:
            return False

    def rollback(self):
        """Roll back the open transaction; a storage that cannot even do that keeps nothing."""
        try:
            self.raw.rollback()
        except sqlite3.Error:
            pass

    def close(self):
        self.raw.close()


def _is_write_error(exc: BaseException) -> bool:
    """Errors of the storage rather than of one message: they will happen again."""
    return isinstance(exc, (OSError, sqlite3.OperationalError)) or type(exc) is sqlite3.DatabaseError


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _place(fresh: Path, path: Path, rename: bool) -> Path:
    """Move the freshly built record to `path` without clobbering anything that is not a record.

    A new path is taken exclusively (`os.link` fails when the name exists); a generated name
    that another run took meanwhile becomes ``<name>-2`` and so on; an existing gradscope record
    is replaced (its stale ``-wal``/``-shm`` go first, or SQLite would replay them into the new
    file); anything else is refused."""
    candidate, n = path, 1
    while True:
        try:
            _take(fresh, candidate)
            _remove_sidecars(candidate)
            return candidate
        except FileExistsError:
            if rename:
                n += 1
                candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
                continue
            if not is_record_file(candidate):
                raise OSError(f"{candidate} exists and is not a gradscope record; not replacing it") from None
            _remove_sidecars(candidate)
            os.replace(fresh, candidate)
            return candidate


def _take(fresh: Path, path: Path) -> None:
    """Move `fresh` to `path`, failing with `FileExistsError` when `path` exists."""
    try:
        os.link(fresh, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # no hard links here: reserve the name by exclusive create, then move the record in
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(fresh, path)
        return
    fresh.unlink()


def _remove_sidecars(path: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def is_record_file(path: Path) -> bool:
    """Whether `path` is a regular file carrying gradscope's SQLite application id."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb") as fh:
            header = fh.read(schema.HEADER_SIZE)
    except OSError:
        return False
    return schema.is_record_header(header)


class RecordWriter:
    """Owns the record file and the thread that writes it.

    `path` is where the record goes; a name from `paths.new_record_path` that is taken by the
    time the record is created becomes the next free one (`path` then says which)."""

    def __init__(self, path: Path, run: dict, analyzer=None):
        self.path = Path(path)
        self._rename = paths.is_generated(self.path)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._analyzer = analyzer  # gradscope.analysis.Analyzer, or None for no checks
        self._sent = 0  # steps queued (training thread only)
        self._taken = 0  # steps taken off the queue (recorder thread only)
        self._behind = 0  # steps dropped because the queue was full (training thread only)
        self._failed_steps = 0  # steps whose write failed (recorder thread only)
        self._unrecorded = 0  # steps judged after the recording stopped (recorder thread only)
        self._written_drops = 0
        self._since: float | None = None  # when the oldest write not yet committed was made
        self._uncommitted = 0  # steps written since the last commit
        self._committed = 0  # the run's step count as of the last commit
        self._commit_now = False  # a finding was written: commit it without waiting
        self._series_due = schema.SERIES_STEPS - 1  # the step whose write lists the stats rows by subject
        self._listing = series.Listing()  # where the stats rows went since the last listing
        #: set once a non-finite statistic was recorded (read by the training thread, no lock)
        self.alarm = False
        #: why the recording stopped (a persistent write error), or None while it goes on
        self.stopped: str | None = None
        #: the step at which the recording stopped
        self.stopped_at: int | None = None
        #: findings judged after the recording stopped (kept in memory, shown by the summary)
        self.unrecorded_findings: list[dict] = []
        #: new (check, subject) findings so far by severity, and the last step the analyzers
        #: judged: a debugger breaking on a finding waits for its step's verdict (`wait_judged`)
        self.new_findings = dict.fromkeys(SEVERITIES, 0)
        self.judged_step = -1
        self._judged = threading.Condition()
        self._findings: dict[tuple[str, str], int] = {}
        self._memory: dict[tuple[str, str], dict] = {}
        self._error: str | None = None
        self._lock_fd: int | None = None
        self._progress = time.monotonic()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="gradscope-recorder", daemon=True)
        self._run = dict(run, started=time.time(), status="running", steps=0, dropped_steps=0)
        self._thread.start()
        if not self._ready.wait(STALL_SECONDS):
            self._error = f"cannot write the record {self.path}: no answer from the storage in {STALL_SECONDS:g} s"
        if self._error:
            raise OSError(self._error)

    # -- training thread -------------------------------------------------------------------
    def send(self, kind: str, payload) -> None:
        """Queue a metadata message (modules, parameters, optimizers, run fields, findings)."""
        self._queue.put((kind, payload))

    def send_step(self, snapshot: StepSnapshot) -> None:
        """Queue a step; drop it (and count it) instead of waiting when the recorder lags."""
        if self._sent - self._taken >= MAX_PENDING:
            self._behind += 1
            return
        self._sent += 1
        self._queue.put(("step", snapshot))

    @property
    def steps(self) -> int:
        """Steps recorded, or judged in memory once the recording stopped."""
        return self._run.get("steps", 0)

    @property
    def dropped(self) -> dict[str, int]:
        """Steps not in the record, by reason."""
        counts = {DROP_BEHIND: self._behind, DROP_FAILED: self._failed_steps, DROP_STOPPED: self._unrecorded}
        return {reason: n for reason, n in counts.items() if n}

    def wait_judged(self, step: int, timeout: float) -> None:
        """Wait until the analyzers have judged `step` (at most `timeout` seconds: a dropped
        step is never judged). Only a paused-on-demand debugger calls this."""
        with self._judged:
            self._judged.wait_for(lambda: self.judged_step >= step or not self._thread.is_alive(), timeout)

    def close(self, **run_fields) -> None:
        """Finish writing: every queued step is written before this returns, as long as the
        recorder makes progress; after `STALL_SECONDS` without any, it is left behind."""
        self._queue.put(("close", run_fields))
        while self._thread.is_alive():
            self._thread.join(timeout=0.1)
            if time.monotonic() - self._progress > STALL_SECONDS and self._thread.is_alive():
                self._stop(f"no progress writing for {STALL_SECONDS:g} s")
                return

    # -- recorder thread -------------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        self.stopped_at = self._run.get("steps", 0)
        try:
            print(inert(f"gradscope: record {self.path}: {reason}; recording stopped, training continues"),
                  file=sys.stderr, flush=True)
        except Exception:
            pass

    def _create(self) -> _Connection:
        """Build the empty record under a temporary name, then move it into place: a reader
        polling for the file never sees one without its schema."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a name no other run can pick; SQLite creates it with the user's usual permissions
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
        try:
            conn = sqlite3.connect(fresh)
            try:
                schema.create(conn)
                self._set_run(conn, self._run)
                conn.commit()
            finally:
                conn.close()
            self.path = _place(fresh, self.path, self._rename)
        finally:
            fresh.unlink(missing_ok=True)
        if fcntl is not None:
            # before any WAL file exists: a reader must never take this record for a crashed one
            self._lock_fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=2000")
        return _Connection(conn)

    def _main(self) -> None:
        try:
            conn = self._create()
        except (OSError, sqlite3.Error) as exc:
            self._error = f"cannot write the record {self.path}: {_reason(exc)}"
            self._release()
            self._ready.set()
            return
        self._ready.set()
        if self._analyzer is not None:
            self._analyzer.start(self.path, self._run)
        while True:
            try:
                wait = None if self._since is None else max(0.0, self._since + COMMIT_EVERY - time.monotonic())
                kind, payload = self._queue.get(timeout=wait)
            except queue.Empty:  # idle: what was written goes in now
                self._commit(conn)
                continue
            if kind == "step":
                self._taken += 1
            if kind == "close":
                self._finish(conn, payload)
                break
            if self.stopped is None:
                self._write(conn, kind, payload)
            else:
                self._judge(kind, payload)
            if kind == "step":
                self._mark_judged(payload)
            self._progress = time.monotonic()
        try:
            conn.close()
        except sqlite3.Error:
            pass
        self._release()

    def _write(self, conn: _Connection, kind: str, payload) -> None:
        try:
            conn.begin()
            getattr(self, f"_on_{kind}")(conn, payload)
            if self._analyzer is not None and kind in OBSERVED:
                self._analyzer.observe(kind, payload)
            self._note_drops(conn)
            conn.keep()
            self._listing.kept()
        except Exception as exc:  # the record must survive whatever one message does
            self._failed(conn, kind, exc, undo=True)
            if kind == "step" and self.stopped is None:
                self._failed_steps += 1
            elif kind == "step":
                self._unrecorded += 1
            return
        if kind == "step":
            self._run["steps"] = payload.data.step + 1
            self._uncommitted += 1
        now = time.monotonic()
        self._since = now if self._since is None else self._since
        if self._commit_now or kind == "run" or now - self._since >= COMMIT_EVERY:
            self._commit(conn)

    def _commit(self, conn: _Connection) -> None:
        """Commit what was written (with the run's step count: readers see only what is
        committed, so once per commit is as current as once per step); when that fails its
        steps are lost (counted as failed)."""
        try:
            self._commit_counted(conn)
        except Exception as exc:
            self._failed(conn, "commit", exc)
            return
        self._settled()

    def _commit_counted(self, conn: _Connection) -> None:
        if self._uncommitted:
            self._set_run(conn, {"steps": self._run["steps"]})
        conn.commit()

    def _settled(self, lost: bool = False) -> None:
        """The open transaction is over: committed, or rolled back (`lost`: the steps written in
        it are not in the record, counted as failed)."""
        if lost:
            self._listing.lost()
            self._run["steps"] = self._committed
            self._failed_steps += self._uncommitted
        self._committed = self._run.get("steps", 0)
        self._uncommitted, self._since, self._commit_now = 0, None, False

    def _note_drops(self, conn) -> None:
        """Keep ``dropped_steps`` current in the record (the UI shows it while the run goes on)."""
        dropped = self._behind + self._failed_steps
        if dropped != self._written_drops:
            self._set_run(conn, {"dropped_steps": dropped, "dropped": self.dropped})
            self._written_drops = dropped

    def _failed(self, conn: _Connection, kind: str, exc: Exception, undo: bool = False) -> None:
        """After a failed write: undo it (the message's own writes with `undo`, else the whole
        transaction), then stop recording on a write error or record an internal error."""
        if undo and conn.undo():
            self._listing.undone()
        else:  # the whole transaction is gone
            conn.rollback()
            self._settled(lost=True)
        if _is_write_error(exc):
            if self._since is not None:
                self._commit(conn)  # what came before, if the storage still takes it
            self._stop(_reason(exc))
            return
        try:
            self._on_finding(conn, internal_error(f"recorder ({kind})", exc))
            self._commit_counted(conn)
            self._settled()
        except Exception as again:  # even the finding cannot be written: the storage is gone
            conn.rollback()
            self._settled(lost=True)
            self._stop(_reason(again))

    def _judge(self, kind: str, payload) -> None:
        """After the recording stopped: follow the run and judge its steps in memory."""
        try:
            if kind == "step":
                self._unrecorded += 1
                data = decode(payload)
                if not self.alarm and data.stats.nonfinite():
                    self.alarm = True
                self._run["steps"] = data.step + 1
                for finding in self._analyzer.step(data) if self._analyzer is not None else ():
                    self._remember(finding)
            elif kind == "finding":
                self._remember(payload)
            elif self._analyzer is not None and kind in OBSERVED:
                self._analyzer.observe(kind, payload)
        except Exception:
            pass  # nothing more can be lost here

    def _remember(self, finding: dict) -> None:
        key = (finding["check"], finding["subject"])
        known = self._memory.get(key)
        if known is not None:
            known["count"] += 1
            known["last_step"] = finding.get("step")
            return
        if key not in self._findings:  # new to the run, not only to the memory
            self._count_new(finding)
        row = dict(finding, count=1, last_step=finding.get("step"))
        self._memory[key] = row
        self.unrecorded_findings.append(row)

    def _finish(self, conn: _Connection, fields: dict) -> None:
        if self._since is not None:
            self._commit(conn)
        findings = []
        if self._analyzer is not None:
            try:
                findings = self._analyzer.finish()
            except Exception as exc:
                findings = [internal_error("recorder (finish)", exc)]
        fields = dict(fields, finished=time.time(), dropped_steps=sum(self.dropped.values()),
                      dropped=self.dropped)
        if self.stopped is not None:
            for finding in findings:
                self._remember(finding)
            fields.update(recording_stopped=self.stopped, recording_stopped_at=self.stopped_at)
            try:  # the storage may have recovered: the record then says how it ends
                self._set_run(conn, fields)
                conn.commit()
            except Exception:
                return
        else:
            try:
                for finding in findings:
                    self._on_finding(conn, finding)
                self._listing.add(conn, self._run.get("steps", 0) - 1)
                self._set_run(conn, fields)
                conn.commit()
            except Exception as exc:
                self._failed(conn, "close", exc)
                return
        self._seal(conn)

    def _seal(self, conn: _Connection) -> None:
        """Fold the WAL into the file and leave WAL mode: one self-contained file, no -wal/-shm.
        A reader holding the file open can keep it in WAL mode; the next reader seals it then."""
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
        key = (finding["check"], finding["subject"])
        rowid = self._findings.get(key)
        if rowid is not None:
            conn.execute(
                f"UPDATE {schema.FINDINGS.name} SET count = count + 1, last_step = ? WHERE id = ?",
                (finding.get("step"), rowid),
            )
            return
        self._count_new(finding)
        self._commit_now = True
        row = dict(finding, step=finding.get("step"), last_step=finding.get("step"), count=1)
        self._findings[key] = schema.FINDINGS.insert(conn, [row]).lastrowid

    def _count_new(self, finding: dict) -> None:
        self.new_findings[finding["severity"]] = self.new_findings.get(finding["severity"], 0) + 1

    def _mark_judged(self, snapshot: StepSnapshot) -> None:
        """The step's verdict is in (written, judged in memory, or failed): wake `wait_judged`."""
        try:
            step = snapshot.data.step
        except Exception:
            return
        with self._judged:
            self.judged_step = max(self.judged_step, step)
            self._judged.notify_all()

    def _on_step(self, conn, snapshot: StepSnapshot) -> None:
        data = decode(snapshot)
        if not self.alarm and data.stats.nonfinite():
            self.alarm = True
        step = data.step
        schema.STEPS.insert(conn, [schema.StepRow.of(data)], replace=True)
        schema.CALLS.insert(conn, [dict(c, step=step) for c in data.calls], replace=True)
        inserted = schema.STATS.insert(conn, data.stats.rows, step=step)
        self._listing.wrote(step, data.stats.rows, inserted and inserted.lastrowid)
        schema.UPDATES.insert(conn, data.updates.rows.values(), replace=True, step=step)
        if data.graph is not None:
            schema.GRAPHS.insert(conn, [schema.GraphRow(step, data.graph.to_json())], replace=True)
        schema.TAILS.insert(conn, [schema.TailRow(step, m, c, n, count, total)
                                   for (m, c, n), (count, total) in data.tails.items()])
        schema.HISTS.insert(conn, [schema.HistRow(step, n, low, high, counts)
                                   for n, (low, high, counts) in data.hists.items()])
        if step >= self._series_due:
            self._listing.add(conn, step)
            self._series_due = step + schema.SERIES_STEPS
        if self._analyzer is not None:
            for finding in self._analyzer.step(data):
                self._on_finding(conn, finding)
