"""Choosing each optimizer's learning rate on seed-averaged validation loss.

Procedure (per (problem, optimizer); only the learning rate is tuned):

1. the lr search (:mod:`.search`) scores every lr it visits with one run, seed 0, phase
   "sweep";
2. the best ``CANDIDATES`` lrs of that sweep (lowest seed-0 final validation loss, ties to
   the smaller lr; failed runs are never candidates) are rerun in two rungs of successive
   halving (phase "seeds"; Jamieson & Talwalkar 2016): every candidate gets seeds
   1..RUNG_SEEDS-1 (seed 1); then only the rung's leader and the candidates **within noise** of it
   (seed-mean excess below PROMOTE_T standard errors of the paired difference over those
   seeds) get the remaining seeds up to N;
3. the selected lr is, among the candidates of the last rung (those with the most seeds,
   so N seeds once the seeds phase is done), the one with the lowest **mean final
   validation loss over its seeds**. A seed that diverged or failed makes the mean +inf;
   candidates that all have failures are ordered by their number of failed seeds, then by
   the mean of the rest.

The test split is never used, and no choice rests on one seed once the seeds phase has
run. A candidate's mean is over every seed stored for it (seed 0 and the reruns), so
before the seeds phase it is the seed-0 score. When every lr failed there is no
candidate: the smallest lr tried is reported with score +inf and nothing is rerun.

Seed means over a few candidates are less optimistic than the minimum over a whole
sweep of single runs (the "winner's curse" of picking the luckiest seed), which is why
the final choice is not made on seed 0 (cf. Bouthillier et al. 2021, "Accounting for
variance in machine learning benchmarks").
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from . import search as S
from .stats import mean_sd

INF = float("inf")

#: Candidate lrs rerun with more seeds per (problem, optimizer).
CANDIDATES = 3
#: Seeds (0..RUNG_SEEDS-1) every candidate gets before the halving. Replayed on the
#: 2026-12-02 default run (every candidate had 5 seeds), rungs of 2 seeds and PROMOTE_T 2
#: select the same lr as 5 seeds for all 3 candidates on 99 of 99 pairs, with 828
#: instead of 1,188 reruns (3 seeds: 924 reruns, 3 pairs differ).
RUNG_SEEDS = 2
#: "Within noise" of the leader: seed-mean excess < PROMOTE_T standard errors of the
#: paired difference (with 2 seeds, about a one-sided 15% test: generous on purpose, a
#: candidate dropped here can no longer be selected).
PROMOTE_T = 2.0


@dataclass(frozen=True)
class Selection:
    """The chosen learning rate of one (problem, optimizer) pair.

    lr: the selected lr; score: its mean final val loss over ``seeds`` seeds (inf when
    a seed failed, or when every lr failed); on_edge: lr is the smallest or the largest
    lr searched (the search may not bracket the optimum); grid: every lr tried (sorted);
    at_bound: lr is at a hard bound of the search (``search.LOWER``/``UPPER``);
    seeds: runs behind ``score``; candidates: ((lr, seed-mean val loss), ...) of the
    candidates, best first (those of the last rung first); promoted: the candidates that
    get every seed (see :func:`promoted`), () until each has seeds 0..RUNG_SEEDS-1.
    """

    lr: float
    score: float
    on_edge: bool
    grid: tuple
    at_bound: bool = False
    seeds: int = 1
    candidates: tuple = ()
    promoted: tuple = ()


def score(record) -> float:
    """Final validation loss; inf for diverged/error runs or non-finite values."""
    if record.status != "ok":
        return INF
    v = (record.final or {}).get("val_loss")
    if v is None:
        return INF
    try:
        v = float(v)
    except (TypeError, ValueError):
        return INF
    return v if math.isfinite(v) else INF


def _default(spec) -> bool:
    return tuple(spec.hyperparameters) == ()


def sweep_scores(records) -> dict:
    """{(problem, optimizer): {lr: seed-0 val score}} from the "sweep" phase (default
    hyperparameters; duplicate lrs, e.g. another schedule, keep the better score)."""
    out = defaultdict(dict)
    for r in records:
        s = r.spec
        if s.phase == "sweep" and s.seed == 0 and _default(s):
            sc, d = score(r), out[(s.problem, s.optimizer)]
            if s.lr not in d or sc < d[s.lr]:
                d[s.lr] = sc
    return dict(out)


def candidates(scores: dict, k: int = CANDIDATES) -> list:
    """The ``k`` best lrs of one sweep ({lr: score}); failed lrs are never candidates."""
    ranked = sorted((sc, lr) for lr, sc in scores.items() if math.isfinite(sc))
    return [lr for _, lr in ranked[:k]]


def seed_scores(records) -> dict:
    """{(problem, optimizer, lr): {seed: val score}} of the "sweep" (seed 0) and "seeds"
    phases with default hyperparameters."""
    out = defaultdict(dict)
    for r in records:
        s = r.spec
        if not _default(s) or s.phase not in ("sweep", "seeds"):
            continue
        if s.phase == "sweep" and s.seed != 0:
            continue
        d = out[(s.problem, s.optimizer, s.lr)]
        sc = score(r)
        if s.seed not in d or sc < d[s.seed]:
            d[s.seed] = sc
    return dict(out)


def _rank_key(lr: float, per_seed: dict) -> tuple:
    vals = list(per_seed.values())
    fin = [v for v in vals if math.isfinite(v)]
    failed = len(vals) - len(fin)
    mean = sum(vals) / len(vals) if not failed else INF
    rest = sum(fin) / len(fin) if fin else INF
    return (mean, failed, rest, lr)


def _within_noise(cand: dict, lead: dict) -> bool:
    """Whether ``cand`` ({seed: score}) is within noise of ``lead`` on their common seeds."""
    fc = sum(1 for v in cand.values() if not math.isfinite(v))
    fl = sum(1 for v in lead.values() if not math.isfinite(v))
    if fc or fl:   # failures are not noise: only an equal count keeps a candidate
        return fc == fl
    d = [cand[s] - lead[s] for s in sorted(cand) if s in lead]
    n = len(d)
    mean, sd = mean_sd(d)
    if n < 2:
        return mean <= 0.0
    # rel. 1e-12: equal scores (a deterministic problem) differ only by rounding.
    return mean <= PROMOTE_T * sd / math.sqrt(n) + 1e-12 * abs(sum(lead.values()) / n)


def promoted(per_seed: dict, rung: int = RUNG_SEEDS) -> tuple:
    """The candidates that get every seed (sorted lrs): the leader on seeds 0..rung-1 and
    those within noise of it (see the module docstring); () while a candidate lacks one
    of those seeds. Only those seeds are looked at, so later seeds never change it."""
    if not per_seed or any(s not in d for d in per_seed.values() for s in range(rung)):
        return ()
    first = {lr: {s: d[s] for s in range(rung)} for lr, d in per_seed.items()}
    lead = min(first, key=lambda lr: _rank_key(lr, first[lr]))
    return tuple(sorted(lr for lr in first
                        if lr == lead or _within_noise(first[lr], first[lead])))


def select_best(records, k: int = CANDIDATES) -> dict:
    """{(problem, optimizer): Selection}: among the candidates of the last rung (the most
    seeds), the one with the best seed-mean val loss."""
    by_seed = seed_scores(records)
    out = {}
    for (p, o), sweep in sweep_scores(records).items():
        grid = tuple(sorted(sweep))
        cands = candidates(sweep, k)
        if not cands:   # every lr failed: nothing to choose, nothing to rerun
            lr = grid[0]
            out[(p, o)] = Selection(lr=lr, score=INF, on_edge=True, grid=grid,
                                    at_bound=S.at_bound(lr), seeds=len(by_seed.get((p, o, lr),
                                                                                  {0: INF})),
                                    candidates=())
            continue
        per = {lr: by_seed.get((p, o, lr), {0: sweep[lr]}) for lr in cands}
        # The last rung first: a candidate left at fewer seeds is never selected.
        keyed = sorted(((-len(per[lr]),) + _rank_key(lr, per[lr]) for lr in cands))
        _, mean, _, _, lr = keyed[0]
        out[(p, o)] = Selection(
            lr=lr, score=mean,
            # A one-point grid brackets nothing, so it counts as on the edge too.
            on_edge=lr == grid[0] or lr == grid[-1], grid=grid, at_bound=S.at_bound(lr),
            seeds=len(by_seed.get((p, o, lr), {0: None})),
            candidates=tuple((c_lr, c_mean) for _, c_mean, _, _, c_lr in keyed),
            promoted=promoted(per))
    return out


# ------------------------------------------------------------------- tuning cost

def expected_best(values, n: int) -> float:
    """Expected minimum of ``n`` draws, uniformly with replacement, from ``values``.

    Dodge et al. 2019 ("Show your work", expected validation performance), for a loss:
    with v_(1) <= ... <= v_(N), P(min of n = v_(i)) = ((N-i+1)/N)^n - ((N-i)/N)^n.
    """
    v = sorted(values)
    big_n = len(v)
    if not big_n or n < 1:
        return INF
    total = 0.0
    for i, x in enumerate(v, start=1):
        p = ((big_n - i + 1) / big_n) ** n - ((big_n - i) / big_n) ** n
        if p:
            total += p * x
    return total


def tuning_cost(records) -> dict:
    """{(problem, optimizer): [(n, expected best val loss), n = 1..N]} over the N lrs
    the search tried (seed 0), by :func:`expected_best`.

    A failed (diverged) lr counts as the larger of its initial validation loss (no
    progress) and the pair's worst finite score, so the curve stays finite and a failure
    is never better than a run that finished; a pair where every lr failed is left out. The search concentrates points near the best lr, so the curve
    is the budget view of *this* search's points, not of log-uniform random search.
    """
    first = {}
    for r in records:
        s = r.spec
        if s.phase == "sweep" and s.seed == 0 and _default(s):
            vl = (r.curves or {}).get("val_loss") or []
            if vl and vl[0] is not None and math.isfinite(float(vl[0])):
                first[(s.problem, s.optimizer, s.lr)] = float(vl[0])
    out = {}
    for (p, o), sweep in sweep_scores(records).items():
        fin = [v for v in sweep.values() if math.isfinite(v)]
        if not fin:
            continue
        worst = max(fin)
        vals = [v if math.isfinite(v) else max(first.get((p, o, lr), worst), worst)
                for lr, v in sweep.items()]
        out[(p, o)] = [(n, expected_best(vals, n)) for n in range(1, len(vals) + 1)]
    return out
