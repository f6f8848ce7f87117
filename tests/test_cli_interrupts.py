"""Stopping the command line part-way: Ctrl-C at start-up and while the worker pool
spawns, SIGTERM, a closed stdout pipe, and the report of a comparison that did not
finish. Each ends with at most one line from optimlab and never a traceback.

Ctrl-C is SIGINT to the whole process group. A process started from a non-interactive
shell may inherit SIGINT ignored, so the CLI is started through a tiny launcher that
restores the default first (what a terminal gives it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from optimlab.lab import cli, executor as executor_mod
from test_cli import TINY, _count, _env

ROOT = Path(__file__).resolve().parents[1]
#: Resets SIGINT to its default, then execs python with the remaining arguments.
DEFAULT_SIGINT = [sys.executable, "-c", "import os, signal, sys; "
                  "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"]


def _console_script() -> list:
    """python arguments that run the ``optimlab`` console script as pyproject.toml
    declares it (what pip's generated script does)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        module, func = tomllib.load(f)["project"]["scripts"]["optimlab"].split(":")
    return ["-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def _start(args, **env) -> subprocess.Popen:
    return subprocess.Popen([*DEFAULT_SIGINT, *args], env=_env(**env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    try:
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _group_gone(pgid: int, within: float = 10.0) -> bool:
    """Whether every process of the group (workers, resource tracker) has exited."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_at_start_up_is_one_line():
    """Ctrl-C while the console script imports torch (the first second or so): the
    one-line message and exit 130, not a KeyboardInterrupt traceback."""
    codes = []
    for delay in (0.25, 0.5, 0.8):
        proc = _start([*_console_script(), "problems"])
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        err = _finish(proc)
        assert "Traceback" not in err, err
        assert proc.returncode in (0, 130), err   # 0: it had already finished
        if proc.returncode == 130:
            assert err.startswith("optimlab: interrupted") and len(err.splitlines()) == 1, err
        codes.append(proc.returncode)
    assert 130 in codes, "every run finished before the Ctrl-C; start-up was not tested"


def _children(pid: int) -> list:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_while_workers_spawn_has_no_worker_traceback(tmp_path):
    """Ctrl-C reaches the worker processes while they start (importing torch, before
    their initializer runs): none prints a KeyboardInterrupt traceback or dies of it.
    The SIGINTs go to the workers alone first, so the parent does not stop them before
    they could print; then Ctrl-C to the whole group ends the command cleanly."""
    proc = _start(["-m", "optimlab", *TINY, "--workers", "2", "--out", str(tmp_path)],
                  OPTIMLAB_TEST_SLEEP="0.002")
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("phase sweep, round 1"):
            break
    hit = set()
    end = time.monotonic() + 1.5   # spawning and starting a worker takes ~1 s here
    while time.monotonic() < end and proc.poll() is None:
        for pid in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
                hit.add(pid)
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    err = "".join(lines) + _finish(proc)
    assert len(hit) >= 2, "no worker was started"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130, err
    assert err.rstrip().endswith(f"(re-run the same command to continue, or `optimlab report "
                                 f"{tmp_path}` for a report of them so far)"), err
    assert _group_gone(proc.pid)


def test_sigterm_stops_cleanly(tmp_path):
    """SIGTERM (to the parent only, as `kill PID` sends it): one line, exit 143, the
    workers stopped, no leaked-semaphore warning from the resource tracker."""
    store = tmp_path / cli.STORE_NAME
    proc = _start(["-m", "optimlab", *TINY, "--workers", "2", "--out", str(tmp_path)],
                  OPTIMLAB_TEST_SLEEP="0.002")
    try:
        while proc.poll() is None and _count(store) == 0:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGTERM)
        err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "optimlab: terminated; the store keeps every finished run" in err
    assert "Traceback" not in err and "leaked" not in err, err
    assert _group_gone(proc.pid), "a worker outlived the parent"
    assert _count(store) > 0


SMALL = ["compare", "--problems", "rosenbrock", "--optimizers", "sgd", "--lrs", "0.1",
         "--seeds", "1", "--steps", "2", "--workers", "1", "--no-report", "--out", "{out}"]


@pytest.mark.parametrize("args", [["problems"], SMALL, [*SMALL, "--json"]],
                         ids=["problems", "compare (table)", "compare --json"])
def test_a_closed_stdout_pipe_is_quiet(tmp_path, args):
    """`optimlab ... | head`: the reader is gone before optimlab writes; no message, the
    conventional exit 141 (128 + SIGPIPE)."""
    args = [a.format(out=tmp_path) for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "optimlab", *args], env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()   # no reader: optimlab's first write to stdout fails with EPIPE
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err, err
    assert "Exception ignored" not in err, err


def test_an_interrupted_comparison_reports_as_incomplete(tmp_path, monkeypatch, capsys):
    """Ctrl-C in sweep round 1, then `optimlab report`: the report says it is incomplete
    and where it stopped, its answer is provisional and its protocol claims no reruns;
    finishing the comparison (the same command) makes it final."""
    keep, kept = executor_mod.Executor._keep, []

    def interrupted_keep(self, record):
        keep(self, record)
        kept.append(record)
        if len(kept) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(executor_mod.Executor, "_keep", interrupted_keep)
    argv = [*TINY, "--workers", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 130
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "did not finish" in capsys.readouterr().err
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert summary.splitlines()[4].startswith("> **⚠ Incomplete:**")
    assert "during phase sweep, round 1, with 4 runs stored" in summary
    assert "Rerun the same command to finish it: optimlab compare --problem" in summary
    assert "## Answer (provisional" in summary and "\n## Answer\n" not in summary
    assert page.index("⚠ Incomplete") < page.index('<section id="answer"')
    assert "The answer (provisional)" in page
    for text in (summary, page):
        assert "were rerun" not in text and "ran the same learning-rate search" not in text

    monkeypatch.setattr(executor_mod.Executor, "_keep", keep)
    assert cli.main(argv) == 0
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "Incomplete" not in summary and "\n## Answer\n" in summary
    assert "were rerun" in summary
