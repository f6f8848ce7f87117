"""Step speed without a C compiler: optimlab's multi-tensor (foreach) path vs torch.optim.

``OPTIMLAB_CC`` / ``OPTIMLAB_CXX`` point nowhere and the kernel cache is an empty
temporary directory, as in a ``python:slim`` image: every step takes the multi-tensor
path printed from the traced graph (:mod:`optimlab.fused.foreach`), or, for params of
at least ``torch_kernels.MIN_NUMEL`` elements whose rule and flags torch ships as a fused
CPU kernel (Adam, AdamW, SGD, Adagrad), that kernel (:mod:`optimlab.fused.torch_kernels`);
Adafactor, not element-wise, runs its traced graph as batched torch operations
(:mod:`optimlab.fused.passes_torch`). For every registry class with a
torch.optim twin (``TORCH_ENTRIES``; default flags) on mixes A and C of ``step_speed.py``,
one process times, interleaved on the same param/grad tensors, optimlab's default
``step()``, optimlab's per-tensor reference path (``foreach=False``, what ran before the
multi-tensor path existed; mix C only, it is slow on A) and torch.optim's for-loop,
foreach and fused implementations where torch has them, and an in-place probe
``a.add_(b)`` on flat tensors as large as the mix (12 bytes per element: the bandwidth the
machine gives right now). ``vs torch best`` is the median of per-repetition ratios (fastest
torch implementation, by median, / optimlab; >1: optimlab faster); ``roofline`` is the bytes
the rule must move per step (its traced graph's per-element reads and writes, as
``step_speed.py`` counts them; one pass over param, grad and state for Adafactor) over the
probe's bandwidth and the step's time, for optimlab and for torch's best (1.0: the step
runs at the probe's bandwidth, and no implementation of the rule can be much faster).

    python benchmarks/no_compiler.py           # mixes A and C, writes its section of BENCHMARKS.md
    python benchmarks/no_compiler.py --quick   # small mixes, prints only
    python benchmarks/no_compiler.py --reps 5  # fewer repetitions
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

_CACHE = tempfile.TemporaryDirectory()
os.environ.update(OPTIMLAB_CC="/nonexistent/cc", OPTIMLAB_CXX="/nonexistent/c++", OPTIMLAB_CACHE=_CACHE.name)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import step_speed
from markdown_section import replace_section  # noqa: E402

from optimlab import fused  # noqa: E402
from optimlab.fused import foreach, torch_kernels  # noqa: E402
from optimlab.registry import TORCH_ENTRIES  # noqa: E402

BEGIN, END = "<!-- no-compiler: begin -->", "<!-- no-compiler: end -->"


def bench_entry(entry, params, probe, reps, reference: bool):
    """({method: [seconds per repetition]}, bytes the rule must move), methods rotated so
    none always goes first."""
    ours = entry.build(params)
    methods = {"optimlab": ours.step, "probe": probe}
    if reference:
        ref = entry.build(params, foreach=False)
        methods["optimlab reference"] = ref.step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "fused kernel unavailable": expected
        for step in methods.values():
            step()
            step()  # a lazily created state (SGD's momentum buffer) changes the program once
    plans = fused._plans.get(ours, {})
    assert all(p.kernel_errors or not p.buckets for p in plans.values()), "the C kernel ran"
    if ours.rule.elementwise:
        assert foreach._plans.get(ours) or torch_kernels._partitions.get(ours), "not the foreach path"
    for name, opt in step_speed.torch_variants(entry, params, {}).items():
        methods[f"torch {name}"] = opt.step
    names, times = list(methods), {}
    for rep in range(reps):
        for i in range(len(names)):
            n = names[(i + rep) % len(names)]
            times.setdefault(n, []).append(step_speed.timed(methods[n]))
    return times, step_speed.must_touch(ours, ours.param_groups[0])


def summarize(times, nbytes, nelem) -> dict:
    med = {n: statistics.median(v) for n, v in times.items()}
    torch_names = [n for n in med if n.startswith("torch ")]
    best = min(torch_names, key=med.get)
    ratios = [tb / to for tb, to in zip(times[best], times["optimlab"])]

    def roofline(name):  # per repetition: the probe and the step timed back to back
        return statistics.median(nbytes * tp / (12 * nelem * t) for tp, t in zip(times["probe"], times[name]))

    return {**med, "best": best, "vs_best": statistics.median(ratios), "iqr": step_speed._quartiles(ratios),
            "frac": roofline("optimlab"), "frac_best": roofline(best), "bw": 12 * nelem / med["probe"] / 1e9}


def fmt(x) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


HEADER = ("| mix | optimizer | optimlab ms | optimlab reference ms | torch for-loop ms | "
          "torch foreach ms | torch fused ms | torch best | vs torch best (IQR) | "
          "roofline optimlab / torch best | probe GB/s |")


def row(mix, name, r) -> str:
    return (f"| {mix} | {name} | {fmt(r['optimlab'])} | {fmt(r.get('optimlab reference'))} | "
            f"{fmt(r.get('torch for-loop'))} | {fmt(r.get('torch foreach'))} | {fmt(r.get('torch fused'))} | "
            f"{r['best'][6:]} | {r['vs_best']:.2f}x ({r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}) | "
            f"{r['frac']:.2f} / {r['frac_best']:.2f} | {r['bw']:.1f} |")


def run(mixes, reps, scale, only=()) -> list:
    lines = []
    for mix in mixes:
        title, shapes_fn = step_speed.MIXES[mix]
        shapes = [tuple(max(1, s // scale) for s in shape) for shape in shapes_fn()]
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        nelem = sum(p.numel() for p in params)
        a, b = torch.randn(nelem), torch.randn(nelem)
        probe = lambda: a.add_(b)  # noqa: E731
        print(f"\n== mix {mix}: {title}, {reps[mix]} reps\n{HEADER}", flush=True)
        for entry in TORCH_ENTRIES:
            if only and entry.name not in only:
                continue
            times, nbytes = bench_entry(entry, params, probe, reps[mix], mix == "C")
            line = row(mix, entry.name, summarize(times, nbytes, nelem))
            lines.append(line)
            print(line, flush=True)
    return lines


def write_section(path, lines, started, load, wall, notes=()) -> None:
    vs = [float(line.split("|")[9].split("x")[0]) for line in lines]
    section = [BEGIN, "## No C compiler: the multi-tensor (foreach) path", "",
               f"Machine: {step_speed.machine()}.",
               f"Run: {started}, {wall / 60:.1f} min, load average {load[0]:.1f} before / {os.getloadavg()[0]:.1f} "
               "after (shared machine; medians over interleaved repetitions).", "",
               f"Generated by `{' '.join(['python benchmarks/no_compiler.py', *sys.argv[1:]])}`"
               ": `OPTIMLAB_CC`/`OPTIMLAB_CXX` point nowhere and the "
               "kernel cache is empty, so every optimlab step takes the multi-tensor path (run in chunks "
               f"of 2^{foreach.CHUNK.bit_length() - 1} elements), or torch's fused CPU kernel for params of >= "
               f"{torch_kernels.MIN_NUMEL} elements where torch ships one for the rule (Adam, AdamW, SGD with "
               "momentum, Adagrad); Adafactor (not element-wise) runs its "
               "traced graph as batched torch operations (`fused/passes_torch.py`). Every class with a torch.optim twin, fp32 params, default "
               "flags. `optimlab reference` is the per-tensor path (`foreach=False`), what ran without a compiler "
               "before; `vs torch best` = fastest torch.optim implementation / optimlab (>1: optimlab faster); "
               "`roofline` = bytes the rule must move per step (its traced graph's per-element reads and writes; "
               "Adafactor: one pass over param, grad and state) / the bandwidth of an in-place probe `a.add_(b)` "
               "on flat tensors as large as the mix, timed back to back / the step's time, for optimlab and for "
               "torch's best (1.0: at the probe's bandwidth; no implementation of the rule moves fewer bytes).", "",
               HEADER, "|" + "---|" * (HEADER.count("|") - 1), *lines, "",
               f"vs torch best: min {min(vs):.2f}x, median {statistics.median(vs):.2f}x; "
               f"{sum(v < 1 for v in vs)} of {len(vs)} rows below 1.00x"
               + "".join(f"; {line.split('|')[1].strip()} {line.split('|')[2].strip()} {v:.2f}x"
                         for line, v in zip(lines, vs) if v < 1) + ".", *notes, "", END]
    replace_section(path, BEGIN, END, "\n".join(section))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="mixes scaled down 100x, 3 reps, prints only")
    ap.add_argument("--mixes", default="AC")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="", help="comma-separated entry names (prints only; --reps, default 5)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per mix (default: A 7, C 9)")
    args = ap.parse_args(argv)
    started, load, t0 = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg(), time.perf_counter()
    only = tuple(filter(None, args.only.split(",")))
    if only:
        run(args.mixes, {m: args.reps or 5 for m in "ABCD"}, 1, only)
        return
    if args.quick:
        lines = run(args.mixes, {m: 3 for m in "ABCD"}, 100)
    else:
        reps = {"A": 7, "B": 5, "C": 9, "D": 3} if args.reps is None else dict.fromkeys("ABCD", args.reps)
        lines = run(args.mixes, reps, 1)
    out = args.out or (None if args.quick else os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    if out:
        write_section(out, lines, started, load, time.perf_counter() - t0)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
