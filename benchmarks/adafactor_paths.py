"""Adafactor's step, side by side with torch.optim.Adafactor, in thread CPU time: prints only.

One process times, interleaved on the same param/grad tensors, optimlab's default step and
torch's for-loop and foreach implementations, with ``torch.set_num_threads(--threads)``
(default 1) and ``time.thread_time`` (so other processes on a shared machine count less),
and prints medians and the median per-repetition ratio against the faster torch one.
``--no-compiler`` points ``OPTIMLAB_CC`` nowhere (an empty kernel cache): the passes' graph
then runs as batched torch operations (:mod:`optimlab.fused.passes_torch`); otherwise
the generated C passes run (:mod:`optimlab.fused.passes`).

    python benchmarks/adafactor_paths.py --no-compiler --mixes AC   # issue 9's no-compiler mixes
    python benchmarks/adafactor_paths.py --mixes ABM                # issue 10's mixes, with a compiler
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixes", default="ACM", help="letters of step_speed.MIXES, and M (reduction_speed.py)")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compiler", action="store_true")
    args = ap.parse_args(argv)
    if args.no_compiler:
        cache = tempfile.mkdtemp()
        os.environ.update(OPTIMLAB_CC="/nonexistent/cc", OPTIMLAB_CXX="/nonexistent/c++", OPTIMLAB_CACHE=cache)
    import torch

    import optimlab

    sys.path.insert(0, os.path.dirname(__file__))
    from reduction_speed import muon_mix
    from step_speed import MIXES

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RuntimeWarning)  # "no generated passes": expected without a compiler
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} thread(s), "
          f"{'no compiler' if args.no_compiler else 'C passes'}")
    for mix in args.mixes:
        shapes = muon_mix() if mix == "M" else MIXES[mix][1]()
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        steps = {"optimlab": optimlab.Adafactor(params).step,
                 "torch for-loop": torch.optim.Adafactor(params, foreach=False).step,
                 "torch foreach": torch.optim.Adafactor(params, foreach=True).step}
        for step in steps.values():
            step()
            step()
        times = {name: [] for name in steps}
        for rep in range(args.reps):
            for i in range(len(steps)):
                name = list(steps)[(i + rep) % len(steps)]
                t = time.thread_time()
                steps[name]()
                times[name].append(time.thread_time() - t)
        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        ratio = statistics.median(min(a, b) / o for o, a, b in zip(*times.values()))
        print(f"mix {mix}: optimlab {med['optimlab']:.2f} ms, torch for-loop {med['torch for-loop']:.2f} ms, "
              f"torch foreach {med['torch foreach']:.2f} ms; vs torch best {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
