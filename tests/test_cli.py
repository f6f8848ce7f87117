"""The command line end to end: resume after SIGKILL, worker-count independence, --json,
Ctrl-C, two comparisons in one directory, case-insensitive names, and one-line errors for
bad input.

The sweeps use the fake problem of test_runner.py (``--problem test_runner:noisy_quadratic``,
tests/ on PYTHONPATH), so these tests do not depend on the real problems.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
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

# The adaptive lr search (no --lrs): several sweep rounds, then the seeds phase's two
# rungs (seed 1 for every candidate lr, seed 2 for those promoted).
TINY = ["compare", "--problem", "test_runner:noisy_quadratic", "--optimizers",
        "sgd,adam,momentum", "--seeds", "3", "--steps", "200"]


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
    return out, json.loads(proc.stdout), proc.stderr


def test_reference_run_is_complete(reference):
    from optimlab.lab.search import COARSE
    from optimlab.lab.selection import CANDIDATES

    out, summary, err = reference
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
        assert {s.seed for s in reruns} == {1, 2}
        promoted = {s.lr for s in reruns if s.seed == 2}
        assert 1 <= len(promoted) <= len({s.lr for s in reruns})
    assert all(isinstance(s["at_bound"], bool) for s in summary["selections"])
    # The selected lr is one of the promoted candidates, with every seed.
    assert all(s["lr"] in s["promoted"] and s["seeds"] == 3 for s in summary["selections"])
    cid = summary["comparison"]
    with Store(out / cli.STORE_NAME) as store:
        assert store.comparisons() == [cid] and store.latest() == cid
        meta = store.comparison_meta(cid)
    assert meta["argv"][0] == "compare" and meta["command"].startswith("optimlab compare")
    assert meta["grid"] == list(COARSE) and meta["seeds"] == 3
    assert meta["search"]["adaptive"] and meta["grid_spacing"] != "custom"
    assert meta["steps"] == 200 and meta["steps_per_problem"] == {"fake-quad": 200}
    assert meta["schedule"] == "constant"
    assert set(meta["versions"]) >= {"python", "torch", "optimlab"}
    assert sorted(meta["runs"]) == sorted(runs) and "created" in meta
    assert (out / "report.html").read_bytes() == (out / f"report-{cid}.html").read_bytes()
    assert (out / "index.html").is_file()
    # counts read as English: one problem, not "1 problems"
    assert re.search(r"\b1 problem\b", err) and "1 problems" not in err
    head = (out / "summary.md").read_text(encoding="utf-8").splitlines()[2]
    assert head.startswith(f"{len(runs)} runs · 1 problem · 3 optimizers"), head


def test_json_matches_the_store(reference):
    out, summary, _ = reference
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


def test_json_verdicts_and_terminal_table(reference):
    """--json verdicts agree with the selections, and the verdict table (stderr with
    --json) names the same best and the report path."""
    _, summary, err = reference
    (v,) = summary["verdicts"]
    assert v["problem"] == "fake-quad" and v["status"] == "verdict"
    assert v["best"] == v["tied"][0] and v["ci"][0] <= v["mean"] <= v["ci"][1]
    sel = {s["optimizer"]: s for s in summary["selections"]}
    assert v["lr"] == sel[v["best"]]["lr"]
    assert set(v["tied"]) <= set(sel)
    table = err[err.index("Verdicts"):]
    assert "fake-quad" in table and v["best"] in table
    assert f"report-{summary['comparison']}.html" in table   # this comparison's report


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


def _reports(out: Path) -> dict:
    return {f.name: f.read_text(encoding="utf-8") for f in out.iterdir()
            if f.suffix in (".html", ".md")}


def test_two_comparisons_in_one_directory(reference, tmp_path, capsys):
    """A second comparison in the reference's directory: runs it shares are not rerun,
    each comparison keeps its own report, and `optimlab report` rebuilds both, or one."""
    out = tmp_path / "two"
    shutil.copytree(reference[0], out)
    first = reference[1]["comparison"]
    other = [a if a != "sgd,adam,momentum" else "SGD,Nesterov" for a in TINY]
    assert cli.main([*other, "--workers", "1", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out)["comparison"]
    assert second != first and "1 other comparison" in captured.err
    with Store(out / cli.STORE_NAME) as store:
        assert store.comparisons() == [first, second] and store.latest() == second
        runs = {c: set(store.comparison_meta(c)["runs"]) for c in (first, second)}
        by_id = {r.run_id: r.spec.optimizer for r in store.records()}
    assert runs[first] == set(_runs(reference[0]))
    assert set(by_id) == runs[first] | runs[second]   # each run stored once
    assert {by_id[i] for i in runs[second]} == {"sgd", "nesterov"}
    shared = runs[first] & runs[second]   # sgd's runs, trained once, in both comparisons
    assert shared and shared == {i for i in runs[first] if by_id[i] == "sgd"} == {
        i for i in runs[second] if by_id[i] == "sgd"}
    built = _reports(out)
    assert built["report.html"] == built[f"report-{second}.html"]
    assert "nesterov" in built[f"summary-{second}.md"]
    assert "nesterov" not in built[f"summary-{first}.md"] and "adam" in built[f"summary-{first}.md"]

    for f in out.iterdir():
        if f.suffix in (".html", ".md"):
            f.unlink()
    assert cli.main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"report-{first}.html" in err and f"report-{second}.html" in err
    rebuilt = _reports(out)
    assert sorted(rebuilt) == sorted(built)
    for name in (f"summary-{first}.md", f"summary-{second}.md", "summary.md"):
        assert rebuilt[name] == built[name]   # the report is a pure function of the store
    assert rebuilt[f"report-{first}.html"] != rebuilt[f"report-{second}.html"]

    (out / f"report-{first}.html").unlink()
    (out / f"report-{second}.html").unlink()
    assert cli.main(["report", str(out), "--comparison", first]) == 0
    assert (out / f"report-{first}.html").exists() and not (out / f"report-{second}.html").exists()
    capsys.readouterr()
    assert cli.main(["report", str(out), "--comparison", "nosuchid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("optimlab: error:"), err
    assert first in err[0] and second in err[0] and "nosuchid" in err[0]


def test_names_are_case_insensitive(tmp_path, capsys):
    """--problems Rosenbrock --optimizers SGD,Adam is the same comparison (same run ids)
    as the lower-case spelling."""
    args = ["compare", "--lrs", "1e-3", "--seeds", "1", "--steps", "5", "--workers", "1",
            "--no-report", "--out", str(tmp_path)]
    assert cli.main([*args, "--problems", "Rosenbrock", "--optimizers", "SGD,Adam"]) == 0
    first = capsys.readouterr().err
    runs = _runs(tmp_path)
    assert {(spec.problem, spec.optimizer) for spec, *_ in runs.values()} == {
        ("rosenbrock", "sgd"), ("rosenbrock", "adam")}
    assert cli.main([*args, "--problems", "rosenbrock", "--optimizers", "sgd,adam"]) == 0
    again = capsys.readouterr().err
    assert _runs(tmp_path) == runs
    cid = first.split()[1]
    assert again.startswith(f"comparison {cid} (resumed)"), again


def test_names_in_another_order_are_the_same_comparison(tmp_path, capsys, monkeypatch):
    """--optimizers adam,sgd after sgd,adam resumes the same comparison (one in the store, its
    report listing them in the latest order); so does a comparison stored under the id of
    the order it was given in (before ids ignored the order)."""
    args = ["compare", "--problems", "rosenbrock", "--lrs", "1e-3", "--seeds", "1", "--steps",
            "5", "--workers", "1", "--no-report", "--out", str(tmp_path)]
    assert cli.main([*args, "--optimizers", "sgd,adam"]) == 0
    cid = capsys.readouterr().err.split()[1]
    assert cli.main([*args, "--optimizers", "adam,sgd", "--lrs", "1e-3"]) == 0
    assert capsys.readouterr().err.startswith(f"comparison {cid} (resumed)")
    with Store(tmp_path / cli.STORE_NAME) as store:
        assert store.comparisons() == [cid]
        assert store.comparison_meta(cid)["optimizers"] == ["adam", "sgd"]

    from optimlab.lab import store as store_module
    old = tmp_path / "old"
    real = store_module.comparison_id
    monkeypatch.setattr(cli, "comparison_id", lambda d: real(d, as_given=True))
    assert cli.main([*args[:-1], str(old), "--optimizers", "sgd,adam"]) == 0
    old_id = capsys.readouterr().err.split()[1]
    monkeypatch.undo()
    assert old_id != cid
    assert cli.main([*args[:-1], str(old), "--optimizers", "adam,sgd"]) == 0
    assert capsys.readouterr().err.startswith(f"comparison {old_id} (resumed)")
    with Store(old / cli.STORE_NAME) as store:
        assert store.comparisons() == [old_id]


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
    "unknown optimizer": (["compare", "--optimizers", "sgd,adamx"], "did you mean 'adamax'"),
    "optimizer typo": (["compare", "--optimizers", "RMSprp"], "did you mean 'rmsprop'?"),
    "problem typo": (["compare", "--problems", "Rosenbrok"], "did you mean 'rosenbrock'"),
    "schedule typo": (["compare", "--schedule", "cosin"], "did you mean 'cosine'"),
    "bad lr": (["compare", "--lrs", "1e-3,abc"], "abc"),
    "negative lr": (["compare", "--lrs", "-0.1"], "positive"),
    "negative lr, exponent": (["compare", "--lrs", "-1e-3"],
                              "learning rates must be positive, got '-1e-3'"),
    "lr overflows": (["compare", "--lrs", "1e-3,1e400"], "'1e400' overflows to inf"),
    "lr underflows": (["compare", "--lrs", "1e-400"], "'1e-400' underflows to 0"),
    "negative steps": (["compare", "--steps", "-5"], "steps"),
    "zero seeds": (["compare", "--seeds", "0"], "seeds"),
    "zero workers": (["compare", "--workers", "0"], "workers"),
    "huge seeds": (["compare", "--seeds", "99999999999999999999"],
                   "argument --seeds: must be at most 10,000, got 99999999999999999999"),
    "huge steps": (["compare", "--steps", "1" + "0" * 12], "--steps: must be at most"),
    "huge workers": (["compare", "--workers", "100000"], "--workers: must be at most"),
    "huge ray retries": (["compare", "--ray-retries", "1000000"], "must be at most 100,"),
    "lrs without an lr": (["compare", "--lrs", ","], "no learning rates in ','"),
    "no command": ([], "required"),
    "unknown command": (["train"], "invalid choice"),
    "unknown problem": (["compare", "--problems", "no-such-problem"], "no-such-problem"),
    "bad custom problem": (["compare", "--problem", "no_such_module_xyz:f"], "no_such_module"),
    "missing report dir": (["report", "/nonexistent/optimlab"], "no results store"),
}


def test_help_does_not_describe_a_fixed_grid(capsys):
    for argv in (["compare", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "half-decade" not in text and "--comparison" in text
    assert "%(default)s" not in text and "case-insensitive" in text


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


def _lookalike(out: Path) -> None:
    with sqlite3.connect(out / cli.STORE_NAME) as conn:
        conn.execute("PRAGMA user_version=1")
        conn.execute("CREATE TABLE runs (id, x)")
        conn.execute("CREATE TABLE meta (k, v)")
    conn.close()


def _corrupt(out: Path) -> None:
    from test_store import _record

    with Store(out / cli.STORE_NAME) as store:
        store.put(_record())
    with sqlite3.connect(out / cli.STORE_NAME) as conn:
        conn.execute("UPDATE runs SET curves='{oops'")
    conn.close()


@pytest.mark.parametrize("make, needle", [
    (lambda out: (out / cli.STORE_NAME).write_bytes(b""), "no comparisons in {store}"),
    (lambda out: Store(out / cli.STORE_NAME).close(), "no comparisons in {store}"),
    (_lookalike, "{store} is not an optimlab results store (table meta lacks columns key"),
    (_corrupt, "{store}: run "),
], ids=["empty file", "no comparison", "look-alike", "corrupt row"])
def test_report_on_a_store_it_cannot_use_is_one_line(tmp_path, capsys, make, needle):
    """An empty file, a store with no comparison, a look-alike schema, a corrupt row:
    one line naming the file (and the run and column), exit 2; an empty file stays empty
    (no schema written into it) and no report is written."""
    make(tmp_path)
    before = (tmp_path / cli.STORE_NAME).read_bytes()
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("optimlab: error: ")
    assert needle.format(store=tmp_path / cli.STORE_NAME) in err, err
    assert "internal error" not in err and not (tmp_path / "report.html").exists()
    if not before:
        assert (tmp_path / cli.STORE_NAME).read_bytes() == b""
    if make is _corrupt:
        assert "column curves, is not valid JSON" in err


def test_suite_with_named_problems_is_refused(tmp_path, capsys):
    """--suite is the problems when none is named; with --problems it would silently add
    the whole suite, so the two together are an error (nothing runs)."""
    out = tmp_path / "out"
    argv = ["compare", "--suite", "full", "--problems", "rosenbrock", "--optimizers", "sgd",
            "--lrs", "0.1", "--seeds", "1", "--steps", "1", "--workers", "1", "--no-report",
            "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "optimlab: error: --suite full and --problems both choose the problems: " \
                  "give one of them\n"
    assert not out.exists()


def test_duplicate_lrs_are_one_lr(tmp_path, capsys):
    argv = ["compare", "--problems", "rosenbrock", "--optimizers", "sgd", "--lrs",
            "0.01,0.010,1e-2,0.1", "--seeds", "1", "--steps", "2", "--workers", "1",
            "--no-report", "--out", str(tmp_path)]
    assert cli.parser().parse_args(argv).lrs == [0.01, 0.1]
    assert cli.main(argv) == 0
    assert "phase sweep, round 1 (coarse grid): 2 runs" in capsys.readouterr().err
    with Store(tmp_path / cli.STORE_NAME) as store:
        assert store.comparison_meta(store.latest())["grid"] == [0.01, 0.1]


def test_subprocess_errors_have_no_traceback(tmp_path):
    for args in (["compare", "--steps", "abc"],
                 [*TINY, "--out", _incompatible_store(tmp_path)]):
        proc = _cli(*args)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("optimlab: error:")


def test_executor_ray_without_ray_is_one_line(tmp_path, monkeypatch, capsys):
    """--executor ray where Ray is not installed: one line naming the install command;
    the Ray options without --executor ray: one line too."""
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    assert cli.main([*TINY, "--executor", "ray", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("optimlab: error:"), err
    assert 'pip install "optimlab[ray]"' in err
    assert not (tmp_path / "a").exists()   # nothing written before the check
    assert cli.main([*TINY, "--ray-address", "auto", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--ray-address needs --executor ray" in err
