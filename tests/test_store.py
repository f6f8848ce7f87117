"""The results store: exact round trip, idempotence, ordering, meta, schema checks, and
per-comparison meta (including stores written before comparisons had ids)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from optimlab.lab.spec import RunRecord, RunSpec
from optimlab.lab import store as store_mod
from optimlab.lab.store import Store, StoreError, comparison_id


def _record(**spec_kw) -> RunRecord:
    spec = RunSpec(**{**dict(problem="p", optimizer="adam", lr=3.16e-4, seed=0, steps=7,
                             schedule="cosine", hyperparameters=(("betas", (0.8, 0.99)),
                                                                 ("eps", 1e-6)),
                             phase="sweep", eval_every=2), **spec_kw})
    return RunRecord(
        spec=spec, status="diverged",
        final={"train_loss": math.inf, "val_loss": math.inf, "test_loss": math.inf,
               "val_metric": None, "gap": None, "steps_to_target": None, "diverged_at": 5,
               "error": None},
        curves={"step": [0, 2, 4], "train_loss": [1.0, 0.1 + 0.2, 1e-300],
                "val_loss": [1.5, 0.5, 0.25], "val_metric": [None, 0.5, 0.75],
                "lr": [3.16e-4] * 3},
        seconds=0.125, seconds_per_step=1.0 / 3, trajectory=[[1.5, -1.0], [1.25, -0.5]],
        versions={"python": "3.11", "torch": "2.13.0"})


def test_round_trip_is_exact(tmp_path):
    rec = _record()
    with Store(tmp_path / "r.sqlite") as store:
        store.put(rec)
    with Store(tmp_path / "r.sqlite") as store:   # reopened: nothing cached in memory
        (back,) = store.records()
    assert back == rec
    assert back.run_id == rec.run_id
    assert isinstance(back.spec.hyperparameters[0][1], tuple)


def test_no_trajectory_round_trips_as_none(tmp_path):
    rec = _record()
    rec.trajectory = None
    store = Store(tmp_path / "r.sqlite")
    store.put(rec)
    assert store.records() == [rec]


def test_put_is_idempotent(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    rec = _record()
    store.put(rec)
    store.put(rec)
    assert len(store.records()) == 1 and store.has(rec.run_id)
    assert not store.has("nope")


def test_error_runs_are_replaced_by_a_new_attempt_others_are_kept(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    err = _record()
    err.status = "error"
    store.put(err)
    ok = _record()
    ok.status = "ok"
    store.put(ok)
    assert store.records()[0].status == "ok"
    store.put(err)
    assert store.records()[0].status == "ok"


def test_records_order_and_phase_filter(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    recs = [_record(problem=p, optimizer=o, lr=lr, seed=s, phase=ph)
            for p in ("b", "a") for o in ("sgd", "adam") for lr in (1.0, 0.01)
            for s, ph in ((1, "seeds"), (0, "sweep"))]
    for r in recs:
        store.put(r)
    got = store.records()
    key = lambda r: (r.spec.problem, r.spec.optimizer, r.spec.phase, r.spec.lr, r.spec.seed)
    assert got == sorted(recs, key=key)
    assert store.records("seeds") == [r for r in got if r.spec.phase == "seeds"]
    assert len(store.records("seeds")) == 8


def test_meta(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.set_meta("grid", {"lrs": [1e-4, 1.0]})
    store.set_meta("seeds", 3)
    store.set_meta("seeds", 5)
    assert Store(tmp_path / "r.sqlite").meta() == {"grid": {"lrs": [1e-4, 1.0]}, "seeds": 5}


def test_each_comparison_has_its_own_meta(tmp_path):
    path = tmp_path / "r.sqlite"
    a, b = Store(path), Store(path)
    a.use("aaaa")
    a.set_meta("runs", ["r1", "r2"])
    a.set_meta("optimizers", ["adam"])
    b.use("bbbb")
    b.set_meta("runs", ["r2", "r3"])
    a.set_meta("finished", "t1")   # a's handle still writes to its own comparison
    with Store(path) as s:
        assert s.comparisons() == ["aaaa", "bbbb"] and s.latest() == "bbbb"
        assert s.comparison_meta("aaaa") == {"runs": ["r1", "r2"], "optimizers": ["adam"],
                                             "finished": "t1"}
        assert s.comparison_meta("bbbb") == {"runs": ["r2", "r3"]}
        assert s.meta() == {"latest": "bbbb"}   # the store's own meta, not a comparison's
        with pytest.raises(KeyError):
            s.comparison_meta("cccc")
        s.use("aaaa")   # resuming: same place in the order, becomes the latest
        assert s.comparisons() == ["aaaa", "bbbb"] and s.latest() == "aaaa"
        assert s.meta()["runs"] == ["r1", "r2"]
    a.close()
    b.close()


def test_comparison_id_ignores_bookkeeping():
    plan = {"grid": [1e-3, 1e-2], "optimizers": ["sgd", "adam"], "seeds": 5}
    cid = comparison_id(plan)
    assert len(cid) == 10 and int(cid, 16) >= 0
    assert comparison_id({**plan, "command": "x", "created": "t", "runs": ["a"]}) == cid
    assert comparison_id({**plan, "seeds": 3}) != cid
    assert comparison_id({**plan, "optimizers": ["sgd"]}) != cid


def _old_format_store(path, meta):
    """A store as written before comparisons had ids: tables runs and meta only."""
    conn = sqlite3.connect(path)
    conn.executescript(store_mod._SCHEMA)
    conn.execute(f"PRAGMA user_version={Store.SCHEMA_VERSION}")
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [(k, store_mod._dumps(v)) for k, v in meta.items()])
    conn.commit()
    conn.close()


def test_old_format_store_reads_as_one_comparison(tmp_path):
    path = tmp_path / "r.sqlite"
    plan = {"grid": [1e-3, 1e-2], "optimizers": ["sgd"], "seeds": 2}
    old = {**plan, "runs": ["r1"], "command": "optimlab compare", "created": "t0"}
    _old_format_store(path, old)
    legacy = comparison_id(plan)
    with Store(path) as s:
        assert s.comparisons() == [legacy] and s.latest() == legacy
        assert s.comparison_meta(legacy) == old
        s.use("new1")   # a second comparison in the old directory
        s.set_meta("runs", ["r9"])
    with Store(path) as s:
        assert s.comparisons() == [legacy, "new1"] and s.latest() == "new1"
        assert s.comparison_meta(legacy) == old and s.comparison_meta("new1") == {"runs": ["r9"]}
        s.use(legacy)   # the old command again: it resumes the old comparison, meta kept
        s.set_meta("finished", "t1")
        assert s.meta() == {**old, "finished": "t1"}
        assert s.comparisons() == [legacy, "new1"]


def test_runs_without_any_meta_read_as_one_comparison(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        assert s.comparisons() == [] and s.latest() is None
        s.put(_record())
        assert s.comparisons() == [comparison_id({})]
        assert s.comparison_meta(s.latest()) == {}


def test_incompatible_schema_version_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={Store.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="incompatible"):
        Store(path)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    # Another program's SQLite file (schema version 0) is not "an incompatible optimlab
    # store": say what it is, for opening and for reporting alike.
    for create in (True, False):
        with pytest.raises(StoreError) as err:
            Store(other, create=create)
        assert str(err.value).startswith(f"{other} is not an optimlab results store "
                                         "(an SQLite file of another program: tables t)")
        assert "incompatible" not in str(err.value) and "version" not in str(err.value)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(junk)
    with pytest.raises(StoreError):
        Store(tmp_path / "missing-dir" / "r.sqlite")


def test_lookalike_tables_are_refused_naming_the_column(tmp_path):
    """user_version 1 and tables runs/meta, but not optimlab's: refused when opened, not
    an OperationalError ("no such column") at the first query."""
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=1")
        conn.execute("CREATE TABLE runs (run_id TEXT, stuff TEXT)")
        conn.execute("CREATE TABLE meta (name TEXT, value TEXT)")
    conn.close()
    with pytest.raises(StoreError, match=r"results.sqlite is not an optimlab results store "
                                         r"\(table meta lacks column key\)"):
        Store(path)


@pytest.mark.parametrize("column", ["final", "hyperparameters"])
def test_corrupt_json_names_the_file_run_and_column(tmp_path, column):
    path = tmp_path / "r.sqlite"
    rec = _record()
    with Store(path) as store:
        store.put(rec)
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE runs SET {column}='{{bad'")
    conn.close()
    with Store(path) as store, pytest.raises(StoreError) as err:
        store.records()
    assert f"{path}: run {rec.run_id}, column {column}, is not valid JSON" in str(err.value)


def test_create_false_leaves_an_empty_file_alone(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="no comparisons in .*results.sqlite"):
        Store(path, create=False)
    assert path.read_bytes() == b""
    with pytest.raises(StoreError, match="no results store"):
        Store(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_sqlite_json_functions_read_a_diverged_run(tmp_path):
    """Standard JSON in the store: SQLite's json_extract reads an inf loss (as the string
    'Infinity'), and the record still reads back exactly."""
    path = tmp_path / "results.sqlite"
    rec = _record()
    rec.curves["val_loss"] = [1.5, -math.inf, math.nan]
    with Store(path) as store:
        store.put(rec)
        store.set_meta("optimum", math.inf)
    with sqlite3.connect(path) as conn:
        got = conn.execute("SELECT json_extract(final, '$.val_loss'), "
                           "json_extract(curves, '$.val_loss[1]'), "
                           "json_valid(trajectory) FROM runs").fetchone()
        assert got == ("Infinity", "-Infinity", 1)
        assert conn.execute("SELECT json_extract(value, '$') FROM meta "
                            "WHERE key='optimum'").fetchone() == ("Infinity",)
    conn.close()
    with Store(path) as store:
        (back,) = store.records()
        assert store.meta()["optimum"] == math.inf
    assert back.final == rec.final and back.curves["val_loss"][:2] == [1.5, -math.inf]
    assert math.isnan(back.curves["val_loss"][2])


def test_a_store_with_bare_infinity_tokens_still_reads(tmp_path):
    """Stores written before held Python's bare Infinity/NaN tokens: read as before."""
    path = tmp_path / "results.sqlite"
    rec = _record()
    with Store(path) as store:
        store.put(rec)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET final=?", (store_mod.json.dumps(rec.final),))
        assert "Infinity" in conn.execute("SELECT final FROM runs").fetchone()[0]
    conn.close()
    with Store(path) as store:
        (back,) = store.records()
    assert back == rec
