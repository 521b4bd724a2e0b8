"""The record's tables, declared once: what is written reads back as typed rows, records written
by the first schema still open, and a new column is one field."""

import dataclasses
import gc
import json
import math
import sqlite3

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import RecordError
from gradscope.record import schema, series
from waiting import wait_for

# The schema of records written before the tables were declared as dataclasses (user_version 1),
# kept verbatim: records of that version must keep opening.
V1_DDL = """
CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE modules (
    name TEXT PRIMARY KEY, type TEXT NOT NULL, root TEXT NOT NULL, params INTEGER NOT NULL
);
CREATE TABLE parameters (
    name TEXT PRIMARY KEY, module TEXT, shape TEXT NOT NULL, dtype TEXT NOT NULL,
    device TEXT NOT NULL, requires_grad INTEGER NOT NULL, numel INTEGER NOT NULL,
    sampled INTEGER NOT NULL
);
CREATE TABLE optimizers (
    idx INTEGER PRIMARY KEY, type TEXT NOT NULL, params TEXT NOT NULL, groups TEXT NOT NULL,
    first_step INTEGER NOT NULL
);
CREATE TABLE steps (
    step INTEGER PRIMARY KEY, time REAL NOT NULL, backwards INTEGER NOT NULL,
    optimizer_steps TEXT NOT NULL, zero_grad TEXT NOT NULL, eval_modules TEXT NOT NULL,
    lrs TEXT NOT NULL, calls INTEGER NOT NULL
);
CREATE TABLE calls (
    step INTEGER NOT NULL, module TEXT NOT NULL, call INTEGER NOT NULL, training INTEGER,
    inputs TEXT NOT NULL, outputs TEXT NOT NULL, PRIMARY KEY (step, module, call)
);
CREATE TABLE stats (
    step INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, call INTEGER NOT NULL,
    path TEXT NOT NULL, count INTEGER NOT NULL, mean REAL, std REAL, min REAL, max REAL,
    norm REAL, zeros INTEGER, nonfinite INTEGER
);
CREATE INDEX stats_by_subject ON stats (subject, kind, step);
CREATE INDEX stats_by_step ON stats (step);
CREATE TABLE updates (
    step INTEGER NOT NULL, param TEXT NOT NULL, optimizer INTEGER, delta REAL, weight REAL,
    outside REAL, step_delta REAL, step_weight REAL,
    PRIMARY KEY (step, param)
);
CREATE TABLE tails (
    step INTEGER NOT NULL, module TEXT NOT NULL, call INTEGER NOT NULL, name TEXT NOT NULL,
    count INTEGER NOT NULL, total INTEGER NOT NULL
);
CREATE TABLE hists (
    step INTEGER NOT NULL, subject TEXT NOT NULL, low REAL, high REAL, counts TEXT NOT NULL,
    PRIMARY KEY (step, subject)
);
CREATE TABLE graphs (step INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE findings (
    id INTEGER PRIMARY KEY, check_id TEXT NOT NULL, severity TEXT NOT NULL,
    subject TEXT NOT NULL, step INTEGER, last_step INTEGER, count INTEGER NOT NULL,
    message TEXT NOT NULL, evidence TEXT NOT NULL, hint TEXT NOT NULL
);
"""

GRAPH = {"nodes": [], "edges": [], "functions": {}}


def v1_record(path):
    """A record as the version 1 writer wrote it (positional INSERTs, NaN stored as NULL)."""
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.executemany("INSERT INTO run VALUES (?, ?)", [("status", '"finished"'), ("steps", "1")])
    conn.execute("INSERT INTO modules VALUES ('', 'Linear', '', 2)")
    conn.executemany("INSERT INTO parameters VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        ("weight", "", "[1,2]", "float32", "cpu", 1, 2, 0),
        ("bias", "", "[1]", "float32", "cpu", 0, 1, 0),
    ])
    conn.execute("INSERT INTO optimizers VALUES (0, 'SGD', '[\"weight\"]', '[{\"lr\":0.1}]', 0)")
    conn.execute("INSERT INTO steps VALUES (0, 12.5, 1, '[0]', '[]', '[]', '{\"0\":[0.1]}', 1)")
    conn.execute("INSERT INTO calls VALUES (0, '', 0, 1, '[{\"shape\":[4,2]}]', '[{\"shape\":[4,1]}]')")
    conn.execute("INSERT INTO stats VALUES (0, 'grad', 'weight', 0, '', 2, NULL, 0.5, -1.0, 1.0, 2.0, 0, 1)")
    conn.executemany("INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        (0, "weight", 0, None, 1.0, 0.0, 0.1, 1.0),  # stepped: NULL was a NaN
        (0, "bias", None, None, None, None, 0.0, 1.0),  # not stepped: None
    ])
    conn.execute("INSERT INTO tails VALUES (0, '', 0, 'sat', 3, 4)")
    conn.execute("INSERT INTO hists VALUES (0, 'weight', -1.0, NULL, '[1,0,1]')")
    conn.execute("INSERT INTO graphs VALUES (0, ?)", (json.dumps(GRAPH),))
    conn.execute("INSERT INTO findings (check_id, severity, subject, step, last_step, count, message,"
                 " evidence, hint) VALUES ('nonfinite', 'error', 'weight', 0, 3, 4, 'NaN', '{\"n\":1}', 'fix')")
    conn.commit()
    conn.close()
    return path


def test_a_version_1_record_opens_and_decodes_to_typed_rows(tmp_path):
    with gradscope.open_record(v1_record(tmp_path / "old.sqlite")) as record:
        assert record.run() == {"status": "finished", "steps": 1}
        assert record.modules() == [schema.ModuleRow("", "Linear", "", 2)]
        weight, bias = record.parameters()
        assert isinstance(weight, schema.ParameterRow) and weight.shape == [1, 2]
        assert weight.requires_grad is True and bias.requires_grad is False and weight.sampled is False
        assert weight.optimizers == [0] and weight.in_optimizer and not bias.in_optimizer
        assert record.optimizers() == [schema.OptimizerRow(0, "SGD", ["weight"], [{"lr": 0.1}], 0)]
        assert record.steps() == [schema.StepRow(0, 12.5, 1, [0], [], [], {"0": [0.1]}, 1)]
        (call,) = record.calls(step=0)
        assert call.training is True and call.inputs == [{"shape": [4, 2]}]
        assert record.latest_calls() == {"": [call]}
        (stat,) = record.stats(step=0)
        assert math.isnan(stat.mean) and (stat.std, stat.nonfinite) == (0.5, 1)
        assert record.stat_series("grad", "weight") == [(0, stat)]  # found by the old subject index
        assert record.last_stats_step("weight", 0) is None  # a gradient only
        updates = {u.param: u for u in record.updates(step=0)}
        assert math.isnan(updates["weight"].delta) and updates["weight"].weight == 1.0
        assert updates["bias"].delta is None and updates["bias"].optimizer is None
        step = record.step(0)
        assert step.tails == {("", 0, "sat"): (3, 4)}
        low, high, counts = step.hists["weight"]
        assert low == -1.0 and math.isnan(high) and counts == [1, 0, 1]
        assert step.graph is not None and step.graph.nodes == []
        (finding,) = record.findings()
        assert isinstance(finding, gradscope.Finding)
        assert (finding.check, finding.step, finding.last_step, finding.count) == ("nonfinite", 0, 3, 4)
        assert finding.evidence == {"n": 1}


def test_every_table_keeps_the_version_1_columns(tmp_path):
    conn = sqlite3.connect(tmp_path / "v1.sqlite")
    conn.executescript(V1_DDL)
    for table in schema.TABLES:
        old = [r[1] for r in conn.execute(f"PRAGMA table_info({table.name})")]
        new = [c.name for c in table.scope + table.columns]
        if table.integer_key:
            new.insert(0, table.integer_key)
        assert set(old) <= set(new), table.name
        added = {c.name: c.default for c in table.columns if c.name not in old}
        assert all(d is not dataclasses.MISSING for d in added.values()), (table.name, added)  # old records open


def train_small(path, steps: int) -> nn.Module:
    """A small MLP trained `steps` steps under gradscope (statistics every step) into `path`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, record=path, stats_every=1):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 2)).pow(2).mean().backward()
            opt.step()
    return model


def test_what_the_writer_writes_reads_back_typed(tmp_path):
    model = train_small(tmp_path / "r.sqlite", 2)
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        modules = record.modules()
        assert [(m.name, m.type) for m in modules] == [("", "Sequential"), ("0", "Linear"), ("1", "ReLU"),
                                                       ("2", "Linear")]
        assert modules[1]["params"] == modules[1].params == 2  # rows read as mappings too
        params = {p.name: p for p in record.parameters()}
        assert params["0.weight"].shape == [3, 2] and params["0.weight"].in_optimizer
        assert [s.step for s in record.steps()] == [0, 1]
        assert all(s.optimizer_steps == [0] and s.backwards == 1 for s in record.steps())
        calls = record.calls(step=1)
        assert sorted(c.module for c in calls) == ["", "0", "1", "2"] and all(c.training for c in calls)
        grad = record.stats(step=1, kind="grad", subject="0.weight")[0]
        assert grad.norm == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-5)
        assert {u.param for u in record.updates(step=1)} == set(params)
        assert record.step(1).hists and record.graph(1) is not None
        assert record.run()["steps"] == 2
        assert all(isinstance(f, schema.FindingRow) and f.count >= 1 for f in record.findings())


def test_a_new_column_is_one_field_with_a_default(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Before(schema.Row):
        name: str
        value: float

    @dataclasses.dataclass(frozen=True)
    class After(schema.Row):
        name: str
        value: float
        unit: str | None = None  # the one new line
        tags: list = dataclasses.field(default_factory=list)

    before, after = schema.Table("things", Before, key=("name",)), schema.Table("things", After, key=("name",))
    assert "unit TEXT," in after.ddl() and "tags TEXT NOT NULL" in after.ddl()
    conn = sqlite3.connect(tmp_path / "t.sqlite")
    conn.row_factory = sqlite3.Row
    conn.executescript(before.ddl())
    before.insert(conn, [Before("old", math.nan)])
    (old,) = [after.decode(r) for r in conn.execute("SELECT * FROM things")]
    assert old.name == "old" and math.isnan(old.value) and old.unit is None and old.tags == []
    conn.execute("DROP TABLE things")
    conn.executescript(after.ddl())
    after.insert(conn, [After("new", 1.5, "m", ["a"]), {"name": "dict", "value": 2.0}])
    rows = [after.decode(r) for r in conn.execute("SELECT * FROM things ORDER BY rowid")]
    assert rows == [After("new", 1.5, "m", ["a"]), After("dict", 2.0, None, [])]


def test_a_row_that_does_not_decode_is_a_corrupt_record(tmp_path):
    path = v1_record(tmp_path / "bad.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE findings SET severity = 'catastrophic'")
    conn.execute("UPDATE optimizers SET params = 'not json'")
    conn.commit()
    conn.close()
    with gradscope.open_record(path) as record:
        with pytest.raises(RecordError, match="corrupt record.*findings"):
            record.findings()
        with pytest.raises(RecordError, match="corrupt record.*optimizers"):
            record.optimizers()


def test_a_step_summary_is_the_step_datas_own_fields():
    from gradscope.data import StepData

    data = StepData(step=4, time=1.5, backwards=2, optimizer_steps=[0], zero_grad=[{"optimizer": 0}],
                    eval_modules=["bn"], lrs={"0": [0.1]}, calls=[{"module": ""}, {"module": "fc"}])
    row = schema.StepRow.of(data)
    assert row == schema.StepRow(4, 1.5, 2, [0], [{"optimizer": 0}], ["bn"], {"0": [0.1]}, 2)
    back = row.step_data()
    assert (back.step, back.time, back.backwards, back.lrs, back.calls) == (4, 1.5, 2, {"0": [0.1]}, [])


def _series_oracle(path, kind, subject):
    """(step, rowid) of a subject's first-call stats rows, read by scanning the whole table."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT step, rowid FROM stats WHERE kind = ? AND subject = ? AND call = 0"
                            " ORDER BY step, rowid", (kind, subject)).fetchall()
    finally:
        conn.close()


def _last_stats_oracle(path, subject, step):
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT max(step) FROM stats WHERE subject = ? AND step <= ? AND kind != 'grad'",
                            (subject, step)).fetchone()[0]
    finally:
        conn.close()


def _latest_oracle(path, kind):
    """subject -> (step, count) of the latest first-call plain row of `kind`, by a full scan."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {subject: (step, count) for subject, step, count in conn.execute(
            "SELECT s.subject, s.step, s.count FROM stats s JOIN (SELECT subject, max(step) AS step FROM stats"
            " WHERE kind = ? AND call = 0 GROUP BY subject) m ON s.subject = m.subject AND s.step = m.step"
            " WHERE s.kind = ? AND s.call = 0 AND s.path = '' ORDER BY s.rowid", (kind, kind))}
    finally:
        conn.close()


def _latest(record, kind):
    return {subject: (step, stat.count) for subject, (step, stat) in record.latest_stats(kind).items()}


def _train_steps(model, opt, n):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(4, 2)).pow(2).mean().backward()
        opt.step()


def test_a_subjects_series_is_every_row_of_it_listed_or_not(tmp_path):
    """Series are read from `series` rows (every `SERIES_STEPS` steps) and, past the last, through
    the step index: live, the steps since the last listing count too; finished, all are listed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "r.sqlite"
    wanted = [("grad", "0.weight"), ("weight", "2.bias"), ("activation", "1"), ("loss", "loss")]
    live = schema.SERIES_STEPS * 2 + 10
    with gradscope.watch(model, opt, record=path, stats_every=3):
        _train_steps(model, opt, live)
        with gradscope.open_record(path) as record:
            wait_for(lambda: record.run().get("steps") == live, f"the writer to commit {live} steps", 60)
            with record.snapshot():
                listed = record._rows("SELECT max(last) AS last FROM series")[0]["last"]
                assert listed == schema.SERIES_STEPS * 2 - 1  # the rest is read from the tail
                for kind, subject in wanted:
                    got = [(step, stat) for step, stat in record.stat_series(kind, subject)]
                    oracle = _series_oracle(path, kind, subject)
                    assert [s for s, _ in got] == [s for s, _ in oracle] and oracle
                    assert all(stat.kind == kind and stat.subject == subject for _, stat in got)
                for kind in ("grad", "weight", "activation", "loss"):
                    assert _latest(record, kind) == _latest_oracle(path, kind) != {}
                for subject in ("1", "0.weight", "nothing"):  # listed, not listed yet, never there
                    for step in (0, 1, 40, 63, 64, 65, 100, 127, 128, 130, live - 1):
                        assert record.last_stats_step(subject, step) == _last_stats_oracle(path, subject, step)
        _train_steps(model, opt, 5)
    with gradscope.open_record(path) as record:
        assert record._rows("SELECT max(last) AS last FROM series")[0]["last"] == live + 4  # all listed
        for kind, subject in wanted:
            got = record.stat_series(kind, subject)
            assert [s for s, _ in got] == [s for s, _ in _series_oracle(path, kind, subject)]
        grads = record.stat_series("grad", "0.weight")
        assert [s for s, _ in grads] == list(range(live + 5))
        assert grads[-1][1].norm == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-5)
        assert record.last_stats_step("1", live + 4) == max(s for s, _ in _series_oracle(path, "activation", "1"))
        assert [record.last_stats_step("2.weight", s) for s in (0, 20, 21, 22, 23, 100)] == \
            [_last_stats_oracle(path, "2.weight", s) for s in (0, 20, 21, 22, 23, 100)]
        assert record.last_stats_step("nothing", live + 4) is None
        for kind in ("grad", "weight", "activation", "loss"):
            assert list(_latest(record, kind).items()) == list(_latest_oracle(path, kind).items()) != []


def test_a_listing_that_was_undone_is_taken_up_by_the_next(tmp_path):
    conn = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None)
    schema.create(conn)
    rows = [gradscope.Stat("grad", s, 0, "", 1, 0.0, 0.0, 0.0, 0.0, 1.0, 0, 0) for s in ("a", "b")]
    for step in range(30):
        schema.STATS.insert(conn, rows, step=step)
    conn.execute("BEGIN")
    series.add_series(conn, 9)
    conn.execute("ROLLBACK")  # the writer's transaction was lost
    series.add_series(conn, 19)
    series.add_series(conn, 12)  # behind the listing: nothing to add
    series.add_series(conn, 29)
    listed = sorted(int(n) for (text,) in conn.execute("SELECT rowids FROM series") for n in text.split(","))
    assert listed == [r for (r,) in conn.execute("SELECT rowid FROM stats ORDER BY rowid")]
    assert [r for r in conn.execute("SELECT first, last FROM series WHERE subject = 'a' ORDER BY last")] == \
        [(0, 19), (20, 29)]


def _series_as_sql_lists_them(conn) -> None:
    """Every `series` row lists exactly its subject's stats rows of its range, in rowid order,
    and every stats row up to the last listed step is in one list."""
    listed = []
    for last, kind, subject, first, text in conn.execute("SELECT last, kind, subject, first, rowids FROM series"):
        rowids = [int(n) for n in text.split(",")]
        expected = [r for (r,) in conn.execute("SELECT rowid FROM stats WHERE kind = ? AND subject = ?"
                                               " AND step BETWEEN ? AND ? ORDER BY rowid", (kind, subject, first, last))]
        assert rowids == expected, (kind, subject, first, last)
        listed += rowids
    through = series.series_through(conn)
    assert sorted(listed) == [r for (r,) in conn.execute("SELECT rowid FROM stats WHERE step <= ? ORDER BY rowid",
                                                         (through,))]


def test_the_writer_lists_series_from_where_it_put_the_rows(tmp_path, monkeypatch):
    """Plain and statistics steps (rows of other kinds and subjects) alternate; the writer lists
    their rows from memory, with no SQL sort, and the lists are SQL's."""
    by_sql = []
    monkeypatch.setattr(series, "add_series", lambda conn, through: by_sql.append(through))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "r.sqlite"
    with gradscope.watch(model, opt, record=path, stats_every=5):
        _train_steps(model, opt, schema.SERIES_STEPS * 2 + 9)
    conn = sqlite3.connect(path)
    try:
        assert [r for (r,) in conn.execute("SELECT DISTINCT last FROM series ORDER BY last")] == \
            [schema.SERIES_STEPS - 1, schema.SERIES_STEPS * 2 - 1, schema.SERIES_STEPS * 2 + 8]
        _series_as_sql_lists_them(conn)
        assert len({kind for (kind,) in conn.execute("SELECT kind FROM series")}) > 3  # layouts alternated
    finally:
        conn.close()
    assert by_sql == []


def _written(conn, listing, step, rows, *, keep=True):
    """One step's message as the writer writes it: in a savepoint, kept or undone; every 10th
    step lists the series."""
    if not conn.in_transaction:
        conn.execute("BEGIN")
    conn.execute("SAVEPOINT message")
    cursor = schema.STATS.insert(conn, rows, step=step)
    listing.wrote(step, rows, cursor.lastrowid)
    if step % 10 == 9:
        listing.add(conn, step)
    if keep:
        conn.execute("RELEASE message")
        listing.kept()
    else:
        conn.execute("ROLLBACK TO message")
        conn.execute("RELEASE message")
        listing.undone()


def test_a_listing_from_memory_follows_undone_messages_and_lost_transactions(tmp_path, monkeypatch):
    """A message undone alone (its rows gone, or its rows and its listing), a transaction rolled
    back: the lists stay SQL's, from memory where the record agrees and by SQL where it does not."""
    by_sql = []

    def sql(conn, through, _sql=series.add_series):
        by_sql.append(through)
        _sql(conn, through)

    monkeypatch.setattr(series, "add_series", sql)
    conn = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None)
    schema.create(conn)
    plain = [gradscope.Stat("grad", s, 0, "", 1, 0.0, 0.0, 0.0, 0.0, 1.0, 0, 0) for s in ("a", "b", "c")]
    full = plain + [gradscope.Stat("activation", "m", c, "", 4, 0.0, 0.0, 0.0, 0.0, 1.0, 0, 0) for c in (0, 1)]
    listing = series.Listing()
    for step in range(70):
        rows = full if step < 4 or step % 7 == 0 else [tuple(r) for r in plain]  # plain tuples, as the recorder's
        _written(conn, listing, step, rows, keep=step not in (13, 29))  # 29: undone with its listing
        if step in (45, 50):
            conn.execute("COMMIT")
        elif step == 54:
            conn.execute("ROLLBACK")  # steps 51-54 lost with their transaction
            listing.lost()
    listing.add(conn, 69)
    _series_as_sql_lists_them(conn)
    assert [r for (r,) in conn.execute("SELECT DISTINCT last FROM series ORDER BY last")] == [9, 19, 39, 49, 59, 69]
    assert conn.execute("SELECT count(*) FROM stats WHERE step IN (13, 29, 51, 54)").fetchone()[0] == 0
    assert by_sql == [39, 59]  # after the undone listing and the lost transaction; from memory otherwise


def test_a_doctored_series_is_a_corrupt_record(tmp_path):
    path = tmp_path / "r.sqlite"
    conn = sqlite3.connect(path)
    schema.create(conn)
    conn.execute("INSERT INTO series VALUES (0, 'grad', 'w', 0, 'x; DROP TABLE stats')")
    conn.commit()
    conn.close()
    with gradscope.open_record(path) as record, pytest.raises(RecordError, match="corrupt record"):
        record.stat_series("grad", "w")


class _TwoCalls(nn.Module):
    """`enc` runs twice a step; from `frozen_from` on, its first call is under no_grad (a
    target computed without gradients): no output gradient for call 0 any more."""

    def __init__(self, frozen_from):
        super().__init__()
        self.enc, self.head, self.frozen_from, self.step = nn.Linear(4, 4), nn.Linear(4, 1), frozen_from, 0

    def forward(self, x):
        self.step += 1
        with torch.set_grad_enabled(self.step <= self.frozen_from):
            a = self.enc(x)
        return self.head(a + self.enc(x + 1))


def test_the_latest_first_call_is_found_behind_lists_of_later_calls_only(tmp_path):
    torch.manual_seed(0)
    model = _TwoCalls(frozen_from=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "r.sqlite"
    with gradscope.watch(model, opt, record=path, stats_every=1):
        for _ in range(schema.SERIES_STEPS * 2 + 5):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
    with gradscope.open_record(path) as record:
        for kind in ("grad-output", "activation"):
            assert list(_latest(record, kind).items()) == list(_latest_oracle(path, kind).items())
        assert record.latest_stats("grad-output")["enc"][0] == 19  # its last first call with a gradient


def test_a_steps_rows_leave_the_garbage_collectors_watch(tmp_path, monkeypatch):
    """A large model has thousands of statistics and update rows a step, alive while the
    recorder writes them and the plugins judge them: as named tuples every one counted toward
    the next full collection. A step keeps them as plain tuples, which the collector stops
    tracking; whoever reads them still gets `Stat` and `Update`, the same as the record's."""
    from gradscope.data import Stat, Update
    from gradscope.record import writer

    decoded = []
    real = writer.decode
    monkeypatch.setattr(writer, "decode", lambda snapshot: decoded.append(real(snapshot)) or decoded[-1])
    model = train_small(tmp_path / "r.sqlite", 3)
    data = decoded[-1]
    gc.collect()
    assert len(data.stats.rows) > 10 and len(data.updates.rows) == 4
    assert not any(gc.is_tracked(row) for row in data.stats.rows)
    assert not any(gc.is_tracked(row) for row in data.updates.rows.values())
    stats = list(data.stats)
    assert all(type(s) is Stat for s in stats) and type(data.stats[0]) is Stat and data.stats[-2:] == stats[-2:]
    assert data.stat("grad", "0.weight").norm == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-5)
    assert type(data.updates["0.weight"]) is Update and data.updates["0.weight"].ratio > 0
    assert set(data.updates) == {"0.weight", "0.bias", "2.weight", "2.bias"} and "0.bias" in data.updates
    assert dict(data.updates.items()) == {name: data.updates[name] for name in data.updates}
    assert [u.param for u in data.updates.values()] == list(data.updates) and len(data.updates.values()) == 4
    with gradscope.open_record(tmp_path / "r.sqlite") as record:
        stored = record.step(data.step)
        assert stored.stats == data.stats and stored.stats == stats
        assert stored.updates == data.updates



def test_a_parameters_update_history_reads_its_own_rows_not_every_parameters(tmp_path):
    """The details panel reads one parameter's updates over the whole run, again at every
    refresh of a live run. The table has no index by parameter (writing one would cost every
    step), so the read looks up the parameter's (step, param) key step by step: the work grows
    with the steps, not with steps times parameters. The history is the same as a pass over
    every row finds."""
    from gradscope.record import schema

    def train(path, layers: int) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(layers)])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt, record=path, stats_every=1000):
            for _ in range(12):
                opt.zero_grad()
                model(torch.randn(4, 3)).pow(2).mean().backward()
                opt.step()

    work = {}
    for layers in (2, 64):
        train(tmp_path / f"{layers}.sqlite", layers)
        with gradscope.open_record(tmp_path / f"{layers}.sqlite") as record:
            scanned = record._stepped(schema.UPDATES, "SELECT * FROM updates WHERE param = ? ORDER BY step", ("1.bias",))
            instructions = []
            record._conn.set_progress_handler(lambda: instructions.append(1), 100)
            history = record.update_series("1.bias")
            record._conn.set_progress_handler(None, 0)
            work[layers] = len(instructions)
            assert repr(history) == repr(scanned) and [step for step, _ in history] == record.step_numbers()
            assert all(u.param == "1.bias" for _, u in history)
    assert work[64] < 2 * work[2] + 10  # 32 times the parameters: a pass over every row would be ~32 times the work

def test_checks_read_a_steps_rows_by_kind_and_by_column_as_iterating_them_would():
    """Checks of a model with thousands of parameters read one kind of row or one field, not
    every row as a `Stat`: what `of_kind`, `nonfinite` and `column` give equals the filtered
    iteration, also after rows were added to a step already read (decoding appends)."""
    from gradscope.data import Stat, Stats, Update, Updates

    nan = math.nan
    stats = Stats([
        ("grad", "a", 0, "", 4, nan, nan, nan, nan, 1.5, None, 0),
        ("loss", "loss", 0, "", 1, 2.0, 0.0, 2.0, 2.0, 2.0, 0, 0),
        ("grad", "b", 0, "", 4, nan, nan, nan, nan, math.inf, None, 1),
        ("weight", "a", 0, "", 4, 0.1, 0.2, -0.3, 0.4, 0.5, 0, 0),
    ])
    for kind in ("grad", "loss", "weight", "activation"):
        assert list(stats.of_kind(kind)) == [s for s in stats if s.kind == kind]
    assert stats.of_kind("grad").column("subject") == ["a", "b"]
    assert list(stats.nonfinite()) == [s for s in stats if s.nonfinite]
    stats.rows.append(("activation", "fc", 0, "", 2, nan, nan, nan, nan, nan, 0, 2))  # as decode adds rows
    assert stats.of_kind("activation").column("subject") == ["fc"]
    assert [s.subject for s in stats.nonfinite()] == ["b", "fc"]
    grads = Stats([row for row in stats.rows if row[0] == "grad"])  # one kind (a step without full statistics)
    only = grads.of_kind("grad")
    assert list(only) == list(grads) and not grads.of_kind("loss")
    assert [s.subject for s in only.nonfinite()] == [s.subject for s in grads.nonfinite()] == ["b"]
    grads.append(Stat("grad", "c", 0, "", 1, nan, nan, nan, nan, 1.0, None, 1))  # as decode adds rows
    assert [s.subject for s in grads.of_kind("grad").nonfinite()] == ["b", "c"]
    updates = Updates([Update("a", 0, 0.1, 1.0, None, 0.1, 1.0), Update("b", None, None, None, 0.5, 0.0, 2.0)])
    assert updates.column("delta") == [u.delta for u in updates.values()] == [0.1, None]
    assert list(zip(updates, updates.column("outside"))) == [("a", None), ("b", 0.5)]


def test_decoding_a_step_makes_each_kind_of_row_from_its_columns():
    """The recorder turns a step's device rows into the rows plugins read and SQLite stores:
    every kind of block, field by field (types too: counts and flags are ints, a gradient's
    unmeasured fields NaN, its flag set by a largest magnitude that is not finite, not by an
    overflowing norm), and an update without its optimizer's step."""
    from gradscope.data import StepData
    from gradscope.record import writer
    from gradscope.trace.batch import RowBatch

    nan, inf = math.nan, math.inf
    batch = RowBatch()
    batch.add("loss", [("loss", 0, "")], [1], torch.tensor([0.0]))
    batch.add("stats", [("activation", ("fc", 0, "")), ("input", ("fc", 1, "0"))], [6, 4],
              torch.tensor([[0.5, 1.0, -1.0, 2.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 1.0]]))
    batch.add("weight", [("fc.weight", 0, "")], [6], torch.tensor([[0.1, 0.2, -0.3, 0.4, 0.5, 1.0, 0.0]]))
    batch.add("grad-norm", [("fc.weight", 0, ""), ("fc.bias", 0, ""), ("emb", 0, "")], [6, 2, 9],
              torch.tensor([[1.5, 1.0], [inf, 2.0], [nan, nan]]))
    batch.add("update", [("fc.weight", 0), ("fc.bias", 1)], [1, 1],
              torch.tensor([[0.1, 1.0, 0.0], [0.2, 2.0, 0.5]], dtype=torch.float64))
    batch.add("step-update", ["fc.weight", "moved", "fc.bias"], [1, 1, 1],
              torch.tensor([[0.1, 1.0], [0.3, 3.0], [0.2, 2.0]], dtype=torch.float64))
    batch.add("tail", [("act", 0, "high")], [10], torch.tensor([3.0]))
    batch.add("hist", ["fc.weight"], [6], torch.tensor([[-1.0, 1.0, 2.0, 0.0, 4.0]]))
    data = writer.decode(writer.StepSnapshot(StepData(step=3, time=0.0), batch.freeze()))

    def same(got, want):  # NaN as NaN, floats to float32's precision, counts and flags as ints
        def field(g, w):
            if isinstance(w, float):
                return isinstance(g, float) and (math.isnan(g) if math.isnan(w) else g == pytest.approx(w))
            return type(g) is type(w) and g == w
        return len(got) == len(want) and all(map(field, got, want))

    expected = [
        ("loss", "loss", 0, "", 1, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0),
        ("activation", "fc", 0, "", 6, 0.5, 1.0, -1.0, 2.0, 3.0, 2, 0),
        ("input", "fc", 1, "0", 4, 0.0, 0.0, 0.0, 0.0, 0.0, 4, 1),
        ("weight", "fc.weight", 0, "", 6, 0.1, 0.2, -0.3, 0.4, 0.5, 1, 0),
        ("grad", "fc.weight", 0, "", 6, nan, nan, nan, nan, 1.5, None, 0),
        ("grad", "fc.bias", 0, "", 2, nan, nan, nan, nan, inf, None, 0),  # a finite largest: an overflowing norm
        ("grad", "emb", 0, "", 9, nan, nan, nan, nan, nan, None, 1),
    ]
    assert len(data.stats.rows) == len(expected)
    for got, want in zip(data.stats.rows, expected):
        assert type(got) is tuple and same(got, want), (got, want)
    assert data.updates.rows == {
        "fc.weight": ("fc.weight", 0, pytest.approx(0.1), 1.0, 0.0, pytest.approx(0.1), 1.0),
        "moved": ("moved", None, None, None, None, pytest.approx(0.3), 3.0),  # moved with no optimizer's step
        "fc.bias": ("fc.bias", 1, pytest.approx(0.2), 2.0, 0.5, pytest.approx(0.2), 2.0),
    }
    assert list(data.updates.rows) == ["fc.weight", "moved", "fc.bias"]
    assert data.tails == {("act", 0, "high"): (3, 10)}
    assert data.hists == {"fc.weight": (-1.0, 1.0, [2, 0, 4])} and type(data.hists["fc.weight"][2][0]) is int


def test_a_plain_row_of_the_wrong_length_is_refused_not_written_shifted():
    conn = sqlite3.connect(":memory:")
    conn.executescript(schema.STATS.ddl())
    row = ("grad", "w", 0, "", 4, 0.5, 0.1, 0.0, 1.0, 1.2, 0, 0)
    schema.STATS.insert(conn, [row], step=3)
    assert conn.execute("SELECT kind, subject, norm, nonfinite FROM stats").fetchall() == [("grad", "w", 1.2, 0)]
    with pytest.raises(AttributeError):
        schema.STATS.insert(conn, [row[:-1]], step=4)
    with pytest.raises(AttributeError):
        schema.STATS.insert(conn, [row + (7,)], step=4)
