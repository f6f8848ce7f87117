"""Pure analysis over run records: selection, sensitivity, aggregates, profiles.

Every function here takes ``list[RunRecord]`` (plus plain values) and returns plain
data; nothing reads or writes files, so the report is a pure function of the store.

Conventions
-----------
* A run's *score* is its final validation loss; a diverged or errored run, or a
  non-finite loss, scores ``inf``. The test split is never used for any choice.
* Learning rates are searched on the seed-0 ``"sweep"`` phase (:mod:`.search`) and
  selected among the best few on their seed-mean validation loss (:mod:`.selection`),
  with default hyperparameters (``spec.hyperparameters == ()``). Other phases
  ("bias-correction", "schedules", ...) never enter the selection.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from . import selection as _selection
from .selection import Selection, score, tuning_cost  # noqa: F401  (public here too)
from . import stats as S
from .bias_correction import (BIAS_PHASE, bias_correction_curves,  # noqa: F401  (public here)
                              bias_correction_specs)
from .stats import mean_sd

INF = float("inf")


def _sweep(records):
    """Seed-0 sweep runs with default hyperparameters, grouped by (problem, optimizer)."""
    groups = defaultdict(list)
    for r in records:
        s = r.spec
        if s.phase == "sweep" and s.seed == 0 and tuple(s.hyperparameters) == ():
            groups[(s.problem, s.optimizer)].append(r)
    return groups


def sweep_curves(records) -> dict:
    """{(problem, optimizer): [(lr, score, status), ...]} sorted by lr (sweep phase)."""
    out = {}
    for key, rs in _sweep(records).items():
        best = {}
        for r in rs:
            # Duplicate lrs (e.g. different schedules) keep the better score.
            sc = score(r)
            if r.spec.lr not in best or sc < best[r.spec.lr][0]:
                best[r.spec.lr] = (sc, r.status)
        out[key] = sorted((lr, sc, st) for lr, (sc, st) in best.items())
    return out


def select_best(records) -> dict:
    """Selected learning rate per (problem, optimizer): the best seed-0 candidates of the
    sweep, chosen on their seed-mean validation loss (see :mod:`.selection`)."""
    return _selection.select_best(records)


# ----------------------------------------------------------------------------- helpers

def optimizers(records) -> list:
    """Sorted optimizer names (fixes the colour order used by every plot)."""
    return sorted({r.spec.optimizer for r in records})


def problems(records) -> list:
    """Sorted problem names."""
    return sorted({r.spec.problem for r in records})


def optima(records) -> dict:
    """{problem: optimum or None}, recovered as ``train_loss - gap`` from any ok run."""
    out = {}
    for r in records:
        f = r.final or {}
        out.setdefault(r.spec.problem, None)
        if out[r.spec.problem] is None and f.get("gap") is not None \
                and f.get("train_loss") is not None:
            opt = float(f["train_loss"]) - float(f["gap"])
            if math.isfinite(opt):
                out[r.spec.problem] = opt
    return out


def _finite(xs):
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def _stats(xs):
    xs = _finite(xs)
    if not xs:
        return None
    # Sample std (ddof=1) with a single seed reported as 0.
    m, sd = mean_sd(xs)
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs)}


def _median(xs):
    xs = sorted(_finite(xs))
    if not xs:
        return None
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else 0.5 * (xs[k - 1] + xs[k])


# ----------------------------------------------------------------------- sensitivity

def start_loss(runs) -> float | None:
    """Median starting val loss of ``runs`` (the upper median, as the verdicts' floors;
    None when no run has one)."""
    xs = sorted(float(v[0]) for v in ((r.curves or {}).get("val_loss") or [] for r in runs)
                if v and v[0] is not None and math.isfinite(float(v[0])))
    return xs[len(xs) // 2] if xs else None


def floors(records) -> dict:
    """{problem: stats.optimum_floor of its optimum and median starting val loss}: the
    verdicts' floor (``verdicts.floors``), for the claims, the lr width and the profile."""
    by_p = defaultdict(list)
    for r in records:
        by_p[r.spec.problem].append(r)
    opt = optima(records)
    return {p: S.optimum_floor(opt.get(p), start_loss(rs)) for p, rs in by_p.items()
            if start_loss(rs) is not None}


@dataclass(frozen=True)
class Sensitivity:
    """Learning-rate sensitivity of one (problem, optimizer).

    width: log10(hi / lo) in decades, where [lo, hi] is the contiguous run of searched
    lrs (seed-0 sweep) around the best one whose val loss is <= threshold. It is
    measured on the searched points, so it is quantised by their local spacing: a
    quarter decade around the best after the search's refinement (a whole decade
    further out, or everywhere with a one-per-decade ``--lrs`` grid); 0 means only the
    best lr qualified.
    threshold: see :func:`threshold`.
    """

    width: float
    lo: float
    hi: float
    threshold: float


TOLERANCE = 0.10


def threshold(best: float, optimum: float | None, tol: float = TOLERANCE,
              floor: float = -INF, start: float | None = None) -> float:
    """Val-loss threshold for 'within tol of best'.

    best counts as the optimum floor when below it (runs that reached the optimum tie,
    as in the verdicts). The gap is the smaller of best's excess over the optimum (over
    0 when the optimum is unknown and best > 0) and the learning range start - best, so
    an lr that learned nothing is never within tol of the best. A loss equal to best to
    stats.RTOL always qualifies (the verdicts' resolution).
    """
    if not math.isfinite(best):
        return INF
    b = max(best, floor)
    gaps = []
    if optimum is not None and math.isfinite(optimum):
        gaps.append(max(b - optimum, 0.0))
    elif b > 0:
        gaps.append(b)
    if start is not None and math.isfinite(start):
        gaps.append(max(start - b, 0.0))
    gap = min(gaps) if gaps else abs(b)
    return max(b + tol * gap, b + S.RTOL * abs(b))


def sensitivity(records, tol: float = TOLERANCE, selections=None) -> dict:
    """{(problem, optimizer): Sensitivity} from the seed-0 sweep, around the seed-0 sweep's
    best lr, or around the selected lr (``selections``, :func:`select_best`: chosen on seed
    means) where it is on the sweep, so the width belongs to the lr the report shows."""
    opt, fl, sweeps = optima(records), floors(records), _sweep(records)
    out = {}
    for (p, o), curve in sweep_curves(records).items():
        lrs = [c[0] for c in curve]
        scores = [c[1] for c in curve]
        best = min(range(len(curve)), key=lambda i: (scores[i], lrs[i]))
        chosen = (selections or {}).get((p, o))
        if chosen is not None and chosen.lr in lrs and math.isfinite(scores[lrs.index(chosen.lr)]):
            best = lrs.index(chosen.lr)
        thr = threshold(scores[best], opt.get(p), tol, fl.get(p, -INF),
                        start_loss(sweeps.get((p, o), [])))
        if not math.isfinite(thr):
            out[(p, o)] = Sensitivity(0.0, lrs[best], lrs[best], thr)
            continue
        lo = hi = best
        while lo > 0 and scores[lo - 1] <= thr:
            lo -= 1
        while hi < len(curve) - 1 and scores[hi + 1] <= thr:
            hi += 1
        out[(p, o)] = Sensitivity(math.log10(lrs[hi] / lrs[lo]), lrs[lo], lrs[hi], thr)
    return out


# ------------------------------------------------------------------------ aggregates

def best_runs(records, selections=None) -> dict:
    """{(problem, optimizer): [records at the best lr]}: the seed-0 sweep run plus
    the "seeds" phase reruns (default hyperparameters), sorted by seed."""
    selections = select_best(records) if selections is None else selections
    out = defaultdict(list)
    for r in records:
        s = r.spec
        key = (s.problem, s.optimizer)
        if key in selections and s.lr == selections[key].lr and \
                s.phase in ("sweep", "seeds") and tuple(s.hyperparameters) == ():
            if s.phase == "sweep" and s.seed != 0:
                continue
            out[key].append(r)
    return {k: sorted(v, key=lambda r: r.spec.seed) for k, v in out.items()}


FINAL_KEYS = ("train_loss", "val_loss", "test_loss", "val_metric", "test_metric",
              "gap", "steps_to_target")


def aggregate(records, selections=None) -> dict:
    """Final metrics over seeds at the best lr.

    {(problem, optimizer): {"seeds": n, "diverged": n_failed, "reached": n runs that
    hit the target, key: {"mean","std","min","max","n"} or None for FINAL_KEYS}}.
    Failed runs are counted in "diverged" and left out of the statistics.
    """
    out = {}
    for key, rs in best_runs(records, selections).items():
        ok = [r for r in rs if r.status == "ok"]
        row = {"seeds": len(rs), "diverged": len(rs) - len(ok),
               "reached": sum(1 for r in ok if (r.final or {}).get("steps_to_target")
                              is not None)}
        for k in FINAL_KEYS:
            row[k] = _stats([(r.final or {}).get(k) for r in ok])
        out[key] = row
    return out


def time_per_step(records, baseline: str = "sgd") -> dict:
    """{(problem, optimizer): median seconds_per_step / the baseline's on that problem}.

    Medians over every default-hyperparameter run (all lrs and seeds) are robust to
    a few slow steps. None where the baseline did not run on the problem.
    """
    per = defaultdict(list)
    for r in records:
        if tuple(r.spec.hyperparameters) == () and r.seconds_per_step:
            per[(r.spec.problem, r.spec.optimizer)].append(r.seconds_per_step)
    med = {k: _median(v) for k, v in per.items()}
    out = {}
    for (p, o), m in med.items():
        b = med.get((p, baseline))
        out[(p, o)] = m / b if (m is not None and b) else None
    return out


# ------------------------------------------------------------- profiles and ranks

def performance_profile(costs: dict, taus) -> dict:
    """Dolan & Moré (2002) performance profile.

    costs: {problem: {optimizer: cost > 0, inf = failed}}. For each optimizer,
    rho(tau) = fraction of problems with cost <= tau * (best cost on that problem).
    Problems where every optimizer failed count as failures for all. An optimizer
    missing on a problem counts as failed there.
    """
    opts = sorted({o for c in costs.values() for o in c})
    out = {o: [] for o in opts}
    n = len(costs)
    for tau in taus:
        hits = defaultdict(int)
        for c in costs.values():
            best = min(c.values(), default=INF)
            if not math.isfinite(best) or best <= 0:
                continue
            for o, v in c.items():
                # Relative slack so that tau == 1 includes ties despite rounding.
                if v <= tau * best * (1 + 1e-12):
                    hits[o] += 1
        for o in opts:
            out[o].append(hits[o] / n if n else 0.0)
    return out


def score_costs(records, selections=None) -> dict:
    """Positive costs from the selected seed-mean val losses, for performance_profile,
    under the verdicts' evidence rules.

    Where the optimum is known: cost = max(loss - optimum, the optimum floor's gap), so
    runs that reached the optimum cost the same. Without it: cost = the loss itself
    when every finite loss is > 0; problems where neither holds (negative losses) are
    left out: ratios are undefined. Every optimizer keeps its own cost, tied or not: the
    profile reads "within a factor τ of the best", and a tie is the verdicts' to show.
    """
    selections = select_best(records) if selections is None else selections
    opt, fl = optima(records), floors(records)
    by_p = defaultdict(dict)
    for (p, o), s in selections.items():
        by_p[p][o] = s.score
    out = {}
    for p, c in by_p.items():
        fin = [v for v in c.values() if math.isfinite(v)]
        ref, floor = opt.get(p), fl.get(p, -INF)
        if ref is not None:
            # Without a starting loss there is no floor: rounding of the optimum itself.
            gap = floor - ref if math.isfinite(floor) and floor > ref else 1e-12 * (1 + abs(ref))
            cost = {o: max(v - ref, gap) for o, v in c.items()}
        elif fin and min(fin) > 0:
            cost = dict(c)
        else:
            continue
        out[p] = cost
    return out


def steps_costs(records, selections=None) -> dict:
    """Costs = mean steps to target at the best lr (inf when never reached)."""
    agg = aggregate(records, selections)
    by_p = defaultdict(dict)
    for (p, o), row in agg.items():
        st = row["steps_to_target"]
        # Seeds that missed the target make the pair a failure: a fair cost needs all.
        ok = st is not None and row["reached"] == row["seeds"] and st["mean"] > 0
        by_p[p][o] = st["mean"] if ok else INF
    return {p: c for p, c in by_p.items() if any(math.isfinite(v) for v in c.values())}


def ranks(selections: dict) -> dict:
    """{problem: {optimizer: rank}} by best val score; 1 = best, ties share the mean rank."""
    by_p = defaultdict(dict)
    for (p, o), s in selections.items():
        by_p[p][o] = s.score
    out = {}
    for p, c in by_p.items():
        items = sorted(c.items(), key=lambda t: t[1])
        out[p] = {}
        i = 0
        while i < len(items):
            j = i
            while j + 1 < len(items) and items[j + 1][1] == items[i][1]:
                j += 1
            for k in range(i, j + 1):
                out[p][items[k][0]] = (i + j) / 2 + 1
            i = j + 1
    return out


def mean_ranks(rank_table: dict) -> dict:
    """{optimizer: mean rank over the problems it ran on}."""
    acc = defaultdict(list)
    for row in rank_table.values():
        for o, r in row.items():
            acc[o].append(r)
    return {o: sum(v) / len(v) for o, v in acc.items()}


def best_per_kind(selections: dict, kinds: dict) -> dict:
    """{kind: {"optimizer", "mean_rank", "lrs": {problem: lr}, "problems"}}.

    The winner of a kind is the optimizer with the lowest mean rank over its problems
    (ties: alphabetical); ``lrs`` gives its selected lr on each of them.
    """
    table = ranks(selections)
    by_kind = defaultdict(list)
    for p in table:
        by_kind[kinds.get(p, "unknown")].append(p)
    out = {}
    for kind, ps in sorted(by_kind.items()):
        mr = mean_ranks({p: table[p] for p in ps})
        winner = min(sorted(mr), key=lambda o: mr[o])
        out[kind] = {"optimizer": winner, "mean_rank": mr[winner], "problems": sorted(ps),
                     "lrs": {p: selections[(p, winner)].lr for p in ps
                             if (p, winner) in selections},
                     "failed": all(not math.isfinite(selections[(p, winner)].score)
                                   for p in ps if (p, winner) in selections)}
    return out
