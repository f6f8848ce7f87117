"""The results store: one SQLite file holding every finished run and the sweep's metadata.

Each ``put`` is one transaction, so a sweep killed at any moment leaves a consistent
store with every run that had finished; re-running the same command skips those run
ids. Spec fields are columns (queryable with any SQLite client); the final metrics,
curves, trajectory and versions are JSON. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from .spec import RunRecord, RunSpec

_SPEC_COLUMNS = ("problem", "optimizer", "lr", "seed", "steps", "schedule",
                 "hyperparameters", "phase", "eval_every")
_RECORD_COLUMNS = ("status", "final", "curves", "seconds", "seconds_per_step",
                   "trajectory", "versions")
_COLUMNS = ("run_id",) + _SPEC_COLUMNS + _RECORD_COLUMNS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    problem TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    lr REAL NOT NULL,
    seed INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    schedule TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    phase TEXT NOT NULL,
    eval_every INTEGER NOT NULL,
    status TEXT NOT NULL,
    final TEXT NOT NULL,
    curves TEXT NOT NULL,
    seconds REAL NOT NULL,
    seconds_per_step REAL NOT NULL,
    trajectory TEXT,
    versions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_phase ON runs (phase);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_ORDER = "ORDER BY problem, optimizer, phase, lr, seed, run_id"


class StoreError(Exception):
    """The store cannot be used: written by an incompatible version, corrupt, or unopenable."""


def _dumps(value) -> str:
    # allow_nan: diverged runs keep inf losses, and Python's json round-trips them exactly.
    return json.dumps(value, allow_nan=True, separators=(",", ":"))


def _tupled(value):
    """JSON lists back to the tuples a frozen RunSpec holds (hyperparameters, betas, ...)."""
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def _row(record: RunRecord) -> tuple:
    s = record.spec
    return (
        record.run_id, s.problem, s.optimizer, float(s.lr), int(s.seed), int(s.steps),
        s.schedule, _dumps([list(kv) for kv in s.hyperparameters]), s.phase,
        int(s.eval_every), record.status, _dumps(record.final), _dumps(record.curves),
        float(record.seconds), float(record.seconds_per_step),
        None if record.trajectory is None else _dumps(record.trajectory),
        _dumps(record.versions),
    )


def _record(row: sqlite3.Row) -> RunRecord:
    spec = RunSpec(
        problem=row["problem"], optimizer=row["optimizer"], lr=row["lr"], seed=row["seed"],
        steps=row["steps"], schedule=row["schedule"],
        hyperparameters=_tupled(json.loads(row["hyperparameters"])), phase=row["phase"],
        eval_every=row["eval_every"],
    )
    trajectory = row["trajectory"]
    return RunRecord(
        spec=spec, status=row["status"], final=json.loads(row["final"]),
        curves=json.loads(row["curves"]), seconds=row["seconds"],
        seconds_per_step=row["seconds_per_step"],
        trajectory=None if trajectory is None else json.loads(trajectory),
        versions=json.loads(row["versions"]),
    )


class Store:
    """A results store at ``path`` (an SQLite file, created if missing).

    Safe to read while another process writes (WAL mode; writers wait on a busy
    timeout). Raises :class:`StoreError` if the file is not a store of this schema
    version or cannot be opened.
    """

    SCHEMA_VERSION = 1
    BUSY_TIMEOUT_S = 60.0

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(os.fspath(self.path), timeout=self.BUSY_TIMEOUT_S,
                                         isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._init_schema()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None

    def _init_schema(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL with WAL: a committed run survives a killed process (not a power cut).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={int(self.SCHEMA_VERSION)}")
            elif version != self.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by an incompatible optimlab store "
                    f"(schema version {version}, this version reads {self.SCHEMA_VERSION}); "
                    f"use a new --out directory")
            elif not {"runs", "meta"} <= tables:
                raise StoreError(f"{self.path} is not an optimlab results store")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------------- runs

    def has(self, run_id: str) -> bool:
        """Whether a run with this id is stored (in any status)."""
        row = self._conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row is not None

    def statuses(self) -> dict:
        """{run_id: status} of every stored run (cheap: no JSON is decoded)."""
        return dict(self._conn.execute("SELECT run_id, status FROM runs").fetchall())

    def put(self, record: RunRecord) -> None:
        """Store one run in one transaction. Idempotent: a run id already stored is kept,
        except that a stored "error" run is replaced by a new attempt."""
        placeholders = ",".join("?" * len(_COLUMNS))
        updates = ",".join(f"{c}=excluded.{c}" for c in _COLUMNS[1:])
        sql = (f"INSERT INTO runs ({','.join(_COLUMNS)}) VALUES ({placeholders}) "
               f"ON CONFLICT(run_id) DO UPDATE SET {updates} WHERE runs.status='error'")
        with self._transaction():
            self._conn.execute(sql, _row(record))

    def records(self, phase: str | None = None) -> list[RunRecord]:
        """Stored runs (optionally of one phase), ordered by problem, optimizer, phase,
        lr, seed, run id."""
        if phase is None:
            rows = self._conn.execute(f"SELECT * FROM runs {_ORDER}").fetchall()
        else:
            rows = self._conn.execute(f"SELECT * FROM runs WHERE phase=? {_ORDER}",
                                      (phase,)).fetchall()
        return [_record(r) for r in rows]

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    # ---------------------------------------------------------------------- meta

    def set_meta(self, key: str, value) -> None:
        """Set one metadata entry (a JSON-serialisable value)."""
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (key, _dumps(value)))

    def meta(self) -> dict:
        """All metadata entries, by key."""
        rows = self._conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def _transaction(self):
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
