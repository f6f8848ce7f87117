"""Step speed of the rules with reductions or matrix products (generated passes).

LAMB, LARS, Adafactor, Muon and Prodigy run as generated element-wise passes around their
reductions (:mod:`optimlab.fused.passes`). For each rule and tensor mix, one process times,
interleaved on the same param/grad tensors (fp32):

* optimlab's ``step()``, and inside it the time spent in the generated passes (C calls);
* the comparison: torch.optim's implementations (Adafactor: for-loop and foreach; Muon:
  ``torch.optim.Muon``) or the authors' published ones (LAMB, LARS: pytorch-optimizer;
  Prodigy: prodigyopt), through ``benchmarks/step_speed.py``'s helpers;
* the bandwidth probe ``a.add_(b)`` of step_speed.py.

Reported: the passes' fraction of the bandwidth roofline (bytes the passes move / probe
bandwidth / time in the passes), the whole step's fraction (step_speed's ``must_touch``
bytes: one pass over the element-wise inputs and outputs), and the speedup over the best
compared implementation. Mixes: step_speed's A (28M params, 32 transformer tensors) and B
(200 x 100k), and M, 16 2-D matrices of a d=128 transformer (0.8M params), where Muon runs
(its Newton-Schulz is bfloat16 matrix products, slow on CPU for A's matrices).

    python benchmarks/reduction_speed.py          # ~4 min, writes its BENCHMARKS.md section
    python benchmarks/reduction_speed.py --quick  # smoke run, prints only
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from markdown_section import replace_section  # noqa: E402
from step_speed import MIXES, label, machine, must_touch, timed, torch_variants  # noqa: E402

from optimlab.fused import passes_eval  # noqa: E402
from optimlab.registry import REGISTRY  # noqa: E402

RULES = ("lamb", "lars", "adafactor", "prodigy", "muon")
BEGIN, END = "<!-- reduction-speed: begin -->", "<!-- reduction-speed: end -->"


def muon_mix():
    """4 blocks of a d=128 transformer's matrices (qkv, proj, fc1, fc2): 16 tensors."""
    d = 128
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * 4


ALL_MIXES = {"A": MIXES["A"], "B": MIXES["B"], "M": ("16 matrices of a d=128 transformer, 0.8M", muon_mix)}


def bench(entry, variant, params, probe, reps, rounds=3):
    """{method: [seconds]} interleaved, the passes' (seconds, bytes) per optimlab step, and
    the whole step's roofline bytes."""
    times, in_passes = {}, []
    for _ in range(rounds):
        ours = entry.build(params, **variant)
        ours.step()
        nbytes = must_touch(ours, ours.param_groups[0])
        methods = {"optimlab": ours.step, "probe": probe}
        for name, opt in torch_variants(entry, params, variant).items():
            methods[name if name.startswith("ref ") else f"torch {name}"] = opt.step
        names = list(methods)
        for rep in range(-(-reps // rounds)):
            for i in range(len(names)):
                n = names[(i + rep) % len(names)]
                if n == "optimlab":
                    passes_eval.Runner.profile = []
                times.setdefault(n, []).append(timed(methods[n]))
                if n == "optimlab":
                    prof, passes_eval.Runner.profile = passes_eval.Runner.profile, None
                    in_passes.append((sum(t for t, _ in prof), sum(b for _, b in prof)))
        del ours, methods
        gc.collect()
    return times, in_passes, nbytes


def summarize(times, in_passes, nbytes, nelem) -> dict:
    ours, probe = times["optimlab"], times["probe"]
    bw = [12 * nelem / t for t in probe]  # bytes/s the probe got, per repetition
    pass_frac = statistics.median(b / w / t for (t, b), w in zip(in_passes, bw) if t > 0)
    step_frac = statistics.median(nbytes / w / t for t, w in zip(ours, bw))
    compared = [n for n in times if n.startswith(("torch ", "ref "))]
    med = {n: statistics.median(v) for n, v in times.items()}
    best = min(compared, key=med.get)
    ratios = [tb / to for tb, to in zip(times[best], ours)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else (min(ratios), 0, max(ratios))
    return {"ours": med["optimlab"], "passes": statistics.median(t for t, _ in in_passes),
            "pass_frac": pass_frac, "step_frac": step_frac, "best": best, "best_ms": med[best],
            "vs": statistics.median(ratios), "iqr": (q[0], q[-1]), "bw": statistics.median(bw) / 1e9}


def run(mixes, reps, scale) -> list:
    rows = []
    for mix in mixes:
        title, shapes_fn = ALL_MIXES[mix]
        shapes = [tuple(max(1, s // scale) for s in shape) for shape in shapes_fn()]
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        print(f"\n== mix {mix}: {title}", flush=True)
        for name in RULES:
            entry = REGISTRY[name]
            if name == "muon" and mix != "M":
                continue
            ps = [p for p in params if p.dim() == 2] if entry.matrices_only else params
            nelem = sum(p.numel() for p in ps)
            a, b = torch.randn(nelem), torch.randn(nelem)
            variant = entry.variants[0]
            row = {"mix": mix, "config": label(entry, variant),
                   **summarize(*bench(entry, variant, ps, lambda: a.add_(b), reps[mix]), nelem)}
            rows.append(row)
            print(fmt(row), flush=True)
        del params
        gc.collect()
    return rows


HEADER = ("| mix | optimizer [variant] | step ms | in passes ms | passes roofline frac | "
          "step roofline frac | compared with (ms) | speedup (IQR) | probe GB/s |")


def fmt(r) -> str:
    return (f"| {r['mix']} | {r['config']} | {r['ours'] * 1e3:.2f} | {r['passes'] * 1e3:.2f} | "
            f"{r['pass_frac']:.2f} | {r['step_frac']:.2f} | {r['best']} ({r['best_ms'] * 1e3:.2f}) | "
            f"{r['vs']:.2f}x ({r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}) | {r['bw']:.1f} |")


def markdown(rows, started, load_before, load_after, wall) -> str:
    lines = [BEGIN, "## Rules with reductions and matrix products: generated passes", "",
             f"Machine: {machine()}. Run: {started}, {wall / 60:.1f} min, load average "
             f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (shared machine).", "",
             "Generated by `python benchmarks/reduction_speed.py`. fp32 params, each registry entry's "
             "first variant (the one its published reference implements). `in passes` = time inside "
             "the generated C passes per step; `passes roofline frac` = bytes those passes move / probe "
             "bandwidth / that time; `step roofline frac` = step_speed.py's `must_touch` bytes (one pass "
             "over the element-wise inputs and outputs) / probe bandwidth / whole step time. `speedup` = "
             "the fastest compared implementation / optimlab (>1: optimlab faster): torch.optim's for "
             "Adafactor and Muon, the authors' (`ref ...`: pytorch-optimizer, prodigyopt) for LAMB, LARS, "
             "Prodigy. Muon runs on mix M only (2-D matrices; bfloat16 Newton-Schulz on CPU).", "",
             HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [fmt(r) for r in rows]
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: mixes scaled down 100x, prints only")
    ap.add_argument("--mixes", default="ABM")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    started, load_before, t0 = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg(), time.perf_counter()
    if args.quick:
        rows = run(args.mixes, {m: 3 for m in ALL_MIXES}, 100)
    else:
        rows = run(args.mixes, {"A": 9, "B": 9, "M": 9}, 1)
    out = args.out or (None if args.quick else os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    if out:
        replace_section(out, BEGIN, END, markdown(rows, started, load_before, os.getloadavg(),
                                                  time.perf_counter() - t0))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
