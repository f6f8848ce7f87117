"""Mixed precision: float16/bfloat16 parameters, and a GradScaler step, vs torch's fused AdamW.

Mix A (28M params in 32 transformer tensors, see step_speed.py). Rows:

* AdamW on float16 / bfloat16 / float32 params: optimlab's default step vs torch's fused
  and foreach AdamW on the same tensors;
* one AdamW step through ``torch.amp.GradScaler`` (``scaler.step(opt)``, which checks the
  grads for inf and hands the optimizer its scale): optimlab (the kernel unscales, torch's
  fused protocol) vs torch's fused AdamW (same protocol) vs torch's foreach AdamW
  (``unscale_`` pass, then the step).

Interleaved rounds, medians; ratios are what to read on a shared machine.

    python benchmarks/mixed_precision.py [--reps 5] [--rounds 3] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from step_speed import machine, transformer_28m  # noqa: E402

import optimlab  # noqa: E402


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in transformer_28m()]
    for p in ps:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(dtype)
    return ps


def _step_fn(opt, scaler):
    if scaler is None:
        return opt.step

    def step():
        scaler.scale(torch.ones(()))  # a loss would be scaled here (this creates the scale)
        scaler.step(opt)
        scaler.update()
    return step


def _timings(impls: dict, reps: int, rounds: int) -> dict:
    for fn in impls.values():
        fn()
    out = {k: [] for k in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name].append(statistics.median(times))
    return {k: statistics.median(v) for k, v in out.items()}


def run(reps: int, rounds: int) -> list:
    rows = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        ps = _params(dtype)
        impls = {"optimlab": optimlab.AdamW(ps).step,
                 "torch fused": torch.optim.AdamW(ps, fused=True).step,
                 "torch foreach": torch.optim.AdamW(ps, foreach=True).step}
        rows.append((f"AdamW, {str(dtype).replace('torch.', '')} params", _timings(impls, reps, rounds)))
    ps = _params(torch.float32)
    impls = {}
    for name, opt in (("optimlab", optimlab.AdamW(ps)), ("torch fused", torch.optim.AdamW(ps, fused=True)),
                      ("torch foreach", torch.optim.AdamW(ps, foreach=True))):
        # a huge growth interval: the scale stays fixed, no step is skipped
        scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**9)
        impls[name] = _step_fn(opt, scaler)
    rows.append(("AdamW + GradScaler (float32 params)", _timings(impls, reps, rounds)))
    return rows


def _row(name, t) -> str:
    cells = " | ".join(f"{t[k] * 1e3:.1f}" for k in ("optimlab", "torch fused", "torch foreach"))
    return (f"| {name} | {cells} | {t['torch fused'] / t['optimlab']:.2f}x | "
            f"{min(t['torch fused'], t['torch foreach']) / t['optimlab']:.2f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = run(args.reps, args.rounds)
    lines = ["## Mixed precision: mix A (28M params, 32 tensors), AdamW", "",
             f"{started}; {machine()}. `python benchmarks/mixed_precision.py` (medians of "
             f"{args.reps} steps x {args.rounds} interleaved rounds).", "",
             "| case | optimlab ms | torch fused ms | torch foreach ms | vs torch fused | vs torch best |",
             "|---|---|---|---|---|---|"] + [_row(*r) for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
