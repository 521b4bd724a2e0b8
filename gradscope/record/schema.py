"""The record's SQLite schema, declared once: every table is a row dataclass.

A table's DDL, its INSERT and the decoding of its rows all come from the fields of one dataclass
(`Table`), so a new column is one new field with a default: records written before it existed
still open, and read the default. Column types follow the field's annotation: ``str`` TEXT,
``int`` INTEGER, ``bool`` INTEGER read back as a bool, ``float`` REAL, anything else (lists,
dicts) JSON text; ``X | None`` makes the column nullable. SQLite stores NaN as NULL, so a
``float`` column reads NULL back as NaN (a ``float | None`` one as None).

The file is marked with a SQLite ``application_id`` so that any other SQLite file is told apart,
and ``user_version`` carries the schema version: it changes only when a record written by this
version could not be read by the previous one (a removed or retyped column), never for a new one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import sqlite3
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from ..data import Stat, StepData, Update
from ..findings import Finding

APPLICATION_ID = 0x67726473  # "grds"
VERSION = 1
#: Every SQLite file starts with this; its header holds the application id at bytes 68..72.
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 72


def is_record_header(header: bytes) -> bool:
    """Whether a file's first `HEADER_SIZE` bytes are a gradscope record's: an SQLite file
    carrying gradscope's application id."""
    return (header[:len(SQLITE_MAGIC)] == SQLITE_MAGIC and len(header) == HEADER_SIZE
            and int.from_bytes(header[68:72], "big") == APPLICATION_ID)


_DERIVED = "gradscope.derived"


def derived(default_factory: Callable[[], Any]):
    """A row field the reader fills in from other tables; it has no column."""
    return field(default_factory=default_factory, metadata={_DERIVED: True})


class Row(Mapping):
    """A record row: a frozen dataclass that also reads as a mapping of its fields, so views
    that treat rows as JSON objects (``row["name"]``, ``dict(row)``) take it as it is."""

    def __getitem__(self, key: str):
        if key not in self._field_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    @classmethod
    @functools.cache  # once per row class: read for every field of every row (100,000 steps' rows in a report)
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _dumps(value) -> str:
    # anything JSON cannot hold is stored as its type name: it loses only itself
    return json.dumps(value, separators=(",", ":"), allow_nan=True, default=lambda v: f"<{type(v).__name__}>")


def _same(value):
    return value


@dataclass(frozen=True)
class Column:
    """One column: its SQL declaration and how a field's value goes in and comes out."""

    name: str  # in SQL
    field: str  # in the row
    sql: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    default: Any  # dataclasses.MISSING: none


def _stored_fields(row: type) -> list[tuple[str, Any]]:
    """(name, default) of a row class's stored fields: a dataclass's (derived ones left out) or
    a named tuple's; `dataclasses.MISSING` for no default."""
    if not dataclasses.is_dataclass(row):
        return [(name, row._field_defaults.get(name, dataclasses.MISSING)) for name in row._fields]
    out = []
    for f in dataclasses.fields(row):
        if f.metadata.get(_DERIVED):
            continue
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append((f.name, default))
    return out


def _column(field_name: str, default, annotation, name: str) -> Column:
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    null = "" if optional else " NOT NULL"
    if base is bool:
        sql, encode = "INTEGER" + null, _same
        decode = (lambda v: None if v is None else bool(v)) if optional else bool
    elif base is int:
        sql, encode, decode = "INTEGER" + null, _same, _same
    elif base is float:
        sql, encode = "REAL", _same  # NaN is stored as NULL whatever the field says
        decode = _same if optional else (lambda v: math.nan if v is None else v)
    elif base is str:
        sql, encode, decode = "TEXT" + null, _same, _same
    else:
        sql, encode, decode = "TEXT" + null, _dumps, json.loads
        if optional:
            encode = lambda v: None if v is None else _dumps(v)  # noqa: E731
            decode = lambda v: None if v is None else json.loads(v)  # noqa: E731
    return Column(name, field_name, sql, encode, decode, default)


class Table:
    """A table whose rows are instances of `row` (a dataclass or a named tuple).

    `scope` names leading columns that place a row but are not part of it (the ``step`` of a
    `Stat`); `columns` renames fields whose name SQL reserves; `key` is the primary key;
    `integer_key` declares ``<name> INTEGER PRIMARY KEY`` outside the row (the findings' id);
    `indexes` maps an index name to its columns; `fix` adjusts a decoded row; `shared` names
    fields whose values are shared between rows and never changed once made (a module call's
    descriptions, the same objects from step to step): each such object is encoded once.
    """

    def __init__(self, name: str, row: type, *, key: tuple[str, ...] = (), scope: dict[str, type] | None = None,
                 columns: dict[str, str] | None = None, integer_key: str | None = None,
                 indexes: dict[str, tuple[str, ...]] | None = None, fix: Callable | None = None,
                 shared: tuple[str, ...] = ()):
        self.name = name
        self.row = row
        self.key = key
        self.integer_key = integer_key
        self.indexes = indexes or {}
        self._fix = fix
        self._statements: dict[tuple[bool, int], str] = {}
        hints = typing.get_type_hints(row)
        renamed = columns or {}
        self.scope = [Column(n, n, "INTEGER NOT NULL" if t is int else "TEXT NOT NULL",
                             _same, _same, dataclasses.MISSING)
                      for n, t in (scope or {}).items()]
        self.columns = [_column(name, default, hints[name], renamed.get(name, name))
                        for name, default in _stored_fields(row)]
        # writing a row instance: its fields in one call (a named tuple is its fields), then only
        # the encoders that change a value
        fields = [c.field for c in self.columns]
        if not dataclasses.is_dataclass(row):
            self._fields = _same
        elif len(fields) > 1:
            self._fields = operator.attrgetter(*fields)
        else:
            self._fields = lambda r: (getattr(r, fields[0]),)
        self._encoders = [(i, _Once(c.encode) if c.field in shared else c.encode)
                          for i, c in enumerate(self.columns) if c.encode is not _same]
        #: the row class when its instances go in as they are (a named tuple without encoders)
        self._plain = row if self._fields is _same and not self._encoders else None

    def ddl(self) -> str:
        parts = [f"{self.integer_key} INTEGER PRIMARY KEY"] if self.integer_key else []
        parts += [f"{c.name} {c.sql}" for c in self.scope + self.columns]
        if self.key:
            parts.append(f"PRIMARY KEY ({', '.join(self.key)})")
        statements = [f"CREATE TABLE {self.name} ({', '.join(parts)});"]
        statements += [f"CREATE INDEX {index} ON {self.name} ({', '.join(cols)});"
                       for index, cols in self.indexes.items()]
        return "\n".join(statements)

    def insert(self, conn: sqlite3.Connection, rows: Iterable, *, replace: bool = False, **scope) -> sqlite3.Cursor:
        """Write `rows` (instances of the row class, plain tuples of its fields when it is a named
        tuple stored as it is, or mappings with its field names); `scope` gives the values of the
        scope columns. Returns the cursor (``lastrowid`` of one row)."""
        head = tuple(scope[c.name] for c in self.scope)
        # the statements' parameters, row after row: no tuple per row (see `FrozenBatch.read`)
        values: list = []
        plain, encoded, fields = self._plain, self._encoded, len(self.columns)
        for row in rows:
            values += head
            if type(row) is plain or (type(row) is tuple and plain and len(row) == fields):
                values += row
            else:  # a plain tuple of another length fails here, never written shifted
                values += encoded(row)
        width = len(self.scope) + len(self.columns)
        per_statement = max(1, min(_ROWS_PER_STATEMENT, _VARIABLES // width))
        cursor = None
        for start in range(0, len(values) // width, per_statement):  # one statement per many rows:
            rows_in = min(per_statement, len(values) // width - start)  # SQLite runs it without the GIL
            cursor = conn.execute(self._sql(replace, rows_in),
                                  values[start * width:(start + rows_in) * width])
        return cursor

    def _sql(self, replace: bool, rows: int) -> str:
        key = (replace, rows)
        sql = self._statements.get(key)
        if sql is None:
            names = [c.name for c in self.scope + self.columns]
            group = f"({', '.join('?' * len(names))})"
            sql = (f"INSERT {'OR REPLACE ' if replace else ''}INTO {self.name} ({', '.join(names)})"
                   f" VALUES {', '.join([group] * rows)}")
            if rows in (1, _ROWS_PER_STATEMENT):  # kept: the usual sizes (others are one remainder)
                self._statements[key] = sql
        return sql

    def _encoded(self, row) -> tuple:
        if type(row) is self.row or (isinstance(row, Row) and isinstance(row, self.row)):
            if not self._encoders:  # every value goes in as it is (tail rows, modules)
                return self._fields(row)
            values = list(self._fields(row))
        elif type(row) is dict:
            values = [row.get(c.field, c.default) if c.default is not dataclasses.MISSING else row[c.field]
                      for c in self.columns]
        else:
            values = [_value(row, c) for c in self.columns]
        for i, encode in self._encoders:
            values[i] = encode(values[i])
        return tuple(values)

    def decode(self, r: sqlite3.Row, **derived_values):
        """A row instance from an SQLite row; columns the record lacks (it predates them) take
        their field's default."""
        present = set(r.keys())
        values = {c.field: c.decode(r[c.name]) if c.name in present else c.default for c in self.columns}
        row = self.row(**values, **derived_values)
        return self._fix(row) if self._fix else row


#: Rows per INSERT statement, and the most parameters one statement may have (SQLite's limit).
_ROWS_PER_STATEMENT = 256
_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


class _Once:
    """An encoder that encodes each object once: the text is kept, with the object (so that its
    id is not reused), for the objects met lately."""

    LIMIT = 16384

    def __init__(self, encode: Callable[[Any], Any]):
        self._encode = encode
        self._done: dict[int, tuple[Any, Any]] = {}

    def __call__(self, value):
        done = self._done.get(id(value))
        if done is not None and done[0] is value:
            return done[1]
        if len(self._done) >= self.LIMIT:
            self._done.clear()
        text = self._encode(value)
        self._done[id(value)] = (value, text)
        return text


def _value(row, column: Column):
    if isinstance(row, Mapping) and not isinstance(row, Row):
        if column.default is not dataclasses.MISSING:
            return row.get(column.field, column.default)
        return row[column.field]
    return getattr(row, column.field)


# -- the tables -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunField(Row):
    """One field of the run: target, status, exit code, rank, steps written..."""

    key: str
    value: Any


@dataclass(frozen=True)
class ModuleRow(Row):
    """A watched module: its qualified `name`, class name, the `root` it was found under and how
    many parameters it owns directly."""

    name: str
    type: str
    root: str
    params: int


@dataclass(frozen=True)
class ParameterRow(Row):
    """A watched parameter (`module` is None for one known only from an optimizer); `sampled`
    when update auditing follows a sample of its elements. `optimizers` (their indices) and
    `in_optimizer` come from the optimizers table; `placement`, the layout of a sharded
    parameter (FSDP2's DTensors, else None), from the run's ``placements``."""

    name: str
    module: str | None
    shape: list
    dtype: str
    device: str
    requires_grad: bool
    numel: int
    sampled: bool
    optimizers: list = derived(list)
    in_optimizer: bool = derived(bool)
    placement: dict | None = derived(lambda: None)


@dataclass(frozen=True)
class OptimizerRow(Row):
    """An optimizer: its `index` in the run, class name, parameter names, param-group settings
    and the step it was first seen at."""

    index: int
    type: str
    params: list
    groups: list
    first_step: int


@dataclass(frozen=True)
class StepRow(Row):
    """One step's summary: backward passes, optimizers that stepped, zero_grad calls, modules in
    eval mode, learning rates, whether every module call was recorded (each the `StepData` field
    of the same name), and how many module calls were recorded."""

    step: int
    time: float
    backwards: int
    optimizer_steps: list
    zero_grad: list
    eval_modules: list
    lrs: dict
    calls: int
    described: bool = True

    @classmethod
    def of(cls, data) -> "StepRow":
        """The summary of a `StepData`."""
        values = {f.name: getattr(data, f.name) for f in dataclasses.fields(cls) if f.name != "calls"}
        return cls(**values, calls=len(data.calls))

    def step_data(self):
        """A `StepData` holding this summary (its statistics and calls still to fill in)."""
        return StepData(**{name: value for name, value in self.items() if name != "calls"})


@dataclass(frozen=True)
class CallRow(Row):
    """One call of a module in a step: train/eval mode and its inputs' and outputs' shapes."""

    step: int
    module: str
    call: int
    training: bool | None
    inputs: list
    outputs: list


@dataclass(frozen=True)
class TailRow(Row):
    """A plugin's `TailCount` for one module call: `count` of `total` elements outside."""

    step: int
    module: str
    call: int
    name: str
    count: int
    total: int


@dataclass(frozen=True)
class HistRow(Row):
    """A parameter's gradient histogram on a step with full statistics."""

    step: int
    subject: str
    low: float
    high: float
    counts: list


@dataclass(frozen=True)
class GraphRow(Row):
    """The autograd graph walked at `step` (`GraphData` as JSON)."""

    step: int
    data: dict


@dataclass(frozen=True)
class FindingRow(Finding, Row):
    """A finding as the record keeps it: one row per (check, subject), with the `count` of
    times it was reported and the `last_step` it was seen at."""

    last_step: int | None = None
    count: int = 1


def _stepped_nan(update: Update) -> Update:
    """NULL in an optimizer column of a parameter an optimizer stepped was a NaN."""
    if update.optimizer is None:
        return update
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    return update._replace(delta=nan(update.delta), weight=nan(update.weight), outside=nan(update.outside))


RUN = Table("run", RunField, key=("key",))
MODULES = Table("modules", ModuleRow, key=("name",))
PARAMETERS = Table("parameters", ParameterRow, key=("name",))
OPTIMIZERS = Table("optimizers", OptimizerRow, key=("idx",), columns={"index": "idx"})
STEPS = Table("steps", StepRow, key=("step",))
CALLS = Table("calls", CallRow, key=("step", "module", "call"), shared=("inputs", "outputs"))
STATS = Table("stats", Stat, scope={"step": int}, indexes={"stats_by_step": ("step",)})
UPDATES = Table("updates", Update, scope={"step": int}, key=("step", "param"), fix=_stepped_nan)
TAILS = Table("tails", TailRow)
HISTS = Table("hists", HistRow, key=("step", "subject"))
GRAPHS = Table("graphs", GraphRow, key=("step",))
FINDINGS = Table("findings", FindingRow, integer_key="id", columns={"check": "check_id"})

TABLES = (RUN, MODULES, PARAMETERS, OPTIMIZERS, STEPS, CALLS, STATS, UPDATES, TAILS, HISTS, GRAPHS, FINDINGS)


# -- statistics by subject ----------------------------------------------------------------------
#: Steps listed by one `series` row at most. The stats table has no index by subject: one entry
#: per row, each at its own place in the index, cost six times the row itself to write (the
#: index's pages split all over, and each commit wrote them all again). Instead every
#: `SERIES_STEPS` steps one row per (kind, subject) lists the rowids of its stats rows; the steps
#: after the last listed are read through the step index (`series`).
SERIES_STEPS = 64
#: The `series` table; a record written before it has ``stats_by_subject`` on stats instead.
SERIES_DDL = (
    "CREATE TABLE series (last INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,"
    " first INTEGER NOT NULL, rowids TEXT NOT NULL, PRIMARY KEY (last, kind, subject)) WITHOUT ROWID;\n"
    "CREATE INDEX series_by_subject ON series (kind, subject, last);"
)


def create(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database and mark it as a gradscope record."""
    conn.executescript("\n".join([t.ddl() for t in TABLES] + [SERIES_DDL]))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {VERSION}")
    conn.commit()
