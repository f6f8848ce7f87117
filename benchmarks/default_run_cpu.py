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
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import torch

from optimlab.lab import runner, selection as SEL, sweep
from optimlab.lab.problems import DEFAULT_SUITE, _supervised
from optimlab.lab.store import Store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", help="results.sqlite of a finished default run (5 seeds)")
    ap.add_argument("--per", type=int, default=4, help="sampled runs per problem x phase")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
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
    problems = {n: sweep._problem(n) for n in DEFAULT_SUITE}
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


if __name__ == "__main__":
    raise SystemExit(main())
