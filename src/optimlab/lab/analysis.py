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
from .spec import RunRecord, RunSpec
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

@dataclass(frozen=True)
class Sensitivity:
    """Learning-rate sensitivity of one (problem, optimizer).

    width: log10(hi / lo) in decades, where [lo, hi] is the contiguous run of searched
    lrs (seed-0 sweep) around the best one whose val loss is <= threshold. It is
    measured on the searched points, so it is quantised by their local spacing: a
    quarter decade around the best after the search's refinement (a whole decade
    further out, or everywhere with a one-per-decade ``--lrs`` grid); 0 means only the
    best lr qualified.
    threshold: best + 10% of the gap of best above the reference, where the reference
    is the problem optimum when known (and below best), else 0 when best > 0, else
    |best| is used as the scale.
    """

    width: float
    lo: float
    hi: float
    threshold: float


TOLERANCE = 0.10


def threshold(best: float, optimum: float | None, tol: float = TOLERANCE) -> float:
    """Val-loss threshold for 'within tol of best' (see Sensitivity)."""
    if not math.isfinite(best):
        return INF
    if optimum is not None and optimum <= best:
        scale = best - optimum
    else:
        scale = abs(best)
    return best + tol * scale


def sensitivity(records, tol: float = TOLERANCE) -> dict:
    """{(problem, optimizer): Sensitivity} from the seed-0 sweep."""
    opt = optima(records)
    out = {}
    for (p, o), curve in sweep_curves(records).items():
        lrs = [c[0] for c in curve]
        scores = [c[1] for c in curve]
        best = min(range(len(curve)), key=lambda i: (scores[i], lrs[i]))
        thr = threshold(scores[best], opt.get(p), tol)
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
    """Positive costs from the best val score, for performance_profile.

    cost = best val loss - reference (floored at 1e-12 relative, so reaching the
    optimum exactly is a finite, very good cost); reference = the problem optimum when
    known and not above any score, else 0 when every finite score is > 0. Problems where
    neither holds (negative losses, no optimum) are left out: ratios are undefined.
    """
    selections = select_best(records) if selections is None else selections
    opt = optima(records)
    by_p = defaultdict(dict)
    for (p, o), s in selections.items():
        by_p[p][o] = s.score
    out = {}
    for p, c in by_p.items():
        fin = [v for v in c.values() if math.isfinite(v)]
        if not fin:
            continue
        ref = opt.get(p)
        ref = 0.0 if ref is None else ref
        # Relative tolerance: a score equal to the optimum up to rounding still counts.
        eps = 1e-12 * (1 + abs(ref))
        if min(fin) < ref - eps:
            # Scores below the reference (val loss under the train optimum): fall back to 0.
            ref, eps = 0.0, 1e-12
            if min(fin) <= 0:
                continue
        out[p] = {o: (max(v - ref, eps) if math.isfinite(v) else INF) for o, v in c.items()}
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


# ------------------------------------------------------------------ bias correction

BIAS_PHASE = "bias-correction"


def bias_correction_specs(problem: str, lrs, betas2, steps: int, seed: int = 0,
                          schedule: str = "constant") -> list:
    """RunSpecs for the Adam-paper Fig. 4 analogue: Adam, beta1 = 0.9, every beta2 x
    bias_correction in {False, True} x lr, in phase "bias-correction"."""
    return [RunSpec(problem=problem, optimizer="adam", lr=float(lr), seed=seed, steps=steps,
                    schedule=schedule,
                    hyperparameters=(("betas", (0.9, float(b2))), ("bias_correction", bc)),
                    phase=BIAS_PHASE)
            for b2 in betas2 for bc in (False, True) for lr in lrs]


def bias_correction_curves(records) -> dict:
    """{problem: {(beta2, bias_correction): [(lr, val score), ...] sorted by lr}} from
    runs whose hyperparameters set both ``betas`` and ``bias_correction``."""
    out = defaultdict(lambda: defaultdict(list))
    for r in records:
        try:
            hp = dict(r.spec.hyperparameters)
            b2 = float(hp["betas"][1])
            bc = bool(hp["bias_correction"])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        out[r.spec.problem][(b2, bc)].append((r.spec.lr, score(r)))
    return {p: {k: sorted(v) for k, v in sorted(d.items())} for p, d in sorted(out.items())}
