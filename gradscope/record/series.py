"""The `series` lists: every `schema.SERIES_STEPS` steps, one row per (kind, subject) listing
the rowids of its stats rows (the stats table has no index by subject, see `schema.SERIES_DDL`).

Listing the rows with SQL sorts every stats row of the range by subject (128,000 rows every 64
steps for 2,000 parameters: 2.7-4 ms of the recorder's CPU a step). The writer knows where each
row went as it inserts them: a step's rows take consecutive rowids, in the order of its rows,
and steps between statistics steps have the same rows, kind and subject, step after step. So
`Listing` keeps, per step written, its layout (the same object while the rows stay alike) and
its first rowid, and lists a subject's rows by arithmetic. The record stays the authority: the
lists come from memory only when they start where the record's `series` end and nothing was
rolled back since; otherwise SQL lists the range, as before.
"""

from __future__ import annotations

import functools
import itertools
import operator

_KIND, _SUBJECT = operator.itemgetter(0), operator.itemgetter(1)
#: `series` rows per INSERT statement (five parameters each, under SQLite's 32,766 variables)
_ROWS_PER_STATEMENT = 256


def series_through(conn) -> int:
    """The last step whose stats rows `series` lists (-1: none yet)."""
    return conn.execute("SELECT coalesce(max(last), -1) FROM series").fetchone()[0]


def add_series(conn, through: int) -> None:
    """List in `series` the stats rows of the steps after the last listed, up to `through`, with
    SQL: the range starts where the record's series end (not where the writer believes), so a
    range whose writing was undone is listed by the next one."""
    first = series_through(conn) + 1
    if through < first:
        return
    conn.execute(
        "INSERT INTO series (last, kind, subject, first, rowids)"
        " SELECT ?, kind, subject, ?, group_concat(rowid) FROM stats WHERE step >= ? AND step <= ?"
        " GROUP BY kind, subject",
        (through, first, first, through),
    )


class Listing:
    """The stats rows written since the last listing, as the writer inserted them.

    The writer reports each step's insert (`wrote`), then whether its message was kept or
    undone, or the whole transaction lost (`lost`). `add` lists the rows up to a step: from
    memory when the record agrees, with `add_series` otherwise."""

    def __init__(self):
        self._first: int | None = 0  # the step the kept layouts start from; None: not to be trusted
        self._steps: list[tuple[int, tuple, int]] = []  # (step, layout, first rowid), kept
        self._pending: tuple[int, tuple, int] | None = None  # the message in progress
        self._layout: tuple = ((), ())  # (kinds, subjects) of the last step: the same object while alike

    def wrote(self, step: int, rows: list, last_rowid: int | None) -> None:
        """`rows` (plain stats tuples) of `step` went in with consecutive rowids up to
        `last_rowid`, in the message in progress."""
        if not rows:
            return
        kinds, subjects = list(map(_KIND, rows)), list(map(_SUBJECT, rows))
        if kinds != self._layout[0] or subjects != self._layout[1]:  # the same strings: compared by identity first
            self._layout = (kinds, subjects)
        self._pending = (step, self._layout, last_rowid - len(rows) + 1)

    def kept(self) -> None:
        """The message in progress is in the transaction."""
        if self._pending is not None:
            self._steps.append(self._pending)
            self._pending = None

    def undone(self) -> None:
        """The message in progress was undone alone: its rows are not in the record."""
        self._pending = None

    def lost(self) -> None:
        """The open transaction was rolled back: rows kept in memory may be gone, so the next
        listing is SQL's."""
        self._pending, self._first = None, None

    def add(self, conn, through: int) -> None:
        """List the stats rows of the steps after the last listed, up to `through`, the message
        in progress included."""
        first = series_through(conn) + 1
        if through < first:
            return
        steps = self._steps + ([self._pending] if self._pending is not None else [])
        if self._first == first and all(first <= s <= through for s, _, _ in steps):
            _insert(conn, through, first, _lists(steps))
        else:
            add_series(conn, through)
        # the message in progress is listed with it: undone, they go together (and the record's
        # series then end before `_first`: the next listing is SQL's)
        self._steps, self._pending, self._first = [], None, through + 1


def _lists(steps: list[tuple[int, tuple, int]]) -> dict[tuple[str, str], list[int]]:
    """Rowids by (kind, subject) of the rows of `steps` ((step, layout, first rowid) each, in
    step order), in rowid order. A layout is one object per run of alike steps (`wrote`): a run
    gives each row of its layout a rowid per step, arithmetically; a subject with several rows a
    step (module calls) has them interleaved, hence the sort (of runs already in order)."""
    out: dict[tuple[str, str], list[int]] = {}
    for (kinds, subjects), run in itertools.groupby(steps, key=operator.itemgetter(1)):
        starts = [start for _, _, start in run]
        every = starts[1] - starts[0] if len(starts) > 1 else 1
        if every > 0 and starts == list(range(starts[0], starts[-1] + 1, every)):  # evenly spaced steps
            first, end = starts[0], starts[-1] + 1
            taken = [range(first + i, end + i, every) for i in range(len(kinds))]
        else:
            taken = [[start + i for start in starts] for i in range(len(kinds))]
        for key, ids in zip(zip(kinds, subjects), taken):
            rowids = out.get(key)
            if rowids is None:
                out[key] = list(ids)
            else:
                rowids += ids
    for rowids in out.values():
        rowids.sort()
    return out


def _insert(conn, through: int, first: int, lists: dict[tuple[str, str], list[int]]) -> None:
    """Write one `series` row per list, many rows per statement; the lists as SQL's
    ``group_concat`` writes them."""
    values: list = []
    for (kind, subject), rowids in lists.items():
        values += (through, kind, subject, first, _csv(len(rowids)) % tuple(rowids))
    for start in range(0, len(values), 5 * _ROWS_PER_STATEMENT):
        part = values[start:start + 5 * _ROWS_PER_STATEMENT]
        conn.execute("INSERT INTO series (last, kind, subject, first, rowids) VALUES "
                     + ", ".join(["(?, ?, ?, ?, ?)"] * (len(part) // 5)), part)


@functools.lru_cache(maxsize=256)
def _csv(n: int) -> str:
    """A format for `n` integers separated by commas (one ``%`` formats a list: twice as fast
    as joining each integer's string)."""
    return ",".join(["%d"] * n)
