"""The default run's CPU time, estimated from a finished default run's store.

On a shared machine neither a full default run's wall time nor its CPU time can be taken
in reasonable time, so this estimates the CPU time of the current protocol and runner
against those of the store's own run, side by side in one process:

1. the store (a default ``optimlab compare`` whose seeds phase reran every candidate with
   every seed) gives the search's runs; the current seeds phase (successive halving) and
   the later phases are replayed on it (``Plan.seed_specs`` / ``all_specs``), which gives
   the current run list and whether the selected lrs change;
2. a stratified sample (``--per`` runs per problem x phase) is trained in this process
   (one thread, ``process_time``) with the current runner and with the old one (50
   evaluation points, loss and metric by two forward passes), interleaved;
3. each protocol's run counts x its per-group mean CPU give the two totals and their ratio.

Multiply the ratio by the store's measured total CPU time to estimate the current one.

    python benchmarks/default_run_cpu.py OUT/results.sqlite --per 4

With ``--baseline-src DIR`` (another checkout's ``src``, e.g. the main branch's), the
store is taken to be a default run of the *current* protocol, and the same stratified
sample of its runs is trained by two persistent worker processes, one importing optimlab
from this checkout and one from DIR, a run at a time in alternating order (so that both
see the same machine load); each reports the run's ``process_time`` and whether its
record (final metrics, curves, trajectory) is identical to the stored one. Each run is
trained ``--reps`` times per side and its least CPU time kept (contention on a shared
machine only ever adds to it). The totals
are the store's run counts per problem x phase times each side's mean CPU:

    python benchmarks/default_run_cpu.py OUT/results.sqlite --per 4 --baseline-src ../main/src
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time

import torch

from optimlab.lab import executor, runner, selection as SEL, sweep
from optimlab.lab.problems import DEFAULT_SUITE, _supervised
from optimlab.lab.store import Store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", help="results.sqlite of a finished default run (5 seeds)")
    ap.add_argument("--per", type=int, default=4, help="sampled runs per problem x phase")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="compare with the runner and problems of another checkout's src")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--reps", type=int, default=3,
                    help="with --baseline-src: times each run is trained per side (the "
                         "least CPU counts: contention only ever adds)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.serve:
        return _serve(args.store)
    if args.baseline_src:
        return _versus(args.store, args.baseline_src, args.per, args.seed, args.reps)
    recs = Store(args.store).records()
    by_id = {r.run_id: r for r in recs}
    opts = sorted({r.spec.optimizer for r in recs})
    plan = sweep.Plan.build(DEFAULT_SUITE, opts, seeds=5)
    sw = [r for r in recs if r.spec.phase == "sweep" and r.spec.hyperparameters == ()]
    stored = lambda specs: [by_id[s.run_id] for s in specs if s.run_id in by_id]  # noqa: E731
    sel = SEL.select_best(sw)
    for _ in range(2):   # the two rungs of the seeds phase
        sel = SEL.select_best(sw + stored(plan.seed_specs(sel)))
    new = plan.all_specs(sel)
    old_sel = SEL.select_best(recs)
    print("old runs", len(recs), dict(collections.Counter(r.spec.phase for r in recs)))
    print("new runs", len(new), dict(collections.Counter(s.phase for s in new)),
          "| missing from the store:", sum(s.run_id not in by_id for s in new))
    print("selected lr differs on", sum(sel[k].lr != old_sel[k].lr for k in sel), "of",
          len(sel), "pairs")

    groups = {"new": collections.defaultdict(list), "old": collections.defaultdict(list)}
    for s in new:
        groups["new"][(s.problem, s.phase)].append(s)
    for r in recs:
        groups["old"][(r.spec.problem, r.spec.phase)].append(r.spec)
    shared_forward = _supervised._SharedForward

    def mode(old: bool) -> None:
        runner.EVAL_POINTS = 50 if old else 25
        _supervised._SharedForward = (lambda m: m) if old else shared_forward

    rng = random.Random(0)
    problems = {n: executor._problem(n) for n in DEFAULT_SUITE}
    cpu = collections.defaultdict(lambda: {"new": [], "old": []})
    for key in sorted(set(groups["new"]) | set(groups["old"])):
        pool = groups["old"].get(key) or groups["new"][key]
        for spec in rng.sample(pool, min(args.per, len(pool))):
            for m in (("new", "old") if rng.random() < 0.5 else ("old", "new")):
                mode(m == "old")
                c = time.process_time()
                runner.run(spec, problems[spec.problem])
                cpu[key][m].append(time.process_time() - c)
    mode(False)
    avg = lambda xs: sum(xs) / len(xs)  # noqa: E731
    tot = {m: sum(len(v) * avg(cpu[k][m]) for k, v in groups[m].items()) for m in groups}
    for k in sorted(cpu):
        print(k, len(groups["old"].get(k, ())), len(groups["new"].get(k, ())),
              "old %.3f s, new %.3f s" % (avg(cpu[k]["old"]), avg(cpu[k]["new"])))
    print("run CPU: old protocol and runner %.0f s, current %.0f s, ratio %.3f"
          % (tot["old"], tot["new"], tot["new"] / tot["old"]))
    return 0


def _serve(store: str) -> int:
    """Worker: read run ids on stdin, train each, answer "cpu_seconds identical"."""
    by_id = {r.run_id: r for r in Store(store).records()}
    problems: dict = {}
    for line in sys.stdin:
        r = by_id[line.strip()]
        name = r.spec.problem
        if name not in problems:
            problems[name] = executor._problem(name)
        c = time.process_time()
        out = runner.run(r.spec, problems[name])
        cpu = time.process_time() - c
        same = (out.status == r.status and out.final == r.final and out.curves == r.curves
                and out.trajectory == r.trajectory)
        print(json.dumps([cpu, same]), flush=True)
    return 0


def _versus(store: str, baseline_src: str, per: int, seed: int, reps: int) -> int:
    recs = Store(store).records()
    groups = collections.defaultdict(list)
    for r in recs:
        groups[(r.spec.problem, r.spec.phase)].append(r.run_id)
    rng = random.Random(seed)
    sample = [(k, rid) for k in sorted(groups)
              for rid in rng.sample(groups[k], min(per, len(groups[k])))]
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    srcs = {"current": os.path.abspath(here), "baseline": os.path.abspath(baseline_src)}
    workers = {}
    for side, src in srcs.items():
        env = {**os.environ, "PYTHONPATH": src}
        workers[side] = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), store, "--serve"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cpu = collections.defaultdict(lambda: {"current": [], "baseline": []})
    same = {"current": 0, "baseline": 0}
    try:
        for i, (key, rid) in enumerate(sample):
            best = {}
            for rep in range(reps):
                for side in (("current", "baseline") if (i + rep) % 2 else
                             ("baseline", "current")):
                    w = workers[side]
                    w.stdin.write(rid + "\n")
                    w.stdin.flush()
                    seconds, identical = json.loads(w.stdout.readline())
                    best[side] = min(seconds, best.get(side, seconds))
                    if rep == 0:
                        same[side] += bool(identical)
            for side, seconds in best.items():
                cpu[key][side].append(seconds)
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    avg = lambda xs: sum(xs) / len(xs)  # noqa: E731
    tot = {side: sum(len(groups[k]) * avg(v[side]) for k, v in cpu.items()) for side in srcs}
    for k in sorted(cpu):
        print("%-16s %-16s %4d runs  baseline %.3f s  current %.3f s" % (
            *k, len(groups[k]), avg(cpu[k]["baseline"]), avg(cpu[k]["current"])))
    print("sampled %d runs; records identical to the store: current %d, baseline %d"
          % (len(sample), same["current"], same["baseline"]))
    print("run CPU of the store's %d runs: baseline %.0f s, current %.0f s, ratio %.3f"
          % (len(recs), tot["baseline"], tot["current"], tot["current"] / tot["baseline"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
