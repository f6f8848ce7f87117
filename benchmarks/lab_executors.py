"""The lab's executors side by side: the local process pool against Ray tasks.

One driver process holds both executors warm (the pool's worker processes spawned, a
local Ray instance started; each has built the problems in its workers) and runs the
same batch of runs with each, interleaved, into a fresh store each time:

* ``slice``: a slice of the default suite (rosenbrock, ill-conditioned, five-points,
  digits-logistic, digits-mlp) x SGD, Adam, RMSprop x lrs 1e-3, 1e-2, 1e-1, seed 0, each
  problem's default budget: what a comparison's runs cost;
* ``1-step``: the same runs with 1 step each and seeds 0..4, which leaves little but the
  per-run cost of the executor (send the spec, run, send the record back, store it).

Both use ``--workers 2`` (2 runs in flight). Reported: runs per second (wall time,
median of the repetitions), the ratio Ray / local, and the extra wall time per run on
Ray; plus the start-up of each executor (pool spawn, ``ray.init`` and the first task).

    python benchmarks/lab_executors.py            # writes the section in BENCHMARKS.md
    python benchmarks/lab_executors.py --quick    # 1 repetition, prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from markdown_section import replace_section
from optimlab.lab import executor, ray_executor
from optimlab.lab.spec import RunSpec
from optimlab.lab.store import Store

MARK_BEGIN = "<!-- lab_executors: begin -->"
MARK_END = "<!-- lab_executors: end -->"

SLICE = ["rosenbrock", "ill-conditioned", "five-points", "digits-logistic", "digits-mlp"]
OPTIMIZERS = ["sgd", "adam", "rmsprop"]
LRS = [1e-3, 1e-2, 1e-1]
WORKERS = 2


def workloads(problems: dict) -> dict:
    full = [RunSpec(p, o, lr, 0, problems[p].default_steps)
            for p in problems for o in OPTIMIZERS for lr in LRS]
    return {"slice": full, "1-step": [RunSpec(s.problem, s.optimizer, s.lr, seed, 1)
                                      for s in full for seed in range(5)]}


def timed_run(ex, specs, path: Path) -> float:
    ex.store = Store(path)
    try:
        t0 = time.perf_counter()
        assert ex.run(specs) == len(specs)
        return time.perf_counter() - t0
    finally:
        ex.store.close()
        path.unlink()


def measure(reps: int, tmp: Path) -> dict:
    problems = {name: executor._problem(name) for name in SLICE}
    sources = {name: name for name in SLICE}
    work = workloads(problems)
    warm = [RunSpec(s.problem, s.optimizer, s.lr, 99, 1) for s in work["slice"]]
    startup, executors = {}, {}
    for name in ("local", "ray"):
        t0 = time.perf_counter()
        if name == "local":
            ex = executor.Executor(None, sources, WORKERS, problems=problems)
        else:
            ex = ray_executor.RayExecutor(None, sources, WORKERS, problems=problems)
            ex.connect()
        executors[name] = ex
        # The first batch spawns the workers and builds the problems in them.
        timed_run(ex, warm, tmp / "warm.sqlite")
        startup[name] = time.perf_counter() - t0
        print(f"{name}: ready in {startup[name]:.1f} s", flush=True)
    got = {(w, e): [] for w in work for e in executors}
    try:
        for rep in range(reps):
            for w, specs in work.items():
                for e, ex in executors.items():
                    got[w, e].append(timed_run(ex, specs, tmp / f"{w}-{e}.sqlite"))
                print(f"rep {rep + 1} {w}: " + "  ".join(
                    f"{e} {got[w, e][-1]:.2f} s" for e in executors), flush=True)
    finally:
        for ex in executors.values():
            ex.close()
    return {"startup": startup, "runs": {w: len(s) for w, s in work.items()},
            "wall": {k: statistics.median(v) for k, v in got.items()},
            "all": got}


def table(res: dict) -> str:
    out = ["| runs | n | local: runs/s | Ray: runs/s | Ray ÷ local | wall per run, local → Ray "
           "| batch wall, each rep: local / Ray (s) |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for w, n in res["runs"].items():
        lo, ra = res["wall"][w, "local"], res["wall"][w, "ray"]
        reps = ", ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(res["all"][w, "local"],
                                                               res["all"][w, "ray"]))
        out.append(f"| {w} | {n} | {n / lo:.1f} | {n / ra:.1f} | {lo / ra:.2f}× | "
                   f"{lo / n * 1e3:.0f} → {ra / n * 1e3:.0f} ms | {reps} |")
    s = res["startup"]
    out.append(f"| start-up (first batch included) | | {s['local']:.1f} s | "
               f"{s['ray']:.1f} s | | | |")
    return "\n".join(out)


def write(res: dict, reps: int, path: str, load: float) -> None:
    body = "\n".join([
        MARK_BEGIN,
        "## Lab executors: local process pool vs Ray",
        "",
        f"`python benchmarks/lab_executors.py` — one driver, both executors warm, "
        f"{WORKERS} runs in flight each (`--workers {WORKERS}`), a fresh store per batch, "
        f"median wall time of {reps} interleaved repetitions. `slice`: "
        f"{', '.join(SLICE)} × {', '.join(OPTIMIZERS)} × lrs {', '.join(map(str, LRS))}, "
        f"each problem's default budget; `1-step`: the same runs with 1 step and seeds "
        f"0..4, i.e. little but the executor's own cost per run. `start-up`: spawning the "
        f"pool or starting Ray, then a first batch of 1-step runs (workers start, import "
        f"torch, build the problems). Ray {_ray_version()} (a local instance, 2 "
        f"CPUs, no dashboard), torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        table(res),
        "",
        f"Load average during the run: {load:.1f} on {os.cpu_count()} CPUs"
        + (" — the machine was shared, so the figures are inflated and noisy; rerun on an "
           "idle machine." if load > 2 else "."),
        "",
        MARK_END,
    ])
    replace_section(path, MARK_BEGIN, MARK_END, body)


def _ray_version() -> str:
    import ray
    return ray.__version__


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, print only")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..",
                                                  "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    reps = 1 if args.quick else args.reps
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(reps, Path(tmp))
    load = max(load0, os.getloadavg()[0])
    print(table(res))
    if not args.quick:
        write(res, reps, args.out, load)
        print(f"written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
