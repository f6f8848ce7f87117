"""Vector width of the generated element loop: 512-bit vs 256-bit vectors, per rule.

For every element-wise registry entry (float32, one tensor of ``--numel`` elements, one
thread), the fused kernel is built twice, with ``codegen.narrow_vectors`` forced off
(``-march=native``'s width: 512 bits on an AVX-512 machine) and forced on (256 bits), and
the two optimizers' steps are timed interleaved on the same param and grad: every round
runs each once, in a shuffled order, timed with the thread's CPU time (a busy machine's
preemptions do not count). ``512 / 256`` is the median of the per-round ratios (>1: 256
bits faster), with its interquartile range; ``chosen`` is what ``narrow_vectors`` picks.
The first rows time torch's ``p.add_(g, alpha=-lr)`` in the same rounds as SGD's two
kernels: ``torch / optimlab`` (>1: optimlab faster).

    python benchmarks/vector_width.py [--numel 28e6] [--rounds 41] [--only sgd,adam]
                                      [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time

import torch

import optimlab
from optimlab.fused import codegen
from optimlab.fused import plan as plan_mod
from optimlab.registry import ELEMENTWISE_ENTRIES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from markdown_section import replace_section  # noqa: E402

BEGIN, END = "<!-- vector-width: begin -->", "<!-- vector-width: end -->"
_NOTE = """Why the width is chosen per kernel: torch's own element-wise CPU kernels (`add_`,
the fused Adam) run their AVX2 builds, 256-bit, even where the CPU capability reads AVX512
(a `perf` profile names `at::native::AVX2::VectorizedLoop2d<... add_kernel ...>`; its loop
is two `ymm` vectors per iteration). GCC's `-march=native` vectorises optimlab's loops with
512-bit `zmm` instead; on the AMD EPYC (Zen 4) of these runs a loop that only streams is
faster with 256-bit loads (probes: a read-only sum 3%; 512-bit loads with 256-bit stores
slower, 256-bit loads with 512-bit stores not), while loops dense in divisions and square
roots are faster with 512 bits. Excluded as causes of SGD's gap to torch's `add_`: the
chunking of the step into 256K-element calls (32K, 256K, 1M and one call: equal), the
thread pool (one thread: a plain loop over the chunks), aliasing checks (`restrict`, no
versioning), 2x and 4x unrolling, non-temporal stores (slower), software prefetch (much
slower). Memory-bound results on this shared 2-core machine move by several percent from
run to run."""
RULE = codegen.narrow_vectors


def _steppers(entry, p, narrow: bool):
    """A fresh optimizer whose kernels are built with ``narrow`` forced; its step."""
    codegen.narrow_vectors = lambda tr, dtype: narrow
    plan_mod._kernels.clear()
    try:
        opt = entry.build([p], lr=1e-4)
        for _ in range(3):  # lazily created state: the steady kernel is built by step 2
            opt.step()
        kernels = [k for k in plan_mod._kernels.values() if not isinstance(k, Exception)]
    finally:
        codegen.narrow_vectors = RULE
        plan_mod._kernels.clear()
    return opt.step, kernels[-1] if kernels else None


def _rounds(cases: dict, rounds: int) -> dict:
    times = {k: [] for k in cases}
    for _ in range(rounds):
        keys = list(cases)
        random.shuffle(keys)
        for k in keys:
            t0 = time.thread_time()
            cases[k]()
            times[k].append(time.thread_time() - t0)
    return times


def _ratio(a: list, b: list) -> str:
    r = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(r, n=4)
    return f"{statistics.median(r):.3f} ({q[0]:.2f}-{q[2]:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--numel", default="28e6", help="elements of the one tensor (default 28e6)")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--only", default="",
                    help="comma-separated registry names (default: every element-wise rule)")
    ap.add_argument("--out", default="", help="write the table as this markdown file's vector-width section")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = int(float(args.numel))
    only = set(filter(None, args.only.split(",")))
    entries = [e for e in ELEMENTWISE_ENTRIES if not only or e.name in only]
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    p.grad = torch.randn(n, generator=gen) * 1e-2
    load0, t0 = os.getloadavg()[0], time.time()
    rows, torch_rows = [], []
    for e in entries:
        wide, kern = _steppers(e, p, False)
        narrow, _ = _steppers(e, p, True)
        if kern is None:
            print(f"{e.name}: no fused kernel, skipped", flush=True)
            continue
        cases = {"512": wide, "256": narrow}
        if e.name == "sgd":
            cases["torch"] = lambda: p.data.add_(p.grad, alpha=-1e-4)
        t = _rounds(cases, args.rounds)
        chosen = "256" if RULE(kern.trace, "float32") else "512"
        row = (f"| {e.name} | {len(kern.trace.reads) + len(kern.trace.elem_outputs)} | "
               f"{statistics.median(t['512']) * 1e3:.2f} | {statistics.median(t['256']) * 1e3:.2f} | "
               f"{_ratio(t['512'], t['256'])} | {chosen} |")
        rows.append(row)
        print(row, flush=True)
        if "torch" in t:
            torch_rows = [f"| {w} bits | {_ratio(t['torch'], t[w])} |" for w in ("512", "256")]
            print("\n".join(torch_rows), flush=True)
    minutes = (time.time() - t0) / 60
    cmd = "python benchmarks/vector_width.py" + "".join(
        f" --{k} {v}" for k, v in (("numel", args.numel), ("rounds", args.rounds), ("only", args.only)) if v)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([
        BEGIN, "## Vector width of the generated element loop: 512 vs 256 bits (float32, one thread)", "",
        f"{stamp}; {platform.processor() or platform.machine()} ({_cpu()}); torch {torch.__version__} "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}); optimlab {optimlab.__version__}; "
        f"{n / 1e6:.0f}M elements, {args.rounds} interleaved rounds, {minutes:.1f} min, load average "
        f"{load0:.1f} before / {os.getloadavg()[0]:.1f} after (shared machine). `{cmd}`. "
        "Times: medians of thread CPU time. `512 / 256`: median of per-round ratios (>1: 256 bits "
        "faster), interquartile range in brackets. `chosen`: what `codegen.narrow_vectors` picks.", "",
        "| rule | streams | 512-bit ms | 256-bit ms | 512 / 256 | chosen |", "|---|---|---|---|---|---|",
        *rows, "", "torch's `p.add_(g, alpha=-lr)` (its AVX2 build, whatever the capability says) / "
        "optimlab's SGD step, same rounds (>1: optimlab faster):", "",
        "| SGD kernel | torch / optimlab |", "|---|---|", *torch_rows,
        "", _NOTE, END])
    if args.out:
        replace_section(args.out, BEGIN, END, body)
        print(f"wrote {args.out}")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
