"""The background articles' claims, each put to a test computed from the run records.

``evaluate(records, meta)`` returns one dict per claim: ``{"id", "claim", "verdict",
"evidence"}`` with verdict ``supported`` | ``contradicted`` | ``inconclusive`` | ``not run``.
Pure: no I/O, the same records give the same verdicts.

Conventions shared by every claim
---------------------------------
* Scores are final validation losses (``analysis.score``; a failed run is inf) of the
  *selected* runs (``analysis.select_best`` + ``analysis.best_runs``: the selected lr of each
  (problem, optimizer), every seed). Lower is better for every statistic. The verdicts'
  evidence rules hold here too: a loss below the problem's optimum floor
  (``analysis.floors``, see ``stats.optimum_floor``) counts as the floor, so two runs that
  reached the optimum tie, and seed means equal to ``stats.RTOL`` tie.
* Two samples are compared **paired by seed** (same initial weights and batch order) with
  ``stats.claim_test`` ("is a better than b?": supported / contradicted / inconclusive),
  one-sided each way at ALPHA / 2, i.e. a two-sided test at ALPHA. Each comparison also
  reports the mean paired difference a - b with its 95% t-interval (``stats.mean_ci``),
  failures censored at the worst finite value of the pair (``claim_measures.censor``).
  Where both trained on every seed, a comparison is decided exactly when that interval
  excludes 0 (means equal to ``stats.RTOL``, and zero spread on fewer than
  ``stats.ZERO_SPREAD_N`` seeds or on a quantised measure, stay inconclusive). A side
  that failed where the other trained is the worse one, as in the verdicts: the
  failures decide, and the evidence says so (``decided_by``); claim 7 is the exception
  (see there).
* A claim tested on several units (problems, or (problem, optimizer) pairs) is decided
  by **majority**: supported when more than half of the units support it, contradicted
  when more than half contradict it, inconclusive otherwise.
* "not run": the comparison lacks the optimizers, problems or phases the test needs.
* "Adaptive" optimizers: ``claim_measures.ADAPTIVE``; non-adaptive: sgd, momentum,
  nesterov. "Best of a group" on a problem: the member with the lowest seed-mean score.
"""

from __future__ import annotations

from . import analysis as A
from . import claim_measures as M

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = (
    "supported", "contradicted", "inconclusive", "not run")
#: Two-sided error rate of every comparison: the shown intervals are 1 - ALPHA = 95%.
ALPHA = 0.05
#: Fewest seeds for claim 2's spread test: with 2, both seeds' deviations from their
#: median are equal by construction (|x1 - x2| / 2), so the paired test has nothing to use.
SPREAD_SEEDS = 3
#: Practical-equivalence margin of claim 4, as a fraction of the best excess loss (the same
#: 10% that defines the lr width in ``analysis.sensitivity``).
TOLERANCE = A.TOLERANCE

CLAIMS = {
    1: "Sparse data: adaptive-lr methods (Adagrad, RMSprop, Adam, ...) do best, even at "
       "their default learning rates.",
    2: "SGD trains longer, but with a good learning-rate schedule its result is as good as "
       "adaptive methods' and more reliable (lower spread over seeds).",
    3: "On complex networks adaptive methods converge faster (steps to a target).",
    4: "Adadelta, RMSprop and Adam perform about the same in similar situations.",
    5: "Where RMSprop with momentum or Adam would be used, NAdam usually does better.",
    6: "Momentum accelerates along consistent directions and damps oscillation across a "
       "ravine.",
    7: "Adam's bias correction matters early in training, most with beta2 close to 1.",
    8: "Too large a learning rate oscillates or diverges; too small converges slowly.",
    9: "A decaying schedule (step, cosine, with or without warmup) beats a constant learning "
       "rate at the same budget.",
    10: "Different learning rates for different layers (layer-wise decay) improve results "
        "over one uniform rate.",
}


# ----------------------------------------------------------------------- helpers

def _ci(values, level: float = 1 - ALPHA) -> dict | None:
    from .stats import mean_ci

    values = list(values)
    if not values:
        return None
    ci = mean_ci(values, level)
    return {"mean": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n, "level": level}


def test(a: dict, b: dict, alpha: float = ALPHA, floor: float = -M.INF, exact: bool = True,
         failures_decide: bool = True) -> tuple:
    """(verdict, numbers) of "a is lower than b", paired on the common keys where at least
    one side trained: a two-sided test at ``alpha`` (one-sided at alpha / 2 each way), so
    the verdict agrees with the (1 - alpha) interval of the difference in "diff".

    floor: the problem's optimum floor (``analysis.floors``): losses below it are the
    floor, as in the verdicts (both at the optimum: a tie). exact=False: a quantised or
    censored measure, whose zero spread proves nothing (``stats.paired_t``).
    failures_decide: a side that failed where the other trained is the worse one (the
    verdicts' rule; numbers["decided_by"] = "failures" when it decided); False: failures
    enter as the worst finite value of the pair and the interval alone decides.
    """
    from .stats import claim_test, mean_sd

    a, b = M.floored(a, floor), M.floored(b, floor)
    ca, cb = M.censor(a, b)
    if not ca:
        return INCONCLUSIVE, {"n": 0}
    fa = sorted((k for k in ca if not M.finite(a[k])), key=str)
    fb = sorted((k for k in ca if not M.finite(b[k])), key=str)
    x, y = ({k: a[k] for k in ca}, {k: b[k] for k in ca}) if failures_decide else (ca, cb)
    verdict = claim_test(x, y, alpha=alpha / 2, exact=exact)
    nums = {"n": len(ca), "mean_a": M.mean(ca.values()), "mean_b": M.mean(cb.values()),
            "diff": _ci((ca[k] - cb[k] for k in ca), 1 - alpha), "failed_a": fa,
            "failed_b": fb}
    if failures_decide and bool(fa) != bool(fb):
        nums["decided_by"] = "failures"
    both = [k for k in ca if M.finite(a[k]) and M.finite(b[k])]
    if both and all(a[k] == b[k] == floor for k in both):
        nums["tie"] = "optimum"
    elif both and M.close(M.mean(a[k] for k in both), M.mean(b[k] for k in both)):
        nums["tie"] = "resolution"
    if not exact and len(both) > 1 and mean_sd([a[k] - b[k] for k in both])[1] == 0:
        nums["zero_spread"] = True
    return verdict, nums


def majority(verdicts) -> str:
    """The majority rule over per-unit verdicts (see the module docstring)."""
    verdicts = list(verdicts)
    if not verdicts:
        return NOT_RUN
    for v in (SUPPORTED, CONTRADICTED):
        if sum(x == v for x in verdicts) * 2 > len(verdicts):
            return v
    return INCONCLUSIVE


def _result(cid, verdict, experiment, units=(), **extra) -> dict:
    ev = {"experiment": experiment, "units": list(units), **extra}
    return {"id": cid, "claim": CLAIMS[cid], "verdict": verdict, "evidence": ev}


def _not_run(cid, experiment, reason) -> dict:
    return _result(cid, NOT_RUN, experiment, reason=reason)


class _Data:
    """What every claim reads, computed once."""

    def __init__(self, records, meta, info=None):
        self.records = list(records)
        self.meta = dict(meta or {})
        self.info = M.kinds_and_info(self.records, self.meta, info)
        self.selections = A.select_best(self.records)
        self.best = {k: rs for k, rs in A.best_runs(self.records, self.selections).items()
                     if rs}
        self.problems = sorted({p for p, _ in self.best})
        self.floors = A.floors(self.records)

    def kind(self, p):
        return self.info.get(p, {}).get("kind", "unknown")

    def scores(self, p, o) -> dict:
        return M.by_seed(self.best.get((p, o), []))

    def floor(self, p) -> float:
        """The verdicts' optimum floor of ``p`` (-inf when unknown)."""
        return self.floors.get(p, -M.INF)

    def ran(self, p, o) -> bool:
        return (p, o) in self.best


# ------------------------------------------------------------------------ claims

def claim1(d: _Data) -> dict:
    """Claim 1 — sparse data favours adaptive methods, even at their default lr.

    Problems of kind "sparse" with at least one adaptive and one non-adaptive optimizer.
    (a) Tuned: the best adaptive vs the best non-adaptive optimizer, each at its selected
    lr, seed-paired final val loss (``test``). (b) Defaults: the best seed-0 sweep score of
    the adaptive optimizers at the swept lr nearest (in log10) to each one's default lr
    (within half a decade) vs the best non-adaptive optimizer's tuned seed-0 score; one
    seed, so descriptive. Per problem: contradicted if (a) is contradicted; supported if
    (a) is supported and (b) holds (or no default-lr run exists, then said so);
    inconclusive otherwise.
    """
    exp = ("sparse problems: best adaptive vs best non-adaptive optimizer at their selected "
           "lrs (paired final val loss), and adaptive at default lr vs tuned non-adaptive "
           "(seed 0)")
    units = []
    for p in d.problems:
        if d.kind(p) != "sparse":
            continue
        ad, na = M.group_best(d.best, p, M.ADAPTIVE), M.group_best(d.best, p, M.NON_ADAPTIVE)
        if ad is None or na is None:
            continue
        va, nums = test(d.scores(p, ad), d.scores(p, na), floor=d.floor(p))
        dflt = _default_lr_scores(d, p)
        tuned0 = d.scores(p, na).get(0, M.INF)
        best_default = min(dflt.items(), key=lambda t: t[1][1]) if dflt else None
        holds = None if best_default is None else \
            max(best_default[1][1], d.floor(p)) <= max(tuned0, d.floor(p))
        verdict = (CONTRADICTED if va == CONTRADICTED else
                   SUPPORTED if va == SUPPORTED and holds is not False else INCONCLUSIVE)
        units.append({"problem": p, "adaptive": ad, "non_adaptive": na, "tuned": va, **nums,
                      "default_lr": {o: {"lr": lr, "val_loss": s} for o, (lr, s) in dflt.items()},
                      "non_adaptive_tuned_seed0": tuned0, "defaults_hold": holds,
                      "verdict": verdict})
    if not units:
        return _not_run(1, exp, "needs a 'sparse' problem with adaptive and non-adaptive "
                                "optimizers")
    return _result(1, majority(u["verdict"] for u in units), exp, units)


def _default_lr_scores(d: _Data, p) -> dict:
    """{adaptive optimizer: (swept lr nearest its default, seed-0 score)}."""
    import inspect
    import math

    import optimlab

    out = {}
    for (pp, o), curve in A.sweep_curves(d.records).items():
        if pp != p or o not in M.ADAPTIVE:
            continue
        try:
            default = inspect.signature(optimlab.lookup(o).cls).parameters["lr"].default
            lr, sc, _ = min(curve, key=lambda t: abs(math.log10(t[0] / default)))
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
        if abs(math.log10(lr / default)) <= 0.5:
            out[o] = (lr, sc)
    return out


def claim2(d: _Data) -> dict:
    """Claim 2 — scheduled SGD is as good as adaptive methods and more reliable.

    Phase "schedules" on each neural problem with both sgd and adam: each optimizer at its
    best schedule (lowest seed-mean val loss over constant, step, cosine, warmup+cosine,
    all at its selected lr; picking the best on the same seeds favours both equally).
    Quality: ``test(sgd, adam)``; "as good" = not contradicted (Adam not significantly
    better). Reliability: the seeds' absolute deviations from their own median,
    ``test(|sgd - median|, |adam - median|)`` (a paired Brown-Forsythe-style spread test).
    The spread test needs SPREAD_SEEDS seeds (inconclusive with fewer, with a note).
    Per problem: contradicted if Adam is significantly better or SGD's spread
    significantly larger; supported if quality is not contradicted and the spread test is
    supported; inconclusive otherwise. "SGD trains longer" is not tested here (claim 3
    measures speed).
    """
    exp = ("phase 'schedules' on the neural problems: sgd vs adam, each at its best "
           "schedule; paired final val loss and paired absolute deviation from the median")
    groups = M.runs_by_variant(d.records, "schedules", d.best, lambda r: r.spec.schedule)
    units = []
    for p in d.problems:
        if (p, "sgd") not in groups or (p, "adam") not in groups:
            continue
        pick = {}
        for o in ("sgd", "adam"):
            per = {s: M.by_seed(rs) for s, rs in groups[(p, o)].items()}
            sched = min(per, key=lambda s: (M.mean(per[s].values()), s))
            pick[o] = (sched, per[sched])
        (ss, a), (sa, b) = pick["sgd"], pick["adam"]
        a, b = M.floored(a, d.floor(p)), M.floored(b, d.floor(p))
        q, qn = test(a, b)
        ca, cb = M.censor(a, b)
        r, rn = test(_deviation(ca), _deviation(cb))
        if len(ca) < SPREAD_SEEDS:
            r, rn = INCONCLUSIVE, {**rn, "note": f"not enough seeds for the spread test "
                                                 f"({len(ca)}; it needs {SPREAD_SEEDS})"}
        verdict = (CONTRADICTED if CONTRADICTED in (q, r) else
                   SUPPORTED if r == SUPPORTED else INCONCLUSIVE)
        units.append({"problem": p, "sgd_schedule": ss, "adam_schedule": sa, "quality": q,
                      "quality_numbers": qn, "spread": r, "spread_numbers": rn,
                      "verdict": verdict})
    if not units:
        return _not_run(2, exp, "needs the 'schedules' phase with sgd and adam on a neural "
                                "problem")
    return _result(2, majority(u["verdict"] for u in units), exp, units)


def _deviation(x: dict) -> dict:
    vals = sorted(x.values())
    n = len(vals)
    med = vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])
    return {k: abs(v - med) for k, v in x.items()}


def margin(means: dict, optimum, floor: float) -> float:
    """Claim 4's equivalence margin: TOLERANCE x the best seed mean's excess over the
    optimum, the best counting as the optimum floor when below it (x |best| without a
    known optimum), and never below the verdicts' resolution stats.RTOL x |best|."""
    from .stats import RTOL

    best = max(min(means.values()), floor)
    if not M.finite(best):
        return M.INF
    scale = best - optimum if M.finite(optimum) and optimum <= best else abs(best)
    return max(TOLERANCE * scale, RTOL * abs(best))


def claim4(d: _Data) -> dict:
    """Claim 4 — Adadelta, RMSprop and Adam perform about the same.

    Every problem where all three ran, losses below the optimum floor counted as the
    floor. An equivalence test (TOST) per pair with the margin of :func:`margin`. Per
    problem: supported when every pair's 95% CI of the paired difference lies within
    [-m, m] (TOST at ALPHA / 2 per side: the interval shown decides); contradicted when some pair's 95% CI lies entirely outside
    it (a difference larger than the margin) or one of them fails on seeds where another
    trains; inconclusive otherwise.
    """
    from .stats import mean_ci

    trio = ("adadelta", "rmsprop", "adam")
    exp = ("every problem with adadelta, rmsprop and adam: pairwise equivalence test (TOST, "
           f"margin {TOLERANCE:.0%} of the best excess loss over the optimum floor) on "
           "paired final val loss")
    units = []
    for p in d.problems:
        if not all(d.ran(p, o) for o in trio):
            continue
        s = {o: M.floored(d.scores(p, o), d.floor(p)) for o in trio}
        failed = {o: any(not M.finite(v) for v in s[o].values()) for o in trio}
        means = {o: M.mean(s[o].values()) for o in trio}
        m = margin(means, d.info[p].get("optimum"), d.floor(p))
        pairs, verdict = [], SUPPORTED
        for i, o1 in enumerate(trio):
            for o2 in trio[i + 1:]:
                dd = M.diffs(s[o1], s[o2])
                if len(dd) < 2:
                    verdict = INCONCLUSIVE if verdict == SUPPORTED else verdict
                    continue
                c95 = mean_ci(dd, level=1 - ALPHA)
                same = -m <= c95.lo and c95.hi <= m
                apart = c95.lo > m or c95.hi < -m
                pairs.append({"a": o1, "b": o2, "diff": {"mean": c95.mean, "lo95": c95.lo,
                              "hi95": c95.hi, "n": c95.n},
                              "equivalent": same, "different": apart})
                if apart:
                    verdict = CONTRADICTED
                elif not same and verdict == SUPPORTED:
                    verdict = INCONCLUSIVE
        if len(set(failed.values())) > 1:
            verdict = CONTRADICTED
        at_floor = any(v == d.floor(p) for o in trio for v in s[o].values())
        units.append({"problem": p, "margin": m, "floor": d.floor(p) if at_floor else None,
                      "means": means,
                      "failed_seeds": failed, "pairs": pairs, "verdict": verdict})
    if not units:
        return _not_run(4, exp, "needs adadelta, rmsprop and adam in the comparison")
    return _result(4, majority(u["verdict"] for u in units), exp, units)


from .claims_speed import claim3, claim6  # noqa: E402
from .claims_more import claim5, claim7, claim8, claim9, claim10  # noqa: E402

FUNCTIONS = (claim1, claim2, claim3, claim4, claim5, claim6, claim7, claim8, claim9, claim10)


def evaluate(records, meta=None, info=None) -> list:
    """Every claim's verdict and evidence, in claim order (see the module docstring).

    info: optional {problem: {"kind", "optimum", "target", "description"}}; by default the
    store meta's problem_info, else the problems registry.
    """
    d = _Data(records, meta, info)
    return [f(d) for f in FUNCTIONS]
