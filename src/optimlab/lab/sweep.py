"""The sweep protocol, fair by construction, and its (parallel, resumable) execution.

Phase "sweep": every (problem, optimizer, lr) on one shared log-spaced lr grid, seed 0,
so every optimizer sees the same grid, initial weights and batch order. The best lr of
each (problem, optimizer) is then chosen on validation loss (``analysis.select_best``;
the test split is never used) and phase "seeds" reruns it with seeds 1..N-1. Only the
learning rate is tuned; every other hyperparameter stays at its default.

Execution skips run ids already in the store and stores each record (one transaction)
as soon as it arrives, so an interrupted sweep resumes where it stopped and the results
do not depend on the number of worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field

from . import runner
from .problems.base import Problem
from .spec import RunSpec
from .store import Store
from .wording import plural

#: The default lr grid: log-spaced from 1e-4 to 1 at decade spacing (5 values); half-decade
#: spacing (9) does not fit the 3-minute default budget on 2 cores.
GRID_LO, GRID_HI, PER_DECADE = 1e-4, 1.0, 1

#: beta2 values of the bias-correction experiment (Kingma & Ba 2015, Fig. 4).
BIAS_BETA2 = (0.99, 0.999, 0.9999)


class SweepError(RuntimeError):
    """The sweep could not go on (e.g. a worker process died); finished runs are kept."""


def lr_grid(lo: float = GRID_LO, hi: float = GRID_HI, per_decade: int = PER_DECADE) -> list:
    """Log-spaced learning rates from ``lo`` to ``hi`` with ``per_decade`` points per decade."""
    a, b = math.log10(lo), math.log10(hi)
    n = round((b - a) * per_decade)
    # 3 significant digits: 10**-3.5 is shown and stored as 3.16e-04, the same everywhere.
    return [float(f"{10 ** (a + (b - a) * i / n):.3g}") for i in range(n + 1)]


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


# ---------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """What a comparison runs.

    sources: {problem name: source} (registry name or "pkg.module:factory");
    steps: {problem name: step budget}; lrs: the shared grid; seeds: total seeds.
    """

    sources: dict
    optimizers: list
    lrs: list
    seeds: int
    steps: dict
    schedule: str = "constant"
    grid_note: str = ""
    problems: dict = field(default_factory=dict, repr=False)   # name -> Problem

    @classmethod
    def build(cls, sources, optimizers, lrs=None, seeds=3, steps=None, schedule="constant"):
        """Resolve problem sources (in this process) and fill in defaults; ``steps`` None
        means each problem's default budget."""
        problems = {}
        for source in sources:
            problem = _problem(source)
            if problem.name in problems and problems[problem.name][0] != source:
                raise ValueError(f"two problems are named {problem.name!r} "
                                 f"({problems[problem.name][0]} and {source})")
            problems[problem.name] = (source, problem)
        custom = lrs is not None
        lrs = sorted(float(lr) for lr in (lrs if custom else lr_grid()))
        note = ("custom" if custom else
                f"log-spaced {GRID_LO:g}..{GRID_HI:g}, {PER_DECADE} per decade")
        return cls(sources={n: s for n, (s, _) in problems.items()},
                   optimizers=list(optimizers), lrs=lrs, seeds=int(seeds),
                   steps={n: int(steps or p.default_steps) for n, (_, p) in problems.items()},
                   schedule=schedule, grid_note=note,
                   problems={n: p for n, (_, p) in problems.items()})

    def sweep_specs(self) -> list:
        """Phase "sweep": every problem x optimizer x lr, seed 0."""
        return [RunSpec(problem=p, optimizer=o, lr=lr, seed=0, steps=self.steps[p],
                        schedule=self.schedule, phase="sweep")
                for p in self.sources for o in self.optimizers for lr in self.lrs]

    def seed_specs(self, selections: dict) -> list:
        """Phase "seeds": the selected lr of each (problem, optimizer), seeds 1..N-1."""
        out = []
        for p in self.sources:
            for o in self.optimizers:
                sel = selections.get((p, o))
                if sel is None or sel.lr is None:
                    continue
                out += [RunSpec(problem=p, optimizer=o, lr=sel.lr, seed=s, steps=self.steps[p],
                                schedule=self.schedule, phase="seeds")
                        for s in range(1, self.seeds)]
        return out

    def bias_specs(self) -> list:
        """Phase "bias-correction" (Adam paper Fig. 4 analogue): Adam with and without bias
        correction for each beta2 in BIAS_BETA2, across the grid, on every VAE problem."""
        from .analysis import bias_correction_specs

        if "adam" not in self.optimizers:
            return []
        return [spec for p, problem in self.problems.items() if problem.kind == "vae"
                for spec in bias_correction_specs(p, self.lrs, BIAS_BETA2, self.steps[p],
                                                  schedule=self.schedule)]

    def all_specs(self, selections: dict) -> list:
        """Every spec of this comparison, all phases."""
        from .experiments import specs as experiment_specs

        return (self.sweep_specs() + self.seed_specs(selections) + self.bias_specs()
                + experiment_specs(self, selections))

    def describe(self) -> dict:
        """The plan as JSON-ready metadata."""
        budgets = set(self.steps.values())
        info = {n: {"kind": p.kind, "description": p.description, "optimum": p.optimum,
                    "target": p.target, "metric_name": p.metric_name}
                for n, p in self.problems.items()}
        return {"problems": list(self.sources), "sources": dict(self.sources),
                "problem_info": info, "bias_correction_beta2": list(BIAS_BETA2),
                "optimizers": list(self.optimizers),
                "grid": list(self.lrs), "grid_spacing": self.grid_note, "seeds": self.seeds,
                # One number when every problem has the same budget, else None (see
                # steps_per_problem): the report reads "steps" as an int.
                "steps": budgets.pop() if len(budgets) == 1 else None,
                "steps_per_problem": dict(self.steps), "schedule": self.schedule,
                "hyperparameters": "defaults; only the learning rate is tuned",
                "selection": "lowest final validation loss of the seed-0 sweep; "
                             "lrs on the grid's edge are flagged"}


# ----------------------------------------------------------------------- execution

def _watch_parent(parent: int) -> None:
    # A worker whose parent was killed (SIGKILL) would otherwise wait forever.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(parent: int) -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _work(spec: RunSpec, source: str):
    return runner.run(spec, _problem(source))


class Executor:
    """Runs specs not yet in ``store``: in this process (workers=1) or in a pool of
    spawned worker processes, storing each record as soon as it arrives."""

    def __init__(self, store: Store, sources: dict, workers: int = 1, progress: bool = False,
                 problems: dict | None = None):
        self.store, self.sources, self.workers = store, sources, workers
        self.progress, self.problems = progress, dict(problems or {})
        self._pool = None

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
        """Specs to run: not stored yet, or stored as "error" (retried); duplicates once."""
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
            if self.workers <= 1:
                for spec in todo:
                    problem = self.problems.get(spec.problem) or _problem(
                        self.sources[spec.problem])
                    self.store.put(runner.run(spec, problem))
                    advance()
            else:
                self._run_pool(todo, advance)
        return len(todo)

    def _run_pool(self, todo, advance) -> None:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                             initializer=_init_worker, initargs=(os.getpid(),))
        futures = {self._pool.submit(_work, spec, self.sources[spec.problem])
                   for spec in todo}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    self.store.put(future.result())
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


def select(store: Store, specs) -> dict:
    """Best lr per (problem, optimizer) from the stored sweep runs of ``specs``."""
    from .analysis import select_best

    wanted = {s.run_id for s in specs}
    return select_best([r for r in store.records("sweep") if r.run_id in wanted])


def compare(plan: Plan, store: Store, workers: int = 1, progress: bool = False,
            log=None) -> dict:
    """The whole protocol: sweep, select on validation, rerun the best with more seeds.

    Returns the selections ``{(problem, optimizer): Selection}``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    sweep = plan.sweep_specs()
    # The report shows this comparison's runs only (an --out directory may hold older ones).
    store.set_meta("runs", sorted(s.run_id for s in sweep + plan.bias_specs()))
    with Executor(store, plan.sources, workers, progress, plan.problems) as ex:
        n = len(ex.pending(sweep))
        log(f"phase sweep: {plural(len(sweep), 'run')} ({len(sweep) - n} already stored), "
            f"{plural(len(plan.lrs), 'lr')} x {plural(len(plan.optimizers), 'optimizer')} x "
            f"{plural(len(plan.sources), 'problem')}, {plural(workers, 'worker')}")
        ex.run(sweep, "sweep")
        selections = select(store, sweep)
        seeds = plan.seed_specs(selections)
        store.set_meta("runs", sorted(s.run_id for s in plan.all_specs(selections)))
        if seeds:
            n = len(ex.pending(seeds))
            log(f"phase seeds: {plural(len(seeds), 'run')} ({len(seeds) - n} already stored), "
                f"seeds 1..{plan.seeds - 1} at the selected lr")
            ex.run(seeds, "seeds")
        bias = plan.bias_specs()
        if bias:
            n = len(ex.pending(bias))
            log(f"phase bias-correction: {plural(len(bias), 'run')} ({len(bias) - n} already stored), "
                f"Adam with/without bias correction, beta2 in {list(BIAS_BETA2)}")
            ex.run(bias, "bias-correction")
        # Phases "schedules" and "layerwise" (claims 2, 9, 10) at the final selections.
        from . import experiments
        experiments.run(plan, selections, ex, log)
        store.set_meta("runs", sorted(s.run_id for s in plan.all_specs(selections)))
    return selections
