"""Statistics over seeds: confidence intervals, paired tests, verdicts (tie-aware ranks:
:mod:`.ranks`).

Pure functions on plain numbers (no numpy/scipy needed); the report, ``--json`` and the
claims all draw their uncertainty from here so that they agree.

Method (stated in the report)
-----------------------------
* **Interval**: Student-t interval of the mean over seeds,
  ``mean +- t_{1-(1-level)/2, n-1} * sd / sqrt(n)`` (sd with ddof=1).
* **Pairing**: runs of different optimizers with the same seed share initial weights
  and batch order, so comparisons use the per-seed differences on the seeds both have.
* **Verdict** (:func:`compare_to_best`): the best optimizer is the one with the lowest
  seed-mean loss; the others are tested against it together with a step-down max-t
  procedure (Westfall & Young 1993) on paired t statistics, whose null distribution
  re-picks the best in every draw, so the family-wise error rate stays at ``alpha``
  including the choice of the best. The optimizers whose adjusted p-value is
  >= ``alpha`` are *statistically indistinguishable* from the best; the tied group is
  the best and those of them that no significantly worse optimizer precedes in mean
  order (so ranks follow the means).
* **Resolution**: seed means that agree to ``RTOL`` (relative 1e-5) are equal, whatever
  the test says: deterministic (full-batch) problems give zero-spread differences of a
  few float32 ulps that no reader should take for a winner.
* **Optimum floor**: where a problem's optimum is known, a loss within float32's
  epsilon of the starting gap (``f* + EPS32 * (start - f*)``) has reached the optimum:
  the tests see it as that floor (1e-289 and 1e-20 on a problem that started at 10 are
  both "reached it"); means and intervals keep the raw values.
* **Failures**: a diverged / errored run scores ``+inf``. Infinite losses cannot enter
  a t-test, so they follow fixed rules (see :func:`compare_to_best`).

References: Student (1908); Westfall & Young, "Resampling-Based Multiple Testing"
(Wiley 1993), step-down maxT; Student's t distribution: :mod:`.student_t`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .max_t_null import p_max_t as _p_max_t
from .student_t import t_ppf, t_sf

INF = float("inf")

__all__ = ["RTOL", "EPS32", "optimum_floor", "CI", "Verdict", "mean_sd", "mean_ci", "paired",
           "paired_t", "ZERO_SPREAD_N", "compare_to_best", "claim_test", "t_sf", "t_ppf",
           "METHOD"]

#: One sentence describing the method, for the report's protocol text.
METHOD = ("mean over seeds with a 95% Student-t confidence interval; optimizers are "
          "compared with the best by paired t statistics (paired by seed: same initial "
          "weights and batch order) in a step-down max-t test whose null distribution "
          "re-picks the best in every draw (family-wise error 5%, the choice of the best "
          "included; Westfall & Young 1993); seed means equal "
          "to 5 significant digits count as equal; a loss within float32's epsilon of the "
          "starting gap to a known optimum counts as having reached it (ties with any "
          "other such loss); a diverged run counts as a failure, worse than any finite loss")


# ------------------------------------------------------------------ intervals

@dataclass(frozen=True)
class CI:
    """Mean of ``n`` finite values and its confidence interval [lo, hi].

    n = 0 gives mean = lo = hi = nan; n = 1 gives lo = hi = mean (no spread is
    estimable, so the interval is degenerate, not zero-width evidence).
    """

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return 0.5 * (self.hi - self.lo)


def _finite(values) -> list:
    out = []
    for v in values:
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def mean_sd(xs) -> tuple:
    """(mean, sample sd with ddof=1; 0 for one value) of finite floats; never raises.

    Values near float64's range (a loss of 1e200) would overflow ``(x - m) ** 2``: the
    spread is computed in units of the largest deviation, so it is accurate where it
    fits in a float and inf where it does not."""
    n = len(xs)
    m = sum(xs) / n
    if not math.isfinite(m):   # the sum overflowed, the values did not
        m = sum(x / n for x in xs)
    if n < 2:
        return m, 0.0
    dev = [x - m for x in xs]
    scale = max(abs(d) for d in dev)
    if scale == 0.0 or not math.isfinite(scale):
        return m, scale
    return m, scale * math.sqrt(sum((d / scale) ** 2 for d in dev) / (n - 1))


def mean_ci(values, level: float = 0.95) -> CI:
    """Student-t interval of the mean over the *finite* values (failures are dropped;
    count them separately). See :class:`CI` for n < 2."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    m, sd = mean_sd(xs)
    if n == 1:
        return CI(m, m, m, 1)
    h = t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return CI(m, m - h, m + h, n)


# ------------------------------------------------------------------ paired tests

#: Fewest paired differences whose zero spread counts as a deterministic, certain
#: difference (a full-batch problem gives every seed the same result). Two equal
#: differences show nothing: they can be equal by construction (two seeds' deviations
#: from their own median always are), and a t statistic on them is 0/0.
ZERO_SPREAD_N = 3


def paired(a: dict, b: dict) -> list:
    """Per-seed differences ``a[s] - b[s]`` on the seeds both have, in seed order.

    A difference is non-finite when either side failed (inf - x = inf, inf - inf = nan);
    callers decide what a failure means before testing.
    """
    return [float(a[s]) - float(b[s]) for s in sorted(set(a) & set(b))]


def paired_t(diffs, mu: float = 0.0, alternative: str = "greater",
             exact: bool = True) -> float:
    """p-value of the one-sample t-test on paired differences.

    alternative "greater": H1 mean > mu; "less": H1 mean < mu. With fewer than 2
    differences nothing can be shown (p = 1). Zero spread (see ZERO_SPREAD_N): from 3
    differences on, p = 0 when the mean lies strictly on the alternative's side of mu,
    else 1; with 2, p = 1. ``exact=False`` (a quantised or censored measure, e.g. steps
    to a target counted at evaluation points): equal differences can be a coincidence of
    the grid, so zero spread gives p = 1.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    sign = 1.0 if alternative == "greater" else -1.0
    xs = _finite(diffs)
    n = len(xs)
    if n < 2:
        return 1.0
    m, sd = mean_sd(xs)
    # Spread below rounding noise of the values counts as zero spread.
    if sd <= 1e-12 * max(1.0, abs(m)):
        return 0.0 if exact and n >= ZERO_SPREAD_N and sign * (m - mu) > 0 else 1.0
    t = (m - mu) / (sd / math.sqrt(n))
    return t_sf(sign * t, n - 1)


# ------------------------------------------------------------------ verdicts

@dataclass(frozen=True)
class Verdict:
    """The per-problem answer of :func:`compare_to_best`.

    status: "verdict" or "no verdict" (nothing trained: every run of every optimizer
    failed, or no scores). best: the best optimizer (None without a verdict).
    tied: the best plus the optimizers statistically indistinguishable from it that
    follow it in the order with no significantly worse or untested one between, best
    first then by mean ([] without a verdict). significant: the best is significantly
    better than every other optimizer (there is at least one other). means: seed-mean
    loss, inf when any seed failed. cis: t-interval over the finite seeds.
    failed: failed seeds per optimizer. pvalues: step-down max-t adjusted p vs best
    (None where no test was possible). order: every optimizer, best first (the ranking
    used for ties and ranks). basis: how each other optimizer's comparison was decided
    ("test", "equal", "exact", "failure" or "untested", see compare_to_best).
    unresolved: not significantly worse than the best, yet outside the tied group
    because one ahead of it in the order is significantly worse or untested (a wide
    spread; in order).
    untested: no test was possible (too few seeds trained on both sides).
    """

    status: str
    best: str | None
    tied: list
    significant: bool
    means: dict = field(default_factory=dict)
    cis: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    pvalues: dict = field(default_factory=dict)
    order: list = field(default_factory=list)
    alpha: float = 0.05
    basis: dict = field(default_factory=dict)
    unresolved: list = field(default_factory=list)
    untested: list = field(default_factory=list)


#: Relative resolution of a trained loss: float32 carries ~7 significant digits and the
#: rounding accumulated over training makes the last ~2 noise, so seed means that agree
#: to 5 significant digits are equal (deterministic problems give zero-spread
#: differences of a few ulps that a t-test would call significant).
RTOL = 1e-5


def _close(a: float, b: float, rtol: float) -> bool:
    if a == b:
        return True
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b))


def _rule_vs_best(o: dict, b: dict, rtol: float = RTOL):
    """(p-value that ``o`` is worse than the best ``b``, basis) where a fixed rule
    decides it (see compare_to_best, step 2), else None (a test is needed). The p-value
    is None where nothing can be shown (basis "untested")."""
    common = sorted(set(o) & set(b))
    o_fail = any(not math.isfinite(o[s]) for s in common)
    b_fail = any(not math.isfinite(b[s]) for s in common)
    o_all_fail = bool(common) and all(not math.isfinite(o[s]) for s in common)
    if o_fail and not b_fail:
        return 0.0, "failure"
    if o_all_fail and any(math.isfinite(b[s]) for s in common):
        return 0.0, "failure"
    both = [s for s in common if math.isfinite(o[s]) and math.isfinite(b[s])]
    if len(both) < 2:
        return None, "untested"   # nothing can be shown
    if _close(sum(o[s] for s in both) / len(both), sum(b[s] for s in both) / len(both), rtol):
        return 1.0, "equal"
    m, sd = mean_sd([o[s] - b[s] for s in both])
    # Zero spread (below rounding noise): a deterministic difference, certain either way
    # once there are ZERO_SPREAD_N differences; two show nothing.
    if sd <= 1e-12 * max(1.0, abs(m)):
        if len(both) < ZERO_SPREAD_N:
            return None, "untested"
        return (0.0 if m > 0 else 1.0), "exact"
    return None


def _p_vs_best(o: dict, b: dict, rtol: float = RTOL) -> tuple:
    """(raw p-value that ``o`` is worse than the best ``b``, basis), one comparison
    alone: the rule's, else the paired t-test on the seeds where both trained, one-sided
    with its p doubled (the best was picked from the same data: two-sided in disguise)."""
    rule = _rule_vs_best(o, b, rtol)
    if rule is not None:
        return rule
    both = [s for s in sorted(set(o) & set(b)) if math.isfinite(o[s]) and math.isfinite(b[s])]
    return min(1.0, 2.0 * paired_t([o[s] - b[s] for s in both], 0.0, "greater")), "test"


def _max_t_step_down(family: dict, best: dict) -> dict:
    """Step-down max-t adjusted p-values (Westfall & Young 1993, Algorithm 2.8, with a
    parametric null) of "o is worse than the best" for every o of ``family`` ({o: {seed:
    loss}}, all finite on every seed of ``best``, which are all finite)."""
    seeds = sorted(best)
    n = len(seeds)
    ts = {}
    for o, x in family.items():
        m, sd = mean_sd([x[s] - best[s] for s in seeds])
        ts[o] = m / (sd / math.sqrt(n))
    out, running = {}, 0.0
    ranked = sorted(family, key=lambda o: (-ts[o], o))
    for i, o in enumerate(ranked):
        # Step i tests the hypotheses still standing: the best and len(ranked) - i others.
        running = max(running, _p_max_t(ts[o], len(ranked) - i + 1, n))
        out[o] = running
    return out


#: float32's machine epsilon: a loss gap below EPS32 x the starting gap is zero at the
#: scale the problem was posed at (``start + gap == start`` in float32).
EPS32 = 2.0 ** -23


def optimum_floor(optimum, start) -> float:
    """The loss below which a run has reached the optimum (see "Optimum floor"), or
    -inf when the optimum or the starting loss is unknown."""
    if optimum is None or start is None or not (math.isfinite(optimum) and math.isfinite(start)):
        return -INF
    return optimum + EPS32 * max(start - optimum, 0.0)


def compare_to_best(scores: dict, alpha: float = 0.05, level: float = 0.95,
                    rtol: float = RTOL, floor: float = -INF) -> Verdict:
    """Group of optimizers statistically indistinguishable from the best.

    scores: {optimizer: {seed: loss}}, lower is better, inf (or nan) = failed run.

    1. Order: by (fraction of failed seeds, mean of the finite seeds, name); the first
       is the best. With no failures this is the seed mean.
    2. Fixed rules first, for each other optimizer o (p = 0: worse; p = 1: tied):
       - o failed on a common seed where the best never failed: p = 0 (a failure is
         worse than any finite loss, so o is never tied with a failure-free best);
       - o failed on every common seed while the best trained on some: p = 0;
       - fewer than 2 seeds where both trained: untested, p = None (nothing can be
         shown; never called a tie);
       - seed means (over the seeds where both trained) equal within ``rtol``
         (relative; see RTOL): p = 1, a difference below the loss's resolution;
       - per-seed differences with zero spread (a deterministic problem): p = 0 if o
         is worse on at least ZERO_SPREAD_N seeds, else 1; on fewer, untested.
    3. The rest are tested together, **step-down max-t** (Westfall & Young 1993): with
       t_o the paired t statistic of o - best over the best's seeds, the largest t_o is
       compared with the null distribution of max t over all of them *with the best
       re-picked as the lowest mean in every null draw* (:mod:`.max_t_null`), then the
       next largest with the max over those left, and so on; adjusted p-values are made
       monotone. This controls the family-wise error rate at ``alpha`` including the
       selection of the best, which comparing each optimizer with the winner separately
       (even Holm-corrected) does not: on planted no-difference problems that wrongly
       left some optimizer out of the tied group in 12% of draws with 11 optimizers.
       When the best itself failed on a seed, or o lacks one of the best's seeds, o
       gets the one-comparison p of :func:`_p_vs_best`, Bonferroni-corrected over the
       comparisons instead.
    4. Adjusted p >= alpha means not significantly worse. The tied group is the best
       and the optimizers after it in the order, up to the first one that is
       significantly worse or untested (contiguous in the order, so ranks follow the
       means); later ones that are not significantly worse are ``unresolved``.
       ``significant``: every other optimizer is significantly worse. ``status`` is "no
       verdict" when no optimizer has a finite loss.

    ``floor`` (:func:`optimum_floor`): steps 2 and 3 see every finite loss below it as
    the floor, so runs that reached the optimum tie; the order, means and intervals
    use the raw losses.

    Error rates measured on planted no-difference problems (5 seeds, shared seed
    effect; tests/test_stats.py): some optimizer wrongly left out of the tied group in
    ~5% of draws for 2 to 11 optimizers, a single winner in well under 5%.
    """
    clean = {o: {int(s): (float(v) if v is not None and math.isfinite(float(v)) else INF)
                 for s, v in d.items()} for o, d in scores.items() if d}
    if not any(math.isfinite(v) for d in clean.values() for v in d.values()):
        return Verdict("no verdict", None, [], False,
                       means={o: INF for o in clean},
                       cis={o: mean_ci([]) for o in clean},
                       failed={o: len(d) for o, d in clean.items()},
                       order=sorted(clean), alpha=alpha)
    cis = {o: mean_ci(d.values(), level) for o, d in clean.items()}
    failed = {o: sum(1 for v in d.values() if not math.isfinite(v)) for o, d in clean.items()}
    means = {o: (INF if failed[o] else cis[o].mean) for o in clean}

    def key(o):
        m = cis[o].mean
        return (failed[o] / len(clean[o]), m if math.isfinite(m) else INF, o)

    order = sorted(clean, key=key)
    best = order[0]
    tested = {o: {s: max(v, floor) for s, v in d.items()} for o, d in clean.items()}
    b = tested[best]
    adj, basis, family, alone = {}, {}, {}, {}
    for o in order[1:]:
        rule = _rule_vs_best(tested[o], b, rtol)
        if rule is not None:
            adj[o], basis[o] = rule
        elif not failed[best] and all(s in clean[o] and math.isfinite(clean[o][s]) for s in b):
            family[o] = tested[o]
        else:
            alone[o] = _p_vs_best(tested[o], b, rtol)[0]
    if family:
        adj.update(_max_t_step_down(family, b))
    m = len(order) - 1
    adj.update({o: min(1.0, m * p) for o, p in alone.items()})
    basis.update({o: "test" for o in (*family, *alone)})
    tied, unresolved, untested = _groups(order, adj, alpha)
    return Verdict("verdict", best, tied, significant=len(order) > 1 and len(tied) == 1
                   and not unresolved and not untested,
                   means=means, cis=cis, failed=failed, pvalues=adj, order=order,
                   alpha=alpha, basis=basis, unresolved=unresolved, untested=untested)


def _groups(order: list, adj: dict, alpha: float) -> tuple:
    """(tied, unresolved, untested) from the order (best first) and the adjusted
    p-values (None = untested). The tied group is contiguous in the order: an optimizer
    joins it only if every optimizer ahead of it did, so no one shares the best's rank
    while one with a better mean is left out ("indistinguishable from the best" is not
    transitive). The others that are not significantly worse are unresolved."""
    tied, unresolved, untested, contiguous = [order[0]], [], [], True
    for o in order[1:]:
        p = adj[o]
        if p is None:
            untested.append(o)
        elif p >= alpha:
            (tied if contiguous else unresolved).append(o)
            continue
        contiguous = False
    return tied, unresolved, untested


# ------------------------------------------------------------------ claims

def claim_test(a: dict, b: dict, alpha: float = 0.05, margin: float = 0.0,
               rtol: float = RTOL, exact: bool = True) -> str:
    """Is ``a`` better (lower loss) than ``b`` by more than ``margin``?

    a, b: {seed: loss}, inf = failed. Paired on common seeds, d = b - a.
    "supported": one-sided paired t-test rejects mean(d) <= margin at alpha;
    "contradicted": it rejects mean(d) >= margin (a is not better by margin; with
    margin 0, b is significantly better); else "inconclusive" (also with < 2 seeds).
    Failures follow compare_to_best: if only one side failed on common seeds, that
    side is worse; if both did, only seeds where both trained are tested. With margin 0,
    means equal within ``rtol`` (see RTOL) are "inconclusive": a few float32 ulps of a
    deterministic problem are no evidence either way. ``exact``: see :func:`paired_t`.
    """
    common = sorted(set(a) & set(b))
    fa = any(not math.isfinite(float(a[s])) for s in common)
    fb = any(not math.isfinite(float(b[s])) for s in common)
    if fa != fb:
        return "contradicted" if fa else "supported"
    both = [s for s in common if math.isfinite(float(a[s])) and math.isfinite(float(b[s]))]
    d = [float(b[s]) - float(a[s]) for s in both]
    if both and margin == 0.0 and _close(sum(float(a[s]) for s in both) / len(both),
                                         sum(float(b[s]) for s in both) / len(both), rtol):
        return "inconclusive"
    if paired_t(d, margin, "greater", exact) < alpha:
        return "supported"
    if paired_t(d, margin, "less", exact) < alpha:
        return "contradicted"
    return "inconclusive"
