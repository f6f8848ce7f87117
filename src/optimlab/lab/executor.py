"""Executing a comparison's runs: in this process or in a pool of spawned worker processes
(the Ray executor, :mod:`.ray_executor`, subclasses :class:`Executor`), storing each record
(one transaction) as soon as it arrives, with a progress bar on long work.

Each process builds a problem once (:func:`_problem`); a worker whose parent dies exits, and
a pool that breaks (a worker killed, e.g. out of memory) raises :class:`SweepError` with the
finished runs kept in the store.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext

from . import runner
from .problems.base import Problem
from .spec import RunSpec
from .store import Store
from .wording import plural


class SweepError(RuntimeError):
    """The sweep could not go on (e.g. a worker process died); finished runs are kept."""


def default_workers() -> int:
    """Worker processes by default: the usable cores, capped at 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


# ------------------------------------------------------------------------ problems

def resolve(source: str) -> Problem:
    """A problem from a registry name or a ``"pkg.module:factory"`` source."""
    from . import problems

    if ":" in source:
        return problems.load_custom(source)
    return problems.get(source)


_PROBLEMS: dict = {}


def _problem(source: str) -> Problem:
    """Problems are built once per process (data generation can be costly)."""
    if source not in _PROBLEMS:
        _PROBLEMS[source] = resolve(source)
    return _PROBLEMS[source]


# ----------------------------------------------------------------------- execution

def _watch_parent(parent: int) -> None:
    # A worker whose parent was killed (SIGKILL) would otherwise wait forever.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C
    if hasattr(signal, "pthread_sigmask"):   # held back while spawning: see _sigint_held
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import torch

    torch.set_num_threads(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


@contextmanager
def _sigint_held():
    """Hold Ctrl-C back (blocked, not lost) in this thread while worker processes are
    spawned. They inherit the blocked signal, so a Ctrl-C during their start-up imports
    (before :func:`_init_worker` ignores it) prints no traceback from them; here it is
    delivered when the block lifts, as the usual KeyboardInterrupt."""
    if not hasattr(signal, "pthread_sigmask"):   # Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _work(spec: RunSpec, source: str):
    return runner.run(spec, _problem(source))


class Executor:
    """Runs specs not yet in ``store``: in this process (workers=1) or in a pool of
    spawned worker processes, storing each record as soon as it arrives.

    Subclasses (the Ray executor, :mod:`.ray_executor`) replace :meth:`_execute` and
    :meth:`close`; what to run (:meth:`pending`) and storing (:meth:`_keep`, only ever on
    this process) stay here.
    """

    #: How the runs are executed, for the store's meta and the phase log lines.
    name = "local"

    def __init__(self, store: Store, sources: dict, workers: int = 1, progress: bool = False,
                 problems: dict | None = None):
        self.store, self.sources, self.workers = store, sources, workers
        self.progress, self.problems = progress, dict(problems or {})
        self._pool = None
        #: {run_id: record} of the runs this executor finished (and stored).
        self.finished: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(cancel=exc_type is not None)

    def close(self, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in processes:  # runs in flight are lost; the store keeps finished ones
                p.terminate()
        else:
            pool.shutdown(wait=True)

    def pending(self, specs) -> list:
        """Specs to run: not stored yet, or stored as "error" (retried: an error stops a
        comparison, see ``sweep.raise_errors``, so that is once per command); duplicates
        once."""
        stored = self.store.statuses()
        seen, out = set(), []
        for spec in specs:
            rid = spec.run_id
            if rid not in seen and stored.get(rid, "error") == "error":
                seen.add(rid)
                out.append(spec)
        return out

    def run(self, specs, label: str = "runs") -> int:
        """Run the pending specs; returns how many were run."""
        todo = self.pending(specs)
        # Longest budgets first, so the last runs in flight are short ones.
        todo.sort(key=lambda s: -s.steps)
        if not todo:
            return 0
        with _progress(self.progress, label, len(todo)) as advance:
            self._execute(todo, advance)
        return len(todo)

    def describe(self) -> str:
        """The parallelism, for the phase log lines: "2 workers"."""
        return plural(self.workers, "worker")

    def _execute(self, todo, advance) -> None:
        """Run ``todo`` (specs not stored yet), calling :meth:`_keep` then ``advance``
        for each record as it arrives."""
        if self.workers <= 1:
            for spec in todo:
                problem = self.problems.get(spec.problem) or _problem(self.sources[spec.problem])
                self._keep(runner.run(spec, problem))
                advance()
        else:
            self._run_pool(todo, advance)

    def _keep(self, record) -> None:
        self.store.put(record)
        self.finished[record.run_id] = record

    def _run_pool(self, todo, advance) -> None:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                             initializer=_init_worker, initargs=(os.getpid(),))
        with _sigint_held():   # submit spawns the workers it needs
            futures = {self._pool.submit(_work, spec, self.sources[spec.problem])
                       for spec in todo}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    self._keep(future.result())
                    advance()
        except BrokenProcessPool:
            self.close(cancel=True)
            raise SweepError("a worker process died (out of memory?); finished runs are "
                             "kept in the store, re-run the same command to continue") from None


def _progress(enabled: bool, label: str, total: int):
    """A rich progress bar with ETA on stderr, or a no-op."""
    if not enabled:
        return nullcontext(lambda: None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    class _Bar:
        def __enter__(self):
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=Console(stderr=True),
                                transient=False)
            self.bar.__enter__()
            task = self.bar.add_task(label, total=total)
            return lambda: self.bar.advance(task)

        def __exit__(self, *exc):
            self.bar.__exit__(*exc)

    return _Bar()
