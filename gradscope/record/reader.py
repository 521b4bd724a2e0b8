"""Read a record, whether finished or still being written (WAL lets readers in).

Opening checks that the file is a gradscope record of a schema this version understands, and
raises `RecordError` with a one-line reason otherwise. Reading never executes anything stored
in the file: values are SQLite scalars and JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import sqlite3
from pathlib import Path

from ..data import KINDS, GraphData, Stat, Stats, StepData, Update, Updates
from ..errors import RecordError
from . import schema, series

try:
    import fcntl
except ImportError:  # Windows: no liveness lock
    fcntl = None


#: Rowids per ``IN (...)`` list: under SQLite's oldest limit of 999 parameters.
_IN_LIST = 900


def open_record(path: str | Path) -> "Record":
    """Open the record at `path` read-only; raises `RecordError` when it is not one."""
    return Record(path)


def _writer_alive(path: Path) -> bool:
    """Whether a writer holds `path` (its shared ``flock``; see `gradscope.record.writer`)."""
    if fcntl is None:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _recover(path: Path) -> None:
    """Fold the ``-wal`` of a record whose writer is gone back into the file (best effort: on
    read-only storage the record is read as it is)."""
    if not Path(f"{path}-wal").exists() or _writer_alive(path):
        return
    try:
        conn = sqlite3.connect(path, timeout=2)
        try:
            row = conn.execute("SELECT value FROM run WHERE key = 'status'").fetchone()
            if row is not None and row[0] == '"running"':
                conn.execute("INSERT OR REPLACE INTO run (key, value) VALUES ('status', '\"killed\"')")
                conn.commit()
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
    except sqlite3.Error:
        pass


def _required_columns() -> dict[str, set[str]]:
    """Table -> the columns every record of this schema has (those without a default)."""
    return {t.name: {c.name for c in t.scope + t.columns if c.default is dataclasses.MISSING}
            for t in schema.TABLES}


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection that creates no file: ``mode=ro``, else ``immutable=1`` (storage
    that cannot even take a lock, or a WAL record with no ``-shm`` on read-only storage)."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
        conn.execute("PRAGMA application_id").fetchone()
        return conn
    except sqlite3.OperationalError:
        if Path(f"{path}-wal").exists() and _writer_alive(path):
            raise
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


class Record:
    """Read access to one record.

    Opening never leaves files behind and works on read-only storage: a finished record is one
    file opened read-only (``immutable`` where the storage cannot even take a lock); a record
    whose writer died (its data partly in ``-wal``, no writer holding its lock) is first folded
    back into one file, with status ``killed`` when it still said ``running``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise RecordError(f"{path}: no such record")
        if self.path.is_dir():
            raise RecordError(f"{path}: is a directory, not a record")
        if not self.path.is_file():
            raise RecordError(f"{path}: not a gradscope record (not a regular file)")
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(schema.HEADER_SIZE)
        except OSError as exc:
            raise RecordError(f"{path}: cannot read ({exc.strerror})") from None
        if header[:len(schema.SQLITE_MAGIC)] != schema.SQLITE_MAGIC:
            raise RecordError(f"{path}: not a gradscope record (not an SQLite file)")
        if schema.is_record_header(header):
            _recover(self.path)
        try:
            self._conn = _connect(self.path)
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"{path}: corrupt record ({exc})") from None
        if app_id != schema.APPLICATION_ID:
            raise RecordError(f"{path}: not a gradscope record (an SQLite file of another program)")
        if version > schema.VERSION:
            raise RecordError(
                f"{path}: written by a newer gradscope (record schema {version}, this version "
                f"reads up to {schema.VERSION}); upgrade gradscope to open it"
            )
        try:
            odd = self._conn.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger')"
            ).fetchone()
            if odd is not None:  # a doctored file: a view could recurse forever on every read
                raise RecordError(f"{path}: not a gradscope record (unexpected {odd[0]} {odd[1]!r})")
            self._columns: dict[str, set[str]] = {}  # table -> its columns in this record
            for table, columns in _required_columns().items():
                have = self._columns[table] = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
                if not columns <= have:
                    missing = ", ".join(sorted(columns - have))
                    raise RecordError(f"{path}: corrupt record (table {table} lacks {missing})")
            self._conn.execute("SELECT count(*) FROM steps").fetchone()
            self._series = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'series'").fetchone() is not None
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"{path}: corrupt record ({exc})") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Record":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self):
        """Read the record as of one commit of its writer: every read inside sees the same
        data (one read transaction; the writer goes on committing meanwhile)."""
        if self._conn.in_transaction:  # inside another snapshot: already one
            yield self
            return
        try:
            self._conn.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"{self.path}: corrupt record ({exc})") from None
        try:
            yield self
        finally:
            self._conn.rollback()

    def _rows(self, sql: str, args=()) -> list[sqlite3.Row]:
        self._conn.row_factory = sqlite3.Row
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"{self.path}: corrupt record ({exc})") from None

    def _select(self, table: schema.Table, sql: str = "", args=(), **derived) -> list:
        """Rows of `table` (``SELECT * FROM table <sql>``), decoded to its row class."""
        return [self._decode(table, r, **derived) for r in self._rows(f"SELECT * FROM {table.name} {sql}", args)]

    def _decode(self, table: schema.Table, r: sqlite3.Row, **derived):
        try:
            return table.decode(r, **derived)
        except (TypeError, ValueError, KeyError) as exc:
            raise RecordError(f"{self.path}: corrupt record (table {table.name}: {exc})") from None

    # -- run and structure ------------------------------------------------------------------
    def run(self) -> dict:
        """The run's fields (a run table row is one key and its value)."""
        return {f.key: f.value for f in self._select(schema.RUN)}

    def modules(self) -> list[schema.ModuleRow]:
        return self._select(schema.MODULES, "ORDER BY rowid")

    def optimizers(self) -> list[schema.OptimizerRow]:
        return self._select(schema.OPTIMIZERS, "ORDER BY idx")

    def parameters(self) -> list[schema.ParameterRow]:
        holders: dict[str, list[int]] = {}
        for opt in self.optimizers():
            for name in opt.params:
                holders.setdefault(name, []).append(opt.index)
        layouts = self.run().get("placements") or {}
        return [
            dataclasses.replace(p, optimizers=holders.get(p.name, []), in_optimizer=p.name in holders,
                                placement=layouts.get(p.name))
            for p in self._select(schema.PARAMETERS, "ORDER BY rowid")
        ]

    # -- steps ------------------------------------------------------------------------------
    def step_numbers(self) -> list[int]:
        return [r["step"] for r in self._rows("SELECT step FROM steps ORDER BY step")]

    def steps(self, *, after: int | None = None) -> list[schema.StepRow]:
        """One summary per step (no statistics), of the steps after `after` when given."""
        if after is None:
            return self._select(schema.STEPS, "ORDER BY step")
        return self._select(schema.STEPS, "WHERE step > ? ORDER BY step", (after,))

    def step_count(self, *, after: int | None = None) -> int:
        """How many steps the record holds (after the step `after`, when given)."""
        return self._rows("SELECT count(*) FROM steps WHERE step > ?", (-math.inf if after is None else after,))[0][0]

    def last_step(self) -> int | None:
        return self._rows("SELECT max(step) FROM steps")[0][0]

    def data_version(self) -> int:
        """A number that changes whenever the writer commits: a cheap "anything new?"."""
        return self._rows("PRAGMA data_version")[0][0]

    def step(self, step: int, *, graph: bool = True) -> StepData:
        """Everything recorded for `step`, as the recorder saw it (`graph`: with its autograd
        graph, the costly part to parse)."""
        rows = self._select(schema.STEPS, "WHERE step = ?", (step,))
        if not rows:
            raise RecordError(f"{self.path}: no step {step} (steps: {self._step_range()})")
        data = rows[0].step_data()
        data.calls = self.calls(step)
        data.stats = Stats(self.stats(step=step))
        data.updates = Updates(self.updates(step=step))
        data.tails = {
            (t.module, t.call, t.name): (t.count, t.total)
            for t in self._select(schema.TAILS, "WHERE step = ?", (step,))
        }
        data.hists = {
            h.subject: (h.low, h.high, h.counts)
            for h in self._select(schema.HISTS, "WHERE step = ?", (step,))
        }
        data.graph = self.graph(step, exact=True) if graph else None
        return data

    def _step_range(self) -> str:
        numbers = self.step_numbers()
        return f"{numbers[0]}..{numbers[-1]}" if numbers else "none"

    def calls(self, step: int | None = None, module: str | None = None) -> list[schema.CallRow]:
        sql, args = "WHERE 1=1", []
        if step is not None:
            sql, args = sql + " AND step = ?", args + [step]
        if module is not None:
            sql, args = sql + " AND module = ?", args + [module]
        return self._select(schema.CALLS, sql + " ORDER BY step, rowid", args)

    def calls_as_of(self, step: int, module: str | None = None) -> list[schema.CallRow]:
        """The module calls of `step`, or where the step recorded its root calls only
        (`StepData.described`), those of the latest step at or before it that recorded them all
        (each row says its step)."""
        if "described" not in self._columns["steps"]:
            return self.calls(step, module)  # a record from before light steps: all described
        rows = self._rows("SELECT max(step) AS step FROM steps WHERE step <= ? AND described", (step,))
        return self.calls(step if rows[0]["step"] is None else rows[0]["step"], module)

    def stats(self, *, step: int | None = None, kind: str | None = None,
              subject: str | None = None) -> list[Stat]:
        sql, args = "WHERE 1=1", []
        for column, value in (("step", step), ("kind", kind), ("subject", subject)):
            if value is not None:
                sql, args = sql + f" AND {column} = ?", args + [value]
        return self._select(schema.STATS, sql + " ORDER BY step, rowid", args)

    def _stepped(self, table: schema.Table, sql: str, args=()) -> list[tuple[int, object]]:
        return [(r["step"], self._decode(table, r)) for r in self._rows(sql, args)]

    def stat_series(self, kind: str, subject: str, *, after: int | None = None) -> list[tuple[int, Stat]]:
        """(step, stat) for the first call of `subject` in every step it was recorded (after
        the step `after`, when given: read through the step index)."""
        if after is not None:
            return self._stepped(schema.STATS, "SELECT * FROM stats WHERE step > ? AND kind = ? AND subject = ?"
                                 " AND call = 0 ORDER BY step, rowid", (after, kind, subject))
        if not self._series:  # a record from before `schema.SERIES_DDL`: stats have a subject index
            return self._stepped(
                schema.STATS,
                "SELECT * FROM stats WHERE kind = ? AND subject = ? AND call = 0 ORDER BY step",
                (kind, subject),
            )
        with self.snapshot():
            listed = self._rows("SELECT rowids FROM series WHERE kind = ? AND subject = ?", (kind, subject))
            rows = [r for r in self._listed(listed) if r["call"] == 0]
            rows += self._rows(
                "SELECT rowid AS row_, * FROM stats WHERE step > ? AND kind = ? AND subject = ? AND call = 0",
                (self._series_through(), kind, subject),
            )
        rows.sort(key=lambda r: (r["step"], r["row_"]))
        return [(r["step"], self._decode(schema.STATS, r)) for r in rows]

    def latest_stats(self, kind: str) -> dict[str, tuple[int, Stat]]:
        """subject -> (step, stat) of the most recent first-call row of `kind` per subject."""
        if not self._series:  # a record from before `schema.SERIES_DDL`: stats have a subject index
            rows = self._stepped(
                schema.STATS,
                "SELECT s.* FROM stats s JOIN (SELECT subject, max(step) AS step FROM stats"
                " WHERE kind = ? AND call = 0 GROUP BY subject) m"
                " ON s.subject = m.subject AND s.step = m.step"
                " WHERE s.kind = ? AND s.call = 0 AND s.path = '' ORDER BY s.rowid",
                (kind, kind),
            )
            return {stat.subject: (step, stat) for step, stat in rows}
        with self.snapshot():  # each subject's latest list, and the steps not listed yet
            lists = self._rows(
                "SELECT s.rowids FROM series s JOIN (SELECT subject, max(last) AS last FROM series"
                " WHERE kind = ? GROUP BY subject) m ON s.subject = m.subject AND s.last = m.last"
                " WHERE s.kind = ?", (kind, kind))
            rows = self._listed(lists)
            rows += self._rows(
                "SELECT rowid AS row_, * FROM stats WHERE step > ? AND kind = ?",
                (self._series_through(), kind),
            )
            # a subject whose latest rows are of later calls only (its first call lost them): its
            # earlier lists (the latest was read above), latest first, up to one with a first call
            first_calls = {r["subject"] for r in rows if r["call"] == 0}
            for subject in sorted({r["subject"] for r in rows} - first_calls):
                older = self._rows("SELECT rowids FROM series WHERE kind = ? AND subject = ? ORDER BY last DESC",
                                   (kind, subject))
                for listed in older[1:]:
                    found = [r for r in self._listed([listed]) if r["call"] == 0]
                    if found:
                        rows += found
                        break
        latest: dict[str, tuple[int, sqlite3.Row | None]] = {}  # the latest first call; its plain row
        for r in sorted(rows, key=lambda r: (r["step"], r["row_"])):
            if r["call"] != 0:
                continue
            if latest.get(r["subject"], (-1,))[0] < r["step"]:
                latest[r["subject"]] = (r["step"], None)
            if r["path"] == "":
                latest[r["subject"]] = (r["step"], r)
        chosen = sorted((r["row_"], r) for _, r in latest.values() if r is not None)
        return {r["subject"]: (r["step"], self._decode(schema.STATS, r)) for _, r in chosen}

    def last_stats_step(self, subject: str, step: int) -> int | None:
        """The latest step at or before `step` with statistics beyond the gradient of `subject`."""
        if not self._series:  # a record from before `schema.SERIES_DDL`: stats have a subject index
            rows = self._rows(
                "SELECT max(step) AS step FROM stats WHERE subject = ? AND step <= ? AND kind != 'grad'",
                (subject, step),
            )
            return rows[0]["step"] if rows else None
        others = [kind for kind in KINDS if kind != "grad"]
        with self.snapshot():
            found = self._rows(  # the steps not listed yet
                "SELECT max(step) AS step FROM stats WHERE step > ? AND step <= ? AND subject = ? AND kind != 'grad'",
                (self._series_through(), step, subject),
            )[0]["step"]
            if found is not None:
                return found
            # then the subject's lists, latest first: the first with a step at or before `step` has the latest
            lists = self._rows(
                f"SELECT last, rowids FROM series WHERE kind IN ({', '.join('?' * len(others))}) AND subject = ?"
                " AND first <= ? ORDER BY last DESC", (*others, subject, step))
            for _, group in itertools.groupby(lists, key=lambda r: r["last"]):
                found = max((r["step"] for r in self._listed(list(group), step)), default=None)
                if found is not None:
                    return found
        return None

    def _series_through(self) -> int:
        """The last step the `series` lists cover (-1: none yet); later steps are read by step."""
        try:
            return series.series_through(self._conn)
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"{self.path}: corrupt record ({exc})") from None

    def _listed(self, lists: list, up_to: int | None = None) -> list[sqlite3.Row]:
        """The stats rows (with their rowid as ``row_``) whose rowids `lists` (`series` rows)
        hold, up to the step `up_to`."""
        try:
            rowids = [int(n) for r in lists for n in r["rowids"].split(",")]
        except (AttributeError, ValueError):
            raise RecordError(f"{self.path}: corrupt record (table series: not a list of rows)") from None
        rows = []
        for start in range(0, len(rowids), _IN_LIST):
            part = rowids[start:start + _IN_LIST]
            rows += self._rows(f"SELECT rowid AS row_, * FROM stats WHERE rowid IN ({', '.join('?' * len(part))})"
                               " AND step <= ?", (*part, math.inf if up_to is None else up_to))
        return rows

    def latest_hist(self, subject: str, step: int) -> tuple[int, tuple[float, float, list[int]]] | None:
        """(step, (low, high, counts)) of `subject`'s gradient histogram at or before `step`."""
        rows = self._select(schema.HISTS, "WHERE subject = ? AND step <= ? ORDER BY step DESC LIMIT 1",
                            (subject, step))
        return (rows[0].step, (rows[0].low, rows[0].high, rows[0].counts)) if rows else None

    def update_series(self, param: str, *, after: int | None = None) -> list[tuple[int, Update]]:
        """(step, update) of `param` for every recorded step (after the step `after`, when
        given): one lookup of its (step, param) key per step, not a pass over every parameter's
        rows (the table has no index by parameter: 1.37M rows of 134 parameters took 126-198 ms
        a read, now 42 ms). ``CROSS JOIN`` keeps the steps as the outer loop (SQLite's way of
        fixing the join order)."""
        return self._stepped(schema.UPDATES, "SELECT u.* FROM steps s CROSS JOIN updates u"
                             " ON u.step = s.step AND u.param = ? WHERE s.step > ? ORDER BY s.step",
                             (param, -math.inf if after is None else after))

    def latest_calls(self) -> dict[str, list[schema.CallRow]]:
        """module -> its calls in the most recent step that described every call and called
        it (`StepData.described`: a light step records its first root call only, as it began),
        else in the most recent step that called it."""
        latest = "max(step)"
        if "described" in self._columns["steps"]:
            latest = ("coalesce(max(CASE WHEN step IN (SELECT step FROM steps WHERE described)"
                      " THEN step END), max(step))")
        rows = self._select(
            schema.CALLS,
            f"c JOIN (SELECT module, {latest} AS step FROM calls GROUP BY module) m"
            " ON c.module = m.module AND c.step = m.step ORDER BY c.rowid",
        )
        out: dict[str, list[schema.CallRow]] = {}
        for call in rows:
            out.setdefault(call.module, []).append(call)
        return out

    def latest_updates(self) -> dict[str, tuple[int, Update]]:
        """param -> (step, update) of its most recent step."""
        rows = self._stepped(
            schema.UPDATES,
            "SELECT u.* FROM updates u JOIN (SELECT param, max(step) AS step FROM updates"
            " GROUP BY param) m ON u.param = m.param AND u.step = m.step ORDER BY u.rowid",
        )
        return {update.param: (step, update) for step, update in rows}

    def updates(self, *, step: int | None = None, param: str | None = None) -> list[Update]:
        sql, args = "WHERE 1=1", []
        for column, value in (("step", step), ("param", param)):
            if value is not None:
                sql, args = sql + f" AND {column} = ?", args + [value]
        return self._select(schema.UPDATES, sql + " ORDER BY step, rowid", args)

    def graph(self, step: int | None = None, *, exact: bool = False) -> GraphData | None:
        """The autograd graph of `step` (or, unless `exact`, the latest one recorded before it)."""
        if step is None:
            rows = self._select(schema.GRAPHS, "ORDER BY step DESC LIMIT 1")
        elif exact:
            rows = self._select(schema.GRAPHS, "WHERE step = ?", (step,))
        else:
            rows = self._select(schema.GRAPHS, "WHERE step <= ? ORDER BY step DESC LIMIT 1", (step,))
        return GraphData.from_json(rows[0].data) if rows else None

    def graph_step(self, step: int) -> int | None:
        """The latest step at or before `step` whose autograd graph was recorded."""
        rows = self._rows("SELECT max(step) AS step FROM graphs WHERE step <= ?", (step,))
        return rows[0]["step"] if rows else None

    def findings(self) -> list[schema.FindingRow]:
        return self._select(schema.FINDINGS, "ORDER BY id")
