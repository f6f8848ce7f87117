"""``optimlab compare --executor ray`` on a real Ray instance started by the tests.

One local Ray instance (2 CPUs, no dashboard) serves the module's tests of the executor
itself; the in-process CLI joins it. The tests where the CLI starts (and shuts down) its
own Ray, as a user's command does, are ``slow``. Ray must be installed (the ``ray``
extra, which ``.ci/run`` installs); without it these tests are skipped locally and
required in CI. The problems are the fake quadratic of test_runner.py and variants of it
defined here, imported by the workers from tests/ (the driver's ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from optimlab.lab import cli, runner
from optimlab.lab.spec import RunSpec
from optimlab.lab.store import Store

from test_cli import TINY, _cli, _count, _env, _runs
from test_runner import noisy_quadratic

if os.environ.get("CI") == "true":
    import ray   # required in CI: .ci/run installs the ray extra
else:
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "optimlab[ray]")')

from optimlab.lab.ray_executor import RayExecutor   # noqa: E402

PIDS = "OPTIMLAB_TEST_PIDS"   # where the problems below note which process ran what


# ------------------------------------------------------------- problems (on workers)

def sleepy() -> "Problem":
    """The fake quadratic at 10 ms a step; a run notes ``<seed>-<pid>`` in $OPTIMLAB_TEST_PIDS
    when it starts, so a test can kill the worker running it."""
    base = noisy_quadratic("sleepy")

    def batch(step, seed):
        if step == 0:
            Path(os.environ[PIDS], f"{seed}-{os.getpid()}").touch()
        time.sleep(0.01)
        return base.batch(step, seed)

    return dataclasses.replace(base, batch=batch)


def crashing() -> "Problem":
    """Every run kills its worker process on its first step (noting ``crash-<pid>``)."""
    base = noisy_quadratic("crashing")

    def loss(model, batch):
        Path(os.environ[PIDS], f"crash-{os.getpid()}").touch()
        os._exit(1)

    return dataclasses.replace(base, loss=loss)


def gpu_quadratic() -> "Problem":
    """The fake quadratic, declaring that each run wants one GPU (this machine has none)."""
    return dataclasses.replace(noisy_quadratic("gpu-quadratic"), gpus=1.0)


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray instance for the module, as the executor starts it; shut down after."""
    from optimlab.lab.ray_executor import start_local

    pids = tmp_path_factory.mktemp("pids")
    old = os.environ.get(PIDS)
    os.environ[PIDS] = str(pids)   # before the start: the workers inherit it
    start_local(2)
    try:
        yield pids
    finally:
        ray.shutdown()
        if old is None:
            del os.environ[PIDS]
        else:
            os.environ[PIDS] = old


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """TINY on the local executor, in this process (--workers 1)."""
    out = tmp_path_factory.mktemp("local")
    assert cli.main([*TINY, "--workers", "1", "--no-report", "--out", str(out)]) == 0
    return out


def _executor(store, sources, **kw):
    return RayExecutor(store, sources, kw.pop("workers", 2), **kw)


def _specs(problem, n, steps=100):
    return [RunSpec(problem=problem, optimizer="sgd", lr=0.05, seed=s, steps=steps)
            for s in range(n)]


def _same(record, expected):
    return (record.spec, record.status, record.final, record.curves, record.trajectory) == (
        expected.spec, expected.status, expected.final, expected.curves, expected.trajectory)


# --------------------------------------------------------------------------- tests

def test_no_cluster_at_auto_is_one_line(tmp_path):
    """``auto`` with no Ray running on this machine: Ray's own error, in one line. (First
    in the module: ``auto`` would join the module's Ray instance.)"""
    proc = _cli(*TINY, "--executor", "ray", "--ray-address", "auto", "--out", tmp_path,
                RAY_ADDRESS="")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("optimlab: error: cannot connect to Ray")


def test_ray_store_equals_the_local_store(ray_local, local_reference, tmp_path, capsys):
    """The whole protocol (search rounds, seeds) on Ray gives the local store, run id by
    run id; the store's meta says which executor ran it."""
    out = tmp_path / "ray"
    code = cli.main([*TINY, "--executor", "ray", "--workers", "2", "--no-report",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Ray task" in err and "executor: the Ray instance this process is connected to" in err
    assert _runs(out) == _runs(local_reference)
    with Store(out / cli.STORE_NAME) as store:
        assert store.comparison_meta(store.latest())["executor"] == "ray"
    assert ray.is_initialized()   # a connection the CLI did not open is left open


def test_killed_worker_is_retried(ray_local, tmp_path):
    """SIGKILL of the worker process running a run: Ray retries it on another worker and
    the store ends complete, equal to runs in this process."""
    problem = sleepy()
    specs = _specs("sleepy", 4, steps=300)
    store = Store(tmp_path / "r.sqlite")
    ex = _executor(store, {"sleepy": "test_ray:sleepy"}, problems={"sleepy": problem})
    for f in ray_local.iterdir():
        f.unlink()
    killed = []

    def kill_the_first_run():
        deadline = time.monotonic() + 600
        while not any(ray_local.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = next(ray_local.iterdir()).name
        os.kill(int(victim.split("-")[1]), signal.SIGKILL)
        killed.append(victim)

    killer = threading.Thread(target=kill_the_first_run, daemon=True)
    killer.start()
    with ex:
        assert ex.run(specs) == len(specs)
    killer.join()
    (victim,) = killed
    seed = int(victim.split("-")[0])
    # The killed run started again in another process.
    attempts = [f.name for f in ray_local.iterdir() if f.name.startswith(f"{seed}-")]
    assert len(attempts) == 2 and victim in attempts
    records = {r.run_id: r for r in store.records()}
    assert sorted(records) == sorted(s.run_id for s in specs)
    for spec in specs:
        assert _same(records[spec.run_id], runner.run(spec, problem)), spec
    store.close()


def test_a_problem_that_always_kills_its_worker_is_recorded_failed(ray_local, tmp_path):
    """A run whose worker dies on every attempt is tried 1 + max_retries times, then
    stored as failed with the reason; the other runs are unaffected."""
    store = Store(tmp_path / "r.sqlite")
    ok, bad = _specs("fake-quad", 1)[0], _specs("crashing", 1)[0]
    sources = {"fake-quad": "test_runner:noisy_quadratic", "crashing": "test_ray:crashing"}
    for f in ray_local.iterdir():
        f.unlink()
    with _executor(store, sources, max_retries=1) as ex:
        assert ex.run([ok, bad]) == 2
    assert len([f for f in ray_local.iterdir() if f.name.startswith("crash-")]) == 2
    records = {r.spec.problem: r for r in store.records()}
    assert records["fake-quad"].status == "ok"
    failed = records["crashing"]
    assert failed.status == "error" and failed.curves["step"] == []
    assert "after 1 retry" in failed.final["error"] and "Error" in failed.final["error"]
    # A failed run is retried by the next sweep, as any error run.
    assert ex.pending([ok, bad]) == [bad]
    store.close()


def test_problem_not_importable_on_the_workers_is_one_line(ray_local, tmp_path, monkeypatch,
                                                           capsys):
    """The driver can build the problem (its module is in this process only), the
    workers cannot: one error line naming the module and the node, no traceback."""
    module = types.ModuleType("driver_only_problems")
    module.make = lambda: noisy_quadratic("driver-only")
    monkeypatch.setitem(sys.modules, "driver_only_problems", module)
    code = cli.main(["compare", "--problem", "driver_only_problems:make", "--optimizers", "sgd",
                     "--lrs", "0.1", "--seeds", "1", "--steps", "5", "--executor", "ray",
                     "--no-report", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("optimlab: error:"), err
    assert "'driver_only_problems'" in errors[0] and "Ray node" in errors[0]
    assert "importable" in errors[0]


@pytest.mark.parametrize("address, needle", [
    ("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
    ("ray://127.0.0.1:1", "no Ray cluster answers"),
    ("not-an-address", "bad --ray-address"),
])
def test_bad_address_is_one_line(address, needle, tmp_path, capsys):
    code = cli.main([*TINY, "--executor", "ray", "--ray-address", address,
                     "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("optimlab: error:"), err
    assert needle in err


def test_more_cpus_per_run_than_the_machine_has_is_one_line(tmp_path):
    """A local Ray instance given more CPUs than the machine has would hand each run CPUs
    that do not exist: refused before Ray starts, in one line."""
    many = (os.cpu_count() or 1) + 1
    proc = _cli(*TINY, "--executor", "ray", "--ray-cpus-per-run", many, "--out", tmp_path,
                RAY_ADDRESS="")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    err = proc.stderr
    assert len(err.strip().splitlines()) == 1 and err.startswith("optimlab: error:"), err
    assert f"--ray-cpus-per-run {many} asks for more CPUs" in err


@pytest.mark.slow
def test_a_problem_wanting_a_gpu_no_node_has_is_one_line(tmp_path):
    """Runs that ask Ray for a GPU on a local instance without one would wait forever (an
    infeasible task): one error line instead, and the CLI's Ray is shut down."""
    proc = _cli("compare", "--problem", "test_ray:gpu_quadratic", "--optimizers", "sgd",
                "--lrs", "0.1", "--seeds", "1", "--steps", "5", "--executor", "ray",
                "--no-report", "--out", tmp_path, RAY_ADDRESS="")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("optimlab: error: problem 'gpu-quadratic'"), \
        proc.stderr
    assert "asks for more GPUs for each run than any node" in errors[0]


# ------------------------------------------------------- the CLI starts its own Ray

def _session(pid: int) -> list:
    """Processes of the session led by ``pid`` (the CLI's, with its Ray instance)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, sid, stat in (line.split() for line in out.splitlines())
            if int(sid) == pid and int(p) != pid and not stat.startswith("Z")]


def _reap(pid: int) -> list:
    """Wait for the session's processes to end; kill what is left after 3 minutes. (Ray's
    two agents outlive a killed raylet by about a minute: they wait for a timeout.)"""
    deadline = time.monotonic() + 180
    while _session(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session(pid)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.mark.slow
def test_sigkill_of_the_driver_on_ray_then_resume(local_reference, tmp_path):
    """The CLI starts its own Ray; SIGKILL of the driver after the coarse round, then the
    same command: the store equals the local one, no duplicates, no Ray process left."""
    from optimlab.lab.search import COARSE

    store = tmp_path / cli.STORE_NAME
    coarse = 3 * len(COARSE)
    args = [*TINY, "--executor", "ray", "--workers", "2", "--no-report", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "optimlab", *args],
                            env=_env(OPTIMLAB_TEST_SLEEP="0.002"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while proc.poll() is None and _count(store) <= coarse:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        left = _reap(proc.pid)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it was killed"
    assert coarse < _count(store) < len(_runs(local_reference))
    assert left == [], "Ray processes outlived the killed driver"

    again = subprocess.Popen([sys.executable, "-m", "optimlab", *args], env=_env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = again.communicate(timeout=600)
    finally:
        left = _reap(again.pid)
    assert again.returncode == 0, err
    assert "(resumed)" in err and "executor: a local Ray instance" in err
    assert _runs(tmp_path) == _runs(local_reference)
    assert left == [], "the CLI left Ray processes behind"
