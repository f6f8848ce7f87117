"""What checking ``optimizer.state`` costs the fused step: the snapshot check alone vs the step.

torch.optim reads ``optimizer.state`` afresh at every step, so a user's edit between steps
takes effect; optimlab's cached plans check, at every step, that what they read is unchanged
(:mod:`optimlab.fused.state_snapshot`; in the steady state inside the C++ step helper's one
call). Per row: the median time of ``step()`` over windows of steps, and the median time of
the plan's check alone (``plan.snapshot.holds(opt.state)``) timed right after a step, when
the step's memory traffic has evicted the state's dicts from the caches (cold), and in a loop
(hot). One thread, float32.

    python benchmarks/state_check.py          # writes its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import step_speed  # noqa: E402
from markdown_section import write_table  # noqa: E402

import optimlab  # noqa: E402
from optimlab import fused  # noqa: E402

BEGIN, END = "<!-- state-check: begin -->", "<!-- state-check: end -->"
#: (label, optimizer, number of params, shape, one group per param)
SETS = [("AdamW, 10 x 32x32", "AdamW", 10, (32, 32), False),
        ("SGD, 1,000 x 1k", "SGD", 1000, (1000,), False),
        ("Adam, 1,000 x 1k", "Adam", 1000, (1000,), False),
        ("Adam, 200 groups of 1 x 100", "Adam", 200, (100,), True)]


def _window(fn, n) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def measure(name, count, shape, per_param_groups, reps) -> dict:
    params = [torch.nn.Parameter(torch.randn(*shape)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn_like(p)
    groups = [{"params": [p]} for p in params] if per_param_groups else params
    opt = getattr(optimlab, name)(groups, lr=1e-3)
    for _ in range(20):
        opt.step()
    plans = [fused._plans[opt][id(g)] for g in opt.param_groups]
    n = max(20, 20000 // count)

    def check():
        for plan in plans:
            plan.snapshot.holds(opt.state)

    def cold():
        opt.step()
        start = time.perf_counter()
        check()
        return (time.perf_counter() - start) * 1e6

    return {"step": statistics.median(_window(opt.step, n) for _ in range(reps)),
            "cold": statistics.median(cold() for _ in range(reps * 10)),
            "hot": statistics.median(_window(check, n) for _ in range(reps)),
            "helper": all(plan.gather is not None for plan in plans)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started, load = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    rows = []
    for label, name, count, shape, per_param in SETS:
        t = measure(name, count, shape, per_param, args.reps)
        rows.append(f"| {label} | {'C++ helper' if t['helper'] else 'Python'} | {t['step']:.1f} | "
                    f"{t['cold']:.1f} | {t['hot']:.1f} | {t['cold'] / t['step']:.3f} |")
        print(rows[-1], flush=True)
    write_table(
        args.out, BEGIN, END, "The state check: what reading optimizer.state afresh costs",
        f"Machine: {step_speed.machine()}. Run: {started}, load average {load:.1f} before. "
        f"`python benchmarks/state_check.py --reps {args.reps}`: one thread, float32; us per "
        "`step()` (median of windows) and of the plans' state check alone (median), cold = right "
        "after a step, hot = in a loop. `checked by`: the C++ step helper (steady state) or "
        "Python.",
        ["group", "checked by", "step us", "check us, cold", "check us, hot", "cold check / step"], rows)


if __name__ == "__main__":
    main()
