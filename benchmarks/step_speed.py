"""Optimizer step speed: optimlab's fused step vs torch.optim, against the memory roofline.

For each tensor mix and each registry entry (and its variants), one process times,
interleaved and on the same param/grad tensors:

* optimlab's ``step()`` (default ``fused=None``: the generated kernel);
* torch.optim's for-loop (``foreach=False``), ``foreach=True`` and ``fused=True``
  implementations, where torch has them;
* an in-place probe ``a.add_(b)`` on flat tensors as large as the mix (12 bytes per
  element), which measures the bandwidth the machine gives torch right now.

Each result is reported as a fraction of the roofline (bytes the rule must touch, from
the traced kernel, divided by the probe bandwidth) and as a speedup over torch's best.
Times are medians over repetitions; the two ratios are medians of per-repetition ratios
(methods timed back to back), which a busy machine disturbs less, and the speedup comes
with the interquartile range of those ratios. The repetitions are split into three rounds
with freshly built optimizers (fresh state allocations); a torch implementation 1.5x
slower than torch's best in the first round is not timed further. Every variant runs on
mixes A and C; B and D run each registry entry's defaults. Mixes: (A) 28M params in 32
transformer-shaped tensors, (B) 200 x 100k, (C) 1,000 x 1k, (D) GPT-2 small's exact
shapes (124M).

Covered: every registry entry whose rule is element-wise (one fused pass). Skipped, with
the reason printed and written: SparseAdam (sparse gradients; the mixes are dense), LBFGS
(no per-element rule: a closure and a line search), and the rules with reductions or
matrix products (Adafactor, Muon, LAMB, LARS, Prodigy: ``benchmarks/reduction_speed.py``).

Each selection writes its own marked section of BENCHMARKS.md (``markdown_section``): the
full run (no selection flags) replaces only the section it owns, and a run with
``--optimizers``/``--mixes``/``--threads``/``--no-variants`` replaces only the section of
that selection.

    python benchmarks/step_speed.py            # full run, writes BENCHMARKS.md
    python benchmarks/step_speed.py --quick    # smoke run: small mixes, prints only
    python benchmarks/step_speed.py --optimizers radam,lion --mixes A,B,D --threads 1
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import optimlab
from optimlab import fused
from optimlab.fused.plan import roofline_bytes
from optimlab.registry import ENTRIES, lookup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_speed_markdown import TITLES, fmt_row, write_markdown  # noqa: E402


def transformer_28m():
    """4 blocks of a d=768 transformer (qkv, proj, fc1, fc2 weights and biases): 32 tensors."""
    d = 768
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return block * 4


def gpt2_small():
    """GPT-2 small (124M), tied embeddings: 148 tensors."""
    d, shapes = 768, [(50257, 768), (1024, 768)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


MIXES = {
    "A": (TITLES["A"], transformer_28m),
    "B": (TITLES["B"], lambda: [(100_000,)] * 200),
    "C": (TITLES["C"], lambda: [(1_000,)] * 1000),
    "D": (TITLES["D"], gpt2_small),
}


#: entries this benchmark cannot time, and why
SKIPPED = {
    "sparse_adam": "needs sparse gradients; the mixes are dense",
    "lbfgs": "no per-element rule (a closure re-evaluates the loss; strong-Wolfe line search)",
}
_REDUCTIONS = "has reductions or matrix products: timed by benchmarks/reduction_speed.py"


def skip_reason(entry) -> str | None:
    """Why ``entry`` is not timed here, or None: only rules that are one element-wise pass."""
    if entry.name in SKIPPED:
        return SKIPPED[entry.name]
    if not entry.is_rule:
        return "has its own step (no rule)"
    rule = entry.cls.rule
    if entry.matrices_only or not rule.elementwise or rule.estimate is not None:
        return _REDUCTIONS
    return None


def configs(all_variants: bool, only=None):
    for entry in ENTRIES:
        if (only and entry.name not in only) or skip_reason(entry):
            continue
        # the first variant: {} for torch's classes; for LAMB/LARS/Prodigy the one their
        # published reference implements (the paper differences switched off)
        variants = list(entry.variants) if all_variants else [entry.variants[0]]
        if all_variants and "bias_correction" in inspect.signature(entry.cls).parameters:
            variants.append({"bias_correction": False})
        for variant in variants:
            yield entry, variant


def label(entry, variant) -> str:
    flags = ",".join(f"{k}={v}" for k, v in variant.items())
    return entry.name + (f" [{flags}]" if flags else "")


def torch_variants(entry, params, variant, skip=()):
    """torch.optim's implementations of the same optimizer (those that construct and step);
    for an optimizer torch.optim lacks, the authors' published one (:func:`reference_variants`)."""
    if entry.torch_cls is None:
        return reference_variants(entry, params, variant, skip)
    kwargs = {k: v for k, v in variant.items() if k != "bias_correction"}
    out = {}
    params_of = inspect.signature(entry.torch_cls).parameters
    plain = "foreach" not in params_of and "fused" not in params_of  # Muon: one implementation
    for name, extra in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}),
                        ("fused", {"fused": True}), ("default", {})):
        if (name == "default") != plain or f"torch {name}" in skip:
            continue
        if extra and next(iter(extra)) not in params_of:
            continue
        try:
            opt = entry.build_torch(params, **kwargs, **extra)
            opt.step()  # warm-up; raises where torch lacks this implementation
            out[name] = opt
        except (RuntimeError, TypeError, ValueError):
            pass
    return out


def must_touch(opt, group) -> int:
    """Bytes the rule must touch per step: the traced kernel's for an element-wise rule; for a
    rule with reductions or a group-level phase, one pass over its element-wise inputs and
    outputs (param and per-element state read and written, grad read; Prodigy's p0 only
    read), what a fusion of its element-wise passes would reach."""
    rule = opt.rule
    if rule.elementwise and rule.estimate is None:
        return roofline_bytes(opt, group)
    total = 0
    for p in group["params"]:
        state = opt.state.get(p, {})
        full = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape]
        per_element = 3 + sum(1 if k == "p0" else 2 for k in full)
        total += per_element * p.numel() * p.element_size()
    return total


def reference_variants(entry, params, variant, skip=()):
    """The authors' implementation (``Entry.reference``): its for-loop and foreach paths
    where it has a ``foreach`` flag, else its default, keyed ``"ref ..."``; put in train mode
    where it has one (Schedule-Free)."""
    if entry.reference is None:
        return {}
    kwargs = {k: v for k, v in variant.items() if k != "bias_correction"}
    out = {}
    for name, extra in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("default", {})):
        if f"ref {name}" in skip or (name == "default" and out):
            continue
        try:
            opt = entry.build_reference(params, **kwargs, **extra)
            if hasattr(opt, "train"):
                opt.train()
            opt.step()  # warm-up; raises where the reference lacks this path or flag
            out[name] = opt
        except (RuntimeError, TypeError, ValueError, ImportError):
            pass
    return {f"ref {name}": opt for name, opt in out.items()}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_config(entry, variant, params, probe, reps, fused_adam_ref, rounds=3):
    """Interleaved timings {method: [seconds per repetition]}, roofline bytes, elements.

    The repetitions are split into ``rounds``, each with freshly built optimizers: where a
    state tensor lands in physical memory moves a memory-bound step by up to ~15% for as
    long as that tensor lives, for optimlab and torch alike, so every implementation is
    measured over several allocations."""
    times: dict = {}
    dropped: set = set()
    for rnd in range(rounds):
        ours = entry.build(params, **variant)
        ours.step()
        ours.step()  # a lazily created state (SGD's momentum buffer) builds a new plan once
        methods = {"optimlab": ours.step, "probe": probe}
        for name, opt in torch_variants(entry, params, variant, skip=dropped).items():
            methods[name if name.startswith("ref ") else f"torch {name}"] = opt.step
        if fused_adam_ref:  # mix C's target is relative to torch's fused Adam
            ref = torch.optim.Adam(params, fused=True)
            ref.step()
            methods["torch fused Adam"] = ref.step
        names = list(methods)
        for rep in range(-(-reps // rounds)):
            for i in range(len(names)):
                n = names[(i + rep) % len(names)]  # rotate the order: no method always goes first
                times.setdefault(n, []).append(timed(methods[n]))
        if rnd == 0:  # a torch implementation 1.5x slower than torch's best can't be the best
            med = {n: statistics.median(v) for n, v in times.items()
                   if n.startswith(_COMPARED) and n != "torch fused Adam"}
            dropped = {n for n in med if med[n] > 1.5 * min(med.values())}
            nbytes = must_touch(ours, ours.param_groups[0])
        del ours, methods
        ref = None
        gc.collect()
    nelem = sum(p.numel() for p in params)
    return times, nbytes, nelem


#: the implementations optimlab is compared with: torch.optim's, or the authors' published one
_COMPARED = ("torch ", "ref ")


def summarize(times, nbytes, nelem) -> dict:
    """Medians, plus per-repetition ratios (optimlab vs the probe / torch's best measured
    back to back in the same repetition), which a busy machine disturbs far less."""
    med = {n: statistics.median(v) for n, v in times.items()}
    ours, probe = times["optimlab"], times["probe"]
    frac = statistics.median(nbytes * tp / (12 * nelem * to) for tp, to in zip(probe, ours))
    torch_names = [n for n in med if n.startswith(_COMPARED) and n != "torch fused Adam"]
    best = min(torch_names, key=med.get, default=None)
    row = {"ours": med["optimlab"], "frac": frac, "bw": 12 * nelem / med["probe"] / 1e9,
           "bytes": nbytes / nelem, "best": best,
           **{n: v for n, v in med.items() if n.startswith(_COMPARED)}}
    row["vs_best"] = row["vs_iqr"] = None
    if best:
        ratios = [tb / to for tb, to in zip(times[best], ours)]
        row["vs_best"] = statistics.median(ratios)
        row["vs_iqr"] = _quartiles(ratios)
    if "torch fused Adam" in times:
        row["vs_fused_adam"] = statistics.median(ta / to for ta, to in zip(times["torch fused Adam"], ours))
    return row


def _quartiles(xs) -> tuple:
    if len(xs) < 4:
        return min(xs), max(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def python_overhead(n_tensors=1000, size=1000, reps=50):
    """Per-step time of optimlab Adam on n small tensors, and of its kernel call alone."""
    params = [torch.randn(size).requires_grad_() for _ in range(n_tensors)]
    for p in params:
        p.grad = torch.randn(size)
    opt = optimlab.Adam(params)
    opt.step()
    plan = next(iter(fused._plans[opt].values()))
    bucket = plan.buckets[0]
    nthreads = torch.get_num_threads()
    step, kern = [], []
    for _ in range(reps):
        step.append(timed(opt.step))
        kern.append(timed(lambda: bucket.call(nthreads)))
    return statistics.median(step), statistics.median(kern)


_FIRST_STEP = """
import sys, time, torch, optimlab
ps = [torch.randn(1000, requires_grad=True) for _ in range(int(sys.argv[1]))]
for p in ps:
    p.grad = torch.randn(1000)
opt = optimlab.Adam(ps)
t = time.perf_counter(); opt.step(); print(time.perf_counter() - t)
"""


def first_step_times():
    """Seconds for the first Adam step in a fresh process, cold kernel cache then warm:
    {tensors: (cold, warm)} for 1 tensor and for 1,000 (which also builds ``gather.cpp``)."""
    out = {}
    for n in (1, 1000):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "OPTIMLAB_CACHE": cache}
            run = [sys.executable, "-c", _FIRST_STEP, str(n)]
            out[n] = tuple(float(subprocess.run(run, env=env, capture_output=True, text=True,
                                                check=True).stdout) for _ in range(2))
    return out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); Python {platform.python_version()}; "
            f"optimlab {optimlab.__version__}")


def run(mixes, all_variants, reps, scale, out_rows, only=None):
    for mix in mixes:
        title, shapes_fn = MIXES[mix]
        shapes = shapes_fn()
        if scale != 1:
            shapes = [tuple(max(1, s // scale) for s in shape) for shape in shapes]
        gen = torch.Generator().manual_seed(0)
        all_params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in all_params:
            p.grad = torch.randn(p.shape, generator=gen)
        n = sum(p.numel() for p in all_params)
        probes = {}

        def probe_for(m):  # a.add_(b) on as many elements as the params stepped
            if m not in probes:
                a, b = torch.randn(m), torch.randn(m)
                probes[m] = lambda: a.add_(b)
            return probes[m]

        r = reps[mix]
        print(f"\n== mix {mix}: {title}: {len(all_params)} tensors, {n / 1e6:.1f}M params, {r} reps", flush=True)
        for entry, variant in configs(all_variants and mix in "AC", only):
            params = all_params
            probe = probe_for(sum(p.numel() for p in params))
            row = {"mix": mix, "config": label(entry, variant),
                   **summarize(*bench_config(entry, variant, params, probe, r, mix == "C"))}
            out_rows.append(row)
            print(fmt_row(row), flush=True)
        del all_params, probes
        gc.collect()


def section_key(args) -> str:
    """The marker of the section a run owns: "" for the full run, else its selection."""
    parts = []
    if args.optimizers:
        parts.append("optimizers=" + ",".join(sorted(args.optimizers)))
    if args.mixes != "ABCD":
        parts.append("mixes=" + ",".join(args.mixes))
    if args.threads:
        parts.append(f"threads={args.threads}")
    if args.no_variants:
        parts.append("no-variants")
    return "; ".join(parts)


def skipped_lines(only) -> list:
    """One line per registry entry the selection names (every entry, in a full run) that
    this benchmark does not time, with the reason."""
    out = []
    for entry in ENTRIES:
        why = skip_reason(entry)
        if why and (not only or entry.name in only):
            out.append(f"- `{entry.name}`: not timed here: {why}.")
    return out


def command_line(args) -> str:
    """The command that reproduces a run (its selection flags)."""
    parts = ["python benchmarks/step_speed.py"] + (["--quick"] if args.quick else [])
    if args.optimizers:
        parts.append("--optimizers " + ",".join(args.optimizers))
    if args.mixes != "ABCD":
        parts.append("--mixes " + ",".join(args.mixes))
    parts += [f"--threads {args.threads}"] if args.threads else []
    parts += ["--no-variants"] if args.no_variants else []
    parts += [f"--reps {args.reps}"] if args.reps else []
    parts += ["--overheads"] if args.overheads else []
    return " ".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: mixes scaled down 100x, 4 reps")
    ap.add_argument("--mixes", default="ABCD", help="mixes to run, e.g. A,B,D (default ABCD)")
    ap.add_argument("--out", default=None, help="markdown output (default BENCHMARKS.md; none with --quick)")
    ap.add_argument("--optimizers", "--only", default=None,
                    help="comma-separated registry names (default: every element-wise rule)")
    ap.add_argument("--threads", type=int, default=None, help="torch (and kernel) threads (default: torch's)")
    ap.add_argument("--no-variants", action="store_true", help="each entry's defaults only")
    ap.add_argument("--overheads", action="store_true",
                    help="also measure the per-step Python overhead and first-step times (always in a full run)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per mix (default: 21/15/12/9)")
    args = ap.parse_args(argv)
    args.mixes = "".join(m for m in args.mixes.upper() if m in MIXES)
    args.optimizers = [lookup(n).name for n in args.optimizers.split(",")] if args.optimizers else None
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.optimizers or ())
    skipped = skipped_lines(only)
    for line in skipped:
        print(line)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows: list = []
    if args.quick:
        run(args.mixes, False, {m: args.reps or 4 for m in MIXES}, 100, rows, only)
    else:
        reps = {"A": 21, "B": 15, "C": 12, "D": 9}
        run(args.mixes, not args.no_variants, {m: args.reps or k for m, k in reps.items()}, 1, rows, only)
    overhead = first = None
    key = section_key(args)
    if not key or args.quick or args.overheads:
        overhead = python_overhead()
        first = first_step_times()
        print(f"\noverhead: step {overhead[0] * 1e6:.0f} us, kernel {overhead[1] * 1e6:.0f} us; first step "
              + ", ".join(f"{n} tensors: cold {c:.2f} s, warm {w * 1e3:.1f} ms" for n, (c, w) in first.items()))
    out = args.out or (None if args.quick else os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    if out and rows:
        write_markdown(out, key, command_line(args), machine(), rows, overhead, first, skipped, started, load_before, os.getloadavg(),
                       time.perf_counter() - t0)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
