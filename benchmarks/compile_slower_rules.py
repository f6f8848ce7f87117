"""LAMB and RAdam inside a compiled function: their traced step vs their eager step as one op.

Inductor's CPU code recomputes their bias corrections (``beta ** step``, a ``std::pow`` per
vector of 16 floats) in every element loop, so their traced step (``traced_reference``) costs
more per element than their eager one; the eager step as one op in the graph
(``optimlab::group_step``) costs more per tensor (Dynamo guards and Inductor's wrapper checks
every param, grad and state tensor). ``traced_reference.TRACED_SLOWER`` (a limit on the mean
elements per param, per rule) chooses between them; this measures both on either side of it.

Each row: a ``fullgraph=True`` function that calls ``opt.step()``, compiled with Inductor,
float32, one thread, timed with the thread's CPU time over windows of 20 steps (median of 7,
interleaved with the eager step), for LAMB (``MODE = "kernel"``) and RAdam (``MODE =
"printed"``, where its C kernel op does not run: no compiler, other devices).

    python benchmarks/compile_slower_rules.py          # writes its section of BENCHMARKS.md
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

from optimlab.fused import compiled, traced_reference  # noqa: E402
from optimlab.registry import lookup  # noqa: E402

BEGIN, END = "<!-- compile-slower-rules: begin -->", "<!-- compile-slower-rules: end -->"
SETS = [(10, 32), (40, 64), (10, 128), (40, 128), (20, 256)]
RULES = {"lamb": "kernel", "radam": "printed"}


def _timed(fn, steps=20) -> float:
    t = time.thread_time()
    for _ in range(steps):
        fn()
    return (time.thread_time() - t) / steps * 1e6


def _traced_step(opt) -> None:  # two functions: two code objects, two Dynamo caches
    opt.step()


def _op_step(opt) -> None:
    opt.step()


def measure(name: str, n: int, side: int, reps: int, limits: dict) -> dict:
    """us per step: eager, traced and as the op, for ``n`` params of ``side`` x ``side``."""
    entry = lookup(name)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(side, side, generator=gen) for _ in range(n)]
    grads = [torch.randn(side, side, generator=gen) for _ in range(n)]
    out, runs = {}, {}
    torch._dynamo.reset()
    compiled.MODE = RULES[name]
    for how, limit in (("eager", None), ("traced", float("inf")), ("op", 0)):
        ps = [b.clone().requires_grad_() for b in base]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt = entry.build(ps, lr=entry.test_lr)
        if limit is None:
            runs[how] = opt.step
            continue
        traced_reference.TRACED_SLOWER = {**limits, name: limit}
        step = torch.compile(_traced_step if how == "traced" else _op_step, fullgraph=True)
        for _ in range(3):  # compiles now, with this threshold; its guards hold from then on
            step(opt)
        runs[how] = lambda step=step, opt=opt: step(opt)
    times = {how: [] for how in runs}
    for rep in range(reps):
        for how in list(runs)[rep % 3:] + list(runs)[:rep % 3]:
            times[how].append(_timed(runs[how]))
    for how, ts in times.items():
        out[how] = statistics.median(ts)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    limits, mode = dict(traced_reference.TRACED_SLOWER), compiled.MODE
    started, load = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    rows = []
    try:
        for name in RULES:
            for n, side in SETS:
                t = measure(name, n, side, args.reps, limits)
                best = "traced" if t["traced"] < t["op"] else "op"
                chosen = "traced" if side * side <= limits[name] else "op"
                rows.append(f"| {name} | {n} x {side}x{side} | {side * side} | {t['eager']:.0f} | "
                            f"{t['traced']:.0f} | {t['op']:.0f} | {t['traced'] / t['eager']:.2f} | "
                            f"{t['op'] / t['eager']:.2f} | {best} | {chosen} |")
                print(rows[-1], flush=True)
    finally:
        traced_reference.TRACED_SLOWER, compiled.MODE = limits, mode
    write_table(
        args.out, BEGIN, END, "torch.compile: LAMB and RAdam traced vs as one op",
        f"Machine: {step_speed.machine()}. Run: {started}, load "
        f"average {load:.1f} before. `python benchmarks/compile_slower_rules.py --reps {args.reps}`: a "
        "`fullgraph=True` function calling `opt.step()`, Inductor, float32; us per step, medians of "
        "interleaved windows. `chosen`: what `traced_reference.TRACED_SLOWER` "
        f"(the mean elements per param up to which a rule is traced: {limits}) picks.",
        ["rule", "params", "elements per param", "eager us", "traced us", "as the op us",
         "traced / eager", "op / eager", "faster", "chosen"], rows)


if __name__ == "__main__":
    main()
