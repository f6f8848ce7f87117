"""The command line end to end: resume after SIGKILL, worker-count independence, --json,
Ctrl-C, and one-line errors for bad input.

The sweeps use the fake problem of test_runner.py (``--problem test_runner:noisy_quadratic``,
tests/ on PYTHONPATH), so these tests do not depend on the real problems.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimlab.lab import cli
from optimlab.lab.store import Store

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))   # in-process main() loads test_runner:noisy_quadratic

# The adaptive lr search (no --lrs): several sweep rounds, then the seeds phase.
TINY = ["compare", "--problem", "test_runner:noisy_quadratic", "--optimizers",
        "sgd,adam,momentum", "--seeds", "2", "--steps", "200"]


def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "optimlab", *map(str, args)], env=_env(**env),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _runs(out: Path) -> dict:
    with Store(out / cli.STORE_NAME) as store:
        recs = store.records()
    assert len(recs) == len({r.run_id for r in recs})
    return {r.run_id: (r.spec, r.status, r.final, r.curves, r.trajectory) for r in recs}


def _count(path: Path) -> int:
    """Runs stored so far, read without opening a Store (which could create the file)."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:   # not created yet
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with two worker processes, with its --json output."""
    out = tmp_path_factory.mktemp("ref")
    proc = _cli(*TINY, "--workers", "2", "--json", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return out, json.loads(proc.stdout)


def test_reference_run_is_complete(reference):
    from optimlab.lab.search import COARSE
    from optimlab.lab.selection import CANDIDATES

    out, summary = reference
    runs = _runs(out)
    sweep = [spec for spec, *_ in runs.values() if spec.phase == "sweep"]
    seeds = [spec for spec, *_ in runs.values() if spec.phase == "seeds"]
    assert {spec.phase for spec, *_ in runs.values()} == {"sweep", "seeds"}
    for o in ("sgd", "adam", "momentum"):
        lrs = {s.lr for s in sweep if s.optimizer == o}
        # The coarse grid plus refinement (4 per decade around the best).
        assert set(COARSE) < lrs and len(lrs) >= len(COARSE) + 2
        reruns = [s for s in seeds if s.optimizer == o]
        assert 1 <= len({s.lr for s in reruns}) <= CANDIDATES
        assert {s.seed for s in reruns} == {1}
    sel = {s["optimizer"]: s for s in summary["selections"]}
    assert all(isinstance(s["at_bound"], bool) for s in sel.values())
    meta = Store(out / cli.STORE_NAME).meta()
    assert meta["argv"][0] == "compare" and meta["command"].startswith("optimlab compare")
    assert meta["grid"] == list(COARSE) and meta["seeds"] == 2
    assert meta["search"]["adaptive"] and meta["grid_spacing"] != "custom"
    assert meta["steps"] == 200 and meta["steps_per_problem"] == {"fake-quad": 200}
    assert meta["schedule"] == "constant"
    assert set(meta["versions"]) >= {"python", "torch", "optimlab"}
    assert sorted(meta["runs"]) == sorted(runs) and "created" in meta
    assert (out / "report.html").is_file()


def test_json_matches_the_store(reference):
    out, summary = reference
    recs = {r.run_id: r for r in Store(out / cli.STORE_NAME).records()}
    assert sorted(run["run_id"] for run in summary["runs"]) == sorted(recs)
    for run in summary["runs"]:
        r = recs[run["run_id"]]
        assert (run["problem"], run["optimizer"], run["lr"], run["seed"], run["phase"],
                run["status"], run["steps"], run["seconds"]) == (
            r.spec.problem, r.spec.optimizer, r.spec.lr, r.spec.seed, r.spec.phase,
            r.status, r.spec.steps, r.seconds)
        assert run["final"] == {k: (None if isinstance(v, float) and not math.isfinite(v)
                                    else v) for k, v in r.final.items()}
    assert any(run["status"] == "diverged" for run in summary["runs"])   # lr=1 on sgd
    assert {(s["problem"], s["optimizer"]) for s in summary["selections"]} == {
        ("fake-quad", o) for o in ("sgd", "adam", "momentum")}


def test_resume_after_sigkill_and_workers_do_not_change_results(reference, tmp_path):
    """Killed after the coarse round (2 workers), i.e. inside the search's extension/
    refinement rounds or the seeds phase, then completed in-process (--workers 1): the
    store equals the uninterrupted 2-worker reference, run for run."""
    from optimlab.lab.search import COARSE

    store = tmp_path / cli.STORE_NAME
    coarse = 3 * len(COARSE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "optimlab", *TINY, "--workers", "2", "--out", str(tmp_path)],
        env=_env(OPTIMLAB_TEST_SLEEP="0.002"), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None and _count(store) <= coarse:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:   # the workers notice their parent is gone; this only tidies up after a failure
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it was killed"
    assert coarse < _count(store) < len(_runs(reference[0]))

    again = _cli(*TINY, "--workers", "1", "--no-report", "--out", tmp_path)
    assert again.returncode == 0, again.stderr
    assert _runs(tmp_path) == _runs(reference[0])
    assert not (tmp_path / "report.html").exists()   # --no-report


def test_ctrl_c_keeps_finished_runs(reference, tmp_path):
    store = tmp_path / cli.STORE_NAME
    proc = subprocess.Popen(
        [sys.executable, "-m", "optimlab", *TINY, "--workers", "2", "--out", str(tmp_path)],
        env=_env(OPTIMLAB_TEST_SLEEP="0.002"), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while proc.poll() is None and _count(store) == 0:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C sends: the whole process group
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "keeps every finished run" in err
    assert 0 < _count(store) < len(_runs(reference[0]))


# ---------------------------------------------------------------------- bad input

def _incompatible_store(tmp_path) -> Path:
    out = tmp_path / "old"
    out.mkdir()
    Store(out / cli.STORE_NAME).close()
    with sqlite3.connect(out / cli.STORE_NAME) as conn:
        conn.execute(f"PRAGMA user_version={Store.SCHEMA_VERSION + 1}")
    return out


BAD = {
    "unknown optimizer": (["compare", "--optimizers", "sgd,adamx"], "adamw"),
    "bad lr": (["compare", "--lrs", "1e-3,abc"], "abc"),
    "negative lr": (["compare", "--lrs", "-0.1"], "positive"),
    "negative steps": (["compare", "--steps", "-5"], "steps"),
    "zero seeds": (["compare", "--seeds", "0"], "seeds"),
    "zero workers": (["compare", "--workers", "0"], "workers"),
    "no command": ([], "required"),
    "unknown command": (["train"], "invalid choice"),
    "unknown problem": (["compare", "--problems", "no-such-problem"], "no-such-problem"),
    "bad custom problem": (["compare", "--problem", "no_such_module_xyz:f"], "no_such_module"),
    "missing report dir": (["report", "/nonexistent/optimlab"], "no results store"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line(case, capsys):
    argv, needle = BAD[case]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optimlab: error:"), err
    assert needle in lines[0]


def test_unwritable_out_and_incompatible_store(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, needle in ((blocker / "sub", "a-file"), (_incompatible_store(tmp_path), "incompatible")):
        code = cli.main([*TINY, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("optimlab: error:") and needle in err
    assert cli.main(["report", str(tmp_path / "old")]) == 2
    assert "incompatible" in capsys.readouterr().err


def test_subprocess_errors_have_no_traceback(tmp_path):
    for args in (["compare", "--steps", "abc"],
                 [*TINY, "--out", _incompatible_store(tmp_path)]):
        proc = _cli(*args)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("optimlab: error:")
