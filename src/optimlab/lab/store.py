"""The results store: one SQLite file holding every finished run and the metadata of
every comparison written into it.

Each ``put`` is one transaction, so a sweep killed at any moment leaves a consistent
store with every run that had finished; re-running the same command skips those run
ids. Spec fields are columns (queryable with any SQLite client); the final metrics,
curves, trajectory and versions are standard JSON (a non-finite number as the string
"Infinity", "-Infinity" or "NaN", so SQLite's ``json_extract`` reads every row). Nothing
is pickled.

Runs are shared: a run id is the hash of its spec, so two comparisons that need the
same run store it once. Each comparison has an id (:func:`comparison_id`, a hash of its
plan) and its own metadata (``comparison_meta``), including ``runs``, the ids of its
runs. :meth:`Store.use` scopes ``set_meta``/``meta`` to one comparison. A store written
before comparisons had ids (one global ``meta``) reads as a single comparison whose id
is the hash of that meta's plan keys; nothing is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
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

# Added to schema version 1 without a version bump: older optimlab versions ignore them.
_COMPARISON_SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS comparison_meta (
    comparison TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (comparison, key)
);
"""

#: The columns each table must have (a file with these tables but other columns is not
#: an optimlab store); the comparison tables are optional (older stores lack them).
_REQUIRED = {"runs": _COLUMNS, "meta": ("key", "value"), "comparisons": ("id", "seq"),
             "comparison_meta": ("comparison", "key", "value")}

#: Meta keys that record how and when a comparison ran, not what it compares; they do
#: not enter its id.
BOOKKEEPING = frozenset({"command", "argv", "suite", "versions", "workers", "executor",
                         "created", "started", "finished", "runs", "latest", "comparison",
                         "phase", "machine", "load", "wall_seconds",
                         "data_sizes"})

_ORDER = "ORDER BY problem, optimizer, phase, lr, seed, run_id"


#: plan keys whose lists are sets: the order they were given in is the report's order only
ORDERLESS = ("problems", "optimizers", "grid")


def comparison_id(description: dict, as_given: bool = False) -> str:
    """A comparison's id: 10 hex digits of the SHA-256 of its plan description (JSON with
    sorted keys; bookkeeping keys ignored; the names and lrs of :data:`ORDERLESS` sorted),
    so re-running the same command, its names in any order, resumes the same comparison.
    ``as_given``: the lists in their order, the ids of stores of the old format."""
    plan = {k: v for k, v in description.items() if k not in BOOKKEEPING}
    for key in () if as_given else ORDERLESS:
        if isinstance(plan.get(key), list):
            plan[key] = sorted(plan[key], key=str)
    payload = json.dumps(plan, sort_keys=True, allow_nan=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


class StoreError(Exception):
    """The store cannot be used: written by an incompatible version, corrupt, or unopenable."""


#: Non-finite floats in stored JSON: standard JSON has no token for them, so they are
#: written as these strings (what Python's json writes bare) and read back as floats;
#: SQLite's JSON functions then read every row. Stores written before hold the bare
#: tokens, which json.loads reads as well.
_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _finite_json(value):
    """``value`` with every non-finite float replaced by its :data:`_NON_FINITE` name."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _dumps(value) -> str:
    """Standard JSON (diverged runs keep their inf losses, see :data:`_NON_FINITE`)."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:   # a non-finite float somewhere: name it
        return json.dumps(_finite_json(value), allow_nan=False, separators=(",", ":"))


def _non_finite(value):
    """The inverse of :func:`_finite_json`."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_non_finite(v) for v in value]
    return value


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


def _loads(text, where: str):
    """json.loads, a StoreError naming ``where`` (file, run or key, column) if corrupt."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where} is not valid JSON ({exc})") from None
    # The walk only where a name can occur: most rows hold no non-finite number.
    return _non_finite(value) if any(f'"{k}"' in text for k in _NON_FINITE) else value


def _record(row: sqlite3.Row, path) -> RunRecord:
    def load(column):
        return _loads(row[column], f"{path}: run {row['run_id']}, column {column},")

    spec = RunSpec(
        problem=row["problem"], optimizer=row["optimizer"], lr=row["lr"], seed=row["seed"],
        steps=row["steps"], schedule=row["schedule"],
        hyperparameters=_tupled(load("hyperparameters")), phase=row["phase"],
        eval_every=row["eval_every"],
    )
    return RunRecord(
        spec=spec, status=row["status"], final=load("final"), curves=load("curves"),
        seconds=row["seconds"], seconds_per_step=row["seconds_per_step"],
        trajectory=None if row["trajectory"] is None else load("trajectory"),
        versions=load("versions"),
    )


class Store:
    """A results store at ``path`` (an SQLite file, created if missing; with ``create``
    False, a missing or empty file is a :class:`StoreError` and nothing is written to it).

    Safe to read while another process writes (WAL mode; writers wait on a busy
    timeout). Raises :class:`StoreError` if the file is not a store of this schema
    version or cannot be opened.
    """

    SCHEMA_VERSION = 1
    BUSY_TIMEOUT_S = 60.0

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        self.comparison = None   # set by use(): the comparison set_meta/meta refer to
        if not create and not self.path.is_file():
            raise StoreError(f"no results store at {self.path}")
        try:
            self._conn = sqlite3.connect(os.fspath(self.path), timeout=self.BUSY_TIMEOUT_S,
                                         isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._init_schema(create)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None

    def _tables(self) -> set:
        return {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_columns(self, tables) -> None:
        for table in sorted(tables & set(_REQUIRED)):
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in _REQUIRED[table] if c not in have]
            if missing:
                raise StoreError(f"{self.path} is not an optimlab results store (table "
                                 f"{table} lacks column{'s' * (len(missing) > 1)} "
                                 f"{', '.join(missing)})")

    def _init_schema(self, create: bool = True) -> None:
        conn = self._conn
        # Read before anything is written: an empty file stays empty unless created here.
        if not create and not self._tables() and \
                conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.close()
            raise StoreError(f"no comparisons in {self.path} (an empty file, not a store "
                             f"written by 'optimlab compare')")
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL with WAL: a committed run survives a killed process (not a power cut).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self._tables()
            if version == 0 and not tables:
                tables = {"runs", "meta"}
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={int(self.SCHEMA_VERSION)}")
            elif version == 0:   # optimlab sets a version when it creates a store
                raise StoreError(
                    f"{self.path} is not an optimlab results store (an SQLite file of "
                    f"another program: tables {', '.join(sorted(tables))}); use a new "
                    f"--out directory")
            elif version != self.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by an incompatible optimlab store "
                    f"(schema version {version}, this version reads {self.SCHEMA_VERSION}); "
                    f"use a new --out directory")
            elif not {"runs", "meta"} <= tables:
                raise StoreError(f"{self.path} is not an optimlab results store")
            self._check_columns(tables)
            if not {"comparisons", "comparison_meta"} <= tables:
                for statement in _COMPARISON_SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
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
        return [_record(r, self.path) for r in rows]

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    # ---------------------------------------------------------------------- meta

    def set_meta(self, key: str, value) -> None:
        """Set one metadata entry (a JSON-serialisable value) of the comparison chosen by
        :meth:`use`, or of the store itself before any ``use``."""
        with self._transaction():
            if self.comparison is None:
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   (key, _dumps(value)))
            else:
                self._conn.execute("INSERT OR REPLACE INTO comparison_meta "
                                   "(comparison, key, value) VALUES (?, ?, ?)",
                                   (self.comparison, key, _dumps(value)))

    def meta(self) -> dict:
        """All metadata entries, by key: the comparison's after :meth:`use`, else the
        store's own (in a store of the old format, its one comparison's)."""
        if self.comparison is None:
            return self._global_meta()
        return self.comparison_meta(self.comparison)

    def _global_meta(self) -> dict:
        rows = self._conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        return {k: _loads(v, f"{self.path}: meta {k!r}") for k, v in rows}

    def use(self, comparison: str) -> None:
        """Register ``comparison`` (first use: after every existing one), make it the
        latest, and scope ``set_meta``/``meta`` to it. Resuming the one comparison of an
        old-format store carries its meta over."""
        registered = self._conn.execute("SELECT 1 FROM comparisons WHERE id=?",
                                        (comparison,)).fetchone() is not None
        carried, seq = {}, "COALESCE(MAX(seq), 0) + 1"
        if not registered and comparison == self._legacy_id(False):
            # The old comparison keeps its meta and its place, before the newer ones.
            carried, seq = self.comparison_meta(comparison), "COALESCE(MIN(seq), 1) - 1"
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO comparison_meta (comparison, key, value) "
                "VALUES (?, ?, ?)", [(comparison, k, _dumps(v)) for k, v in carried.items()])
            self._conn.execute(
                f"INSERT OR IGNORE INTO comparisons (id, seq) SELECT ?, {seq} FROM comparisons",
                (comparison,))
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               ("latest", _dumps(comparison)))
        self.comparison = comparison

    def comparisons(self) -> list[str]:
        """Ids of the comparisons in this store, oldest first. A store of the old format
        (one global meta describing a comparison) contributes its one comparison first;
        a store holding runs but no comparison meta at all reads as one comparison."""
        ids = [r[0] for r in self._conn.execute("SELECT id FROM comparisons ORDER BY seq")]
        legacy = self._legacy_id(bool(ids))
        return ([legacy] if legacy and legacy not in ids else []) + ids

    def latest(self) -> str | None:
        """The comparison most recently started (by :meth:`use`), else the last one."""
        ids = self.comparisons()
        latest = self._global_meta().get("latest")
        return latest if latest in ids else (ids[-1] if ids else None)

    def stored_id(self, comparison: str) -> str:
        """The id under which this store keeps the comparison with id ``comparison``: a
        comparison started before the ids ignored the order of names (:data:`ORDERLESS`)
        is found by its plan and resumed under its old id; else ``comparison`` itself."""
        ids = self.comparisons()
        if comparison in ids:
            return comparison
        return next((c for c in ids if comparison_id(self.comparison_meta(c)) == comparison),
                    comparison)

    def comparison_meta(self, comparison: str) -> dict:
        """The metadata of one comparison (KeyError if the store has no such comparison)."""
        known = self._conn.execute("SELECT 1 FROM comparisons WHERE id=?",
                                   (comparison,)).fetchone()
        if known is not None:
            rows = self._conn.execute("SELECT key, value FROM comparison_meta "
                                      "WHERE comparison=? ORDER BY key",
                                      (comparison,)).fetchall()
            return {k: _loads(v, f"{self.path}: comparison {comparison}, meta {k!r}")
                    for k, v in rows}
        if comparison not in self.comparisons():
            raise KeyError(comparison)
        return {k: v for k, v in self._global_meta().items() if k != "latest"}

    def _legacy_id(self, others: bool) -> str | None:
        """The id of the comparison described by the global meta (old format), if any.
        Without other comparisons, a store with runs but no meta counts as one."""
        old = {k: v for k, v in self._global_meta().items() if k != "latest"}
        if not old and (others or len(self) == 0):
            return None
        return comparison_id(old, as_given=True)

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
