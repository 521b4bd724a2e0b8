"""The record's SQLite schema: one file per run, one row set per step.

The file is marked with a SQLite ``application_id`` so that any other SQLite file is told apart,
and ``user_version`` carries the schema version. JSON columns hold small nested values (shapes,
call descriptions, graph node-link data). SQLite stores NaN as NULL: readers turn NULL back
into NaN in statistics columns (and in update columns of a parameter an optimizer stepped).
"""

from __future__ import annotations

import sqlite3

APPLICATION_ID = 0x67726473  # "grds"
VERSION = 1

DDL = """
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


def create(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database and mark it as a gradscope record."""
    conn.executescript(DDL)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {VERSION}")
    conn.commit()
