"""The results store: exact round trip, idempotence, ordering, meta, schema checks."""

from __future__ import annotations

import math
import sqlite3

import pytest

from optimlab.lab.spec import RunRecord, RunSpec
from optimlab.lab.store import Store, StoreError


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
    with pytest.raises(StoreError):
        Store(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(junk)
    with pytest.raises(StoreError):
        Store(tmp_path / "missing-dir" / "r.sqlite")
