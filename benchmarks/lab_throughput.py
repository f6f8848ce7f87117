"""Lab throughput: the lab's runner against a plain PyTorch training loop, same problems.

For each problem of the default suite, one process (one thread, as the lab's workers)
times, interleaved over a few repetitions:

* ``lab``: ``optimlab.lab.runner.run`` of Adam at lr 1e-2, seed 0, the problem's default
  step budget: seeded model, ~``runner.EVAL_POINTS`` (25) evaluation points (train and
  val loss), the final test evaluation, timings and the record;
* ``lab, 50 evals``: the same run evaluated at ~50 points, as the lab did before
  (``eval_every = steps // 50``), so the cost of the evaluation points shows side by side;
* ``lab, no evals``: the same run with evaluations only at steps 0 and the end
  (``eval_every = steps``), which isolates the evaluation cost;
* ``plain``: a textbook loop over the same model and batches with ``torch.optim.Adam``:
  zero_grad, loss, backward, step; one validation evaluation at the end;
* ``plain, optimlab``: the same loop with ``optimlab.create("adam", ...)``.

Reported: runs per second and training steps per second (process CPU time, which a
shared machine disturbs less than wall time; wall time in brackets), medians over the
repetitions. Problem construction (data, optima) is timed once per process and reported
separately: the lab pays it once per worker process, not per run.

    python benchmarks/lab_throughput.py            # writes the section in BENCHMARKS.md
    python benchmarks/lab_throughput.py --quick    # 1 repetition, prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

import optimlab
from markdown_section import replace_section
from optimlab.lab import problems, runner
from optimlab.lab.spec import RunSpec

MARK_BEGIN = "<!-- lab_throughput: begin -->"
MARK_END = "<!-- lab_throughput: end -->"


def plain_loop(problem, steps: int, make_opt) -> None:
    torch.manual_seed(0)
    model = problem.model(0)
    model.train()
    opt = make_opt(model.parameters())
    for step in range(steps):
        batch = problem.batch(step, 0)
        opt.zero_grad()
        loss = problem.loss(model, batch)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        problem.evaluate(model, "val")


def timed(fn) -> tuple:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def measure(names, reps: int) -> list:
    torch.set_num_threads(1)
    rows = []
    for name in names:
        c0, w0 = time.process_time(), time.perf_counter()
        problem = problems.get(name)
        build = (time.process_time() - c0, time.perf_counter() - w0)
        steps = problem.default_steps
        spec = RunSpec(name, "adam", 1e-2, 0, steps)
        methods = {
            "lab": lambda: runner.run(spec, problem),
            "lab, 50 evals": lambda: runner.run(
                RunSpec(name, "adam", 1e-2, 0, steps, eval_every=max(1, steps // 50)),
                problem),
            "lab, no evals": lambda: runner.run(
                RunSpec(name, "adam", 1e-2, 0, steps, eval_every=steps), problem),
            "plain": lambda: plain_loop(problem, steps,
                                        lambda ps: torch.optim.Adam(ps, lr=1e-2)),
            "plain, optimlab": lambda: plain_loop(
                problem, steps, lambda ps: optimlab.create("adam", ps, lr=1e-2)),
        }
        for fn in methods.values():   # warm-up: kernels, caches, lazy imports
            fn()
        got = {m: [] for m in methods}
        for _ in range(reps):
            for m, fn in methods.items():
                got[m].append(timed(fn))
        row = {"problem": name, "steps": steps, "build": build}
        for m, ts in got.items():
            row[m] = (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
        rows.append(row)
        print(f"{name:16s} " + "  ".join(f"{m}: {row[m][0] * 1e3:7.1f} ms"
                                         for m in methods), flush=True)
    return rows


def table(rows) -> str:
    methods = ("lab", "lab, 50 evals", "lab, no evals", "plain", "plain, optimlab")
    out = ["| problem | steps | build (s) | " + " | ".join(
        f"{m}: runs/s (steps/s)" for m in methods) + " | lab ÷ plain | lab ÷ lab, 50 evals |",
        "|---|---:|---:|" + "---:|" * len(methods) + "---:|---:|"]
    tot = {m: 0.0 for m in methods}
    steps_total = 0
    for r in rows:
        cells = []
        for m in methods:
            cpu, wall = r[m]
            tot[m] += cpu
            cells.append(f"{1 / cpu:.2f} ({r['steps'] / cpu:,.0f})")
        steps_total += r["steps"]
        out.append(f"| {r['problem']} | {r['steps']} | {r['build'][0]:.2f} | "
                   + " | ".join(cells) + f" | {r['lab'][0] / r['plain'][0]:.2f}× | "
                   f"{r['lab'][0] / r['lab, 50 evals'][0]:.2f}× |")
    n = len(rows)
    out.append("| **all (one run each)** | " + f"{steps_total} | "
               + f"{sum(r['build'][0] for r in rows):.2f} | "
               + " | ".join(f"{n / tot[m]:.2f} ({steps_total / tot[m]:,.0f})"
                            for m in methods)
               + f" | {tot['lab'] / tot['plain']:.2f}× | "
               f"{tot['lab'] / tot['lab, 50 evals']:.2f}× |")
    return "\n".join(out)


def write(rows, reps: int, path: str, load: float) -> None:
    body = "\n".join([
        MARK_BEGIN,
        "## Lab throughput: the lab's runner vs a plain PyTorch loop",
        "",
        f"`python benchmarks/lab_throughput.py` — one process, one thread, Adam at lr 1e-2, "
        f"seed 0, each problem's default budget; median CPU time of {reps} interleaved "
        f"repetitions (the machine is shared, so CPU time rather than wall time). "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs. `lab`: the full run (≈{runner.EVAL_POINTS + 1} evaluations "
        f"of train and val loss, final test evaluation, record); `lab, 50 evals`: the same "
        f"with ≈51 evaluations, as before; `lab, no evals`: evaluations at the start "
        f"and the end only; `plain`: zero_grad/loss/backward/step with torch.optim.Adam "
        f"and one final validation pass; `plain, optimlab`: the same with optimlab's Adam. "
        f"`build`: constructing the problem (data, optimum), paid once per worker process.",
        "",
        table(rows),
        "",
        f"Load average during the run: {load:.1f} on {os.cpu_count()} CPUs"
        + (": the machine was shared, the figures are inflated and noisy (differences under "
           "~20% between columns are not meaningful); rerun on an idle machine."
           if load > 2 else " (idle: nothing else ran)."),
        "",
        MARK_END,
    ])
    replace_section(path, MARK_BEGIN, MARK_END, body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, print only")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--problems", default=",".join(problems.DEFAULT_SUITE))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..",
                                                  "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    reps = 1 if args.quick else args.reps
    load0 = os.getloadavg()[0]
    rows = measure(args.problems.split(","), reps)
    load = max(load0, os.getloadavg()[0])
    print(table(rows))
    if not args.quick:
        write(rows, reps, args.out, load)
        print(f"written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
