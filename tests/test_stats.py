"""Tests of optimlab.lab.stats: intervals, paired tests, max-t verdicts, ranks, claims."""

import math
import random

import pytest

from optimlab.lab import stats as S
from optimlab.lab.ranks import tie_ranks

INF = float("inf")


# ------------------------------------------------------------------ t distribution

# Textbook two-sided 95% critical values t_{0.975, df}.
T975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163, 29: 2.045229642}


@pytest.mark.parametrize("df,t", sorted(T975.items()))
def test_t_ppf_matches_tables(df, t):
    assert S.t_ppf(0.975, df) == pytest.approx(t, rel=1e-8)
    assert S.t_ppf(0.025, df) == pytest.approx(-t, rel=1e-8)
    assert S.t_sf(t, df) == pytest.approx(0.025, rel=1e-7)


def test_t_sf_closed_forms():
    # df = 1 is Cauchy: sf(t) = 1/2 - atan(t)/pi; df = 2: sf(t) = (1 - t/sqrt(t^2+2))/2.
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0, 40.0):
        assert S.t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-10)
        assert S.t_sf(t, 2) == pytest.approx(0.5 * (1 - t / math.sqrt(t * t + 2)), rel=1e-10)


def test_against_scipy_when_available():
    st = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(50):
        df = rng.choice([1, 2, 3, 4, 7, 12, 30, 100])
        t = rng.uniform(-8, 8)
        assert S.t_sf(t, df) == pytest.approx(st.t.sf(t, df), rel=1e-8, abs=1e-14)
        p = rng.uniform(0.001, 0.999)
        assert S.t_ppf(p, df) == pytest.approx(st.t.ppf(p, df), rel=1e-7, abs=1e-10)
    a = [rng.gauss(0, 1) for _ in range(8)]
    b = [x + rng.gauss(0.5, 1) for x in a]
    d = [y - x for x, y in zip(a, b)]
    ref = st.ttest_rel(b, a, alternative="greater").pvalue
    assert S.paired_t(d) == pytest.approx(ref, rel=1e-8)


# ------------------------------------------------------------------ intervals

def test_mean_ci_by_hand():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    ci = S.mean_ci(xs)
    # mean 3, sd sqrt(2.5), t_{0.975,4} = 2.776445105
    h = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert ci.n == 5 and ci.mean == pytest.approx(3.0)
    assert (ci.lo, ci.hi) == (pytest.approx(3 - h), pytest.approx(3 + h))
    assert ci.half_width == pytest.approx(h)
    # A wider level gives a wider interval.
    assert S.mean_ci(xs, 0.99).half_width > h


def test_mean_ci_drops_failures_and_small_n():
    ci = S.mean_ci([1.0, INF, float("nan"), 3.0])
    assert ci.n == 2 and ci.mean == 2.0 and ci.lo < 2.0 < ci.hi
    one = S.mean_ci([7.0, INF])
    assert (one.mean, one.lo, one.hi, one.n) == (7.0, 7.0, 7.0, 1)
    empty = S.mean_ci([INF])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_mean_ci_coverage_near_nominal():
    rng = random.Random(1)
    hits = 0
    trials = 2000
    for _ in range(trials):
        ci = S.mean_ci([rng.gauss(10.0, 2.0) for _ in range(5)])
        hits += ci.lo <= 10.0 <= ci.hi
    # Binomial sd at p = 0.95, n = 2000 is ~0.005: allow 4 sd.
    assert abs(hits / trials - 0.95) < 0.02


# ------------------------------------------------------------------ paired

def test_paired_on_common_seeds_in_seed_order():
    a = {0: 1.0, 1: 2.0, 2: 5.0, 7: 1.0}
    b = {2: 1.0, 0: 0.5, 1: 2.5, 3: 9.0}
    assert S.paired(a, b) == [0.5, -0.5, 4.0]


def test_paired_t_by_hand():
    d = [1.0, 2.0, 3.0]        # mean 2, sd 1, t = 2 * sqrt(3) = 3.4641, df 2
    t = 2 * math.sqrt(3)
    expected = 0.5 * (1 - t / math.sqrt(t * t + 2))
    assert S.paired_t(d) == pytest.approx(expected, rel=1e-10)
    assert S.paired_t(d, alternative="less") == pytest.approx(1 - expected, rel=1e-10)
    assert S.paired_t([1.0]) == 1.0                      # one pair shows nothing
    assert S.paired_t([0.5, 0.5, 0.5]) == 0.0           # constant positive shift
    assert S.paired_t([0.0, 0.0]) == 1.0                 # identical


# ------------------------------------------------------------------ verdicts

def _noise_problem(rng, opts=("a", "b", "c", "d", "e", "f"), seeds=5, shift=None):
    """Loss = seed effect (shared init/batches) + run noise (+ optimizer shift)."""
    shift = shift or {}
    seed_eff = {s: rng.gauss(1.0, 0.3) for s in range(seeds)}
    return {o: {s: seed_eff[s] + rng.gauss(0, 0.05) + shift.get(o, 0.0) for s in range(seeds)}
            for o in opts}


def test_no_real_difference_rarely_declares_a_single_winner():
    rng = random.Random(2)
    draws = 400
    singles = 0
    for _ in range(draws):
        v = S.compare_to_best(_noise_problem(rng))
        assert v.status == "verdict" and v.best in v.tied
        singles += v.significant
    # Under the null the family-wise error rate is <= alpha = 0.05 per problem,
    # and declaring a single winner needs *every* comparison rejected: far rarer.
    assert singles / draws <= 0.05
    # Some rejection does happen (a test that never rejects would pass the line above).
    rejections = 0
    for _ in range(draws):
        v = S.compare_to_best(_noise_problem(rng, opts=("a", "b")))
        rejections += len(v.tied) == 1
    # One comparison of the best (selected by its mean) vs the other: nominal 0.05
    # (binomial sd ~0.011 over 400 draws).
    assert 0.015 <= rejections / draws <= 0.09


def test_family_wise_error_with_many_optimizers():
    """Planted no-difference problems with 11 optimizers, 5 seeds (the default run's
    shape): no optimizer may be left out of the tied group in more than ~alpha of the
    draws, and a single winner is rarer still. Comparing each optimizer with the winner
    of the same data (even Holm-corrected) fails this: it excluded someone in ~12% of
    draws, because the best is the minimum of 11 noisy means. The step-down max-t test
    re-picks the best inside its null distribution."""
    rng = random.Random(11)
    opts = tuple(f"o{i:02d}" for i in range(11))
    draws, excluded, singles = 400, 0, 0
    for _ in range(draws):
        v = S.compare_to_best(_noise_problem(rng, opts=opts))
        excluded += len(v.tied) < len(opts)
        singles += v.significant
    # alpha = 0.05; binomial sd over 400 draws ~0.011, so 0.08 is ~2.7 sd above nominal
    # and ~3.6 sd below the per-comparison procedure's 0.12.
    assert excluded / draws <= 0.08
    assert singles / draws <= 0.05
    # ... and it is not a test that never rejects: with a real gap on 3 of the 11 it
    # leaves exactly those out (nearly always).
    found = 0
    for _ in range(50):
        v = S.compare_to_best(_noise_problem(rng, opts=opts,
                                             shift={"o08": 0.3, "o09": 0.3, "o10": 0.3}))
        found += set(v.tied) == set(opts[:8])
    assert found >= 45


def test_max_t_null_accounts_for_picking_the_best():
    """With 2 optimizers the step-down max-t p-value is the two-sided paired t p-value
    (the best is whichever mean is lower); with more, the same t needs to be larger."""
    for t in (1.0, 2.5, 4.0):
        p2 = S._p_max_t(t, 2, 5)
        assert p2 == pytest.approx(2 * S.t_sf(t, 4), abs=0.006)
        assert S._p_max_t(t, 6, 5) > p2 and S._p_max_t(t, 11, 5) > S._p_max_t(t, 6, 5)


def test_large_real_difference_is_found():
    rng = random.Random(3)
    for _ in range(50):
        v = S.compare_to_best(_noise_problem(rng, shift={o: 0.5 for o in "bcdef"}))
        assert v.best == "a" and v.tied == ["a"] and v.significant
        assert all(p < 0.05 for p in v.pvalues.values())


def test_tied_group_with_one_clearly_worse():
    rng = random.Random(4)
    v = S.compare_to_best(_noise_problem(rng, opts=("a", "b", "c", "z"), seeds=8,
                                         shift={"z": 1.0}))
    assert "z" not in v.tied and not v.significant
    assert set(v.tied) <= {"a", "b", "c"} and v.tied[0] == v.best
    assert v.order[-1] == "z"


def test_pairing_matters():
    # Seed effects are huge, the optimizer shift small but consistent: an unpaired view
    # would see overlap, the paired test sees b worse on every seed.
    a = {s: 10.0 * s + 0.001 * (s % 2) for s in range(6)}
    b = {s: v + 0.1 for s, v in a.items()}
    ca, cb = S.mean_ci(a.values()), S.mean_ci(b.values())
    assert ca.hi > cb.lo                                  # intervals overlap
    v = S.compare_to_best({"a": a, "b": b})
    assert v.tied == ["a"] and v.significant


def test_all_failed_is_no_verdict():
    v = S.compare_to_best({"a": {0: INF, 1: INF}, "b": {0: float("nan"), 1: INF}})
    assert v.status == "no verdict" and v.best is None and v.tied == []
    assert not v.significant and v.failed == {"a": 2, "b": 2}
    assert S.compare_to_best({}).status == "no verdict"


def test_single_optimizer_and_missing_seeds():
    v = S.compare_to_best({"adam": {0: 1.0, 1: 1.2}})
    assert (v.best, v.tied, v.significant, v.status) == ("adam", ["adam"], False, "verdict")
    # An optimizer sharing only one seed with the best cannot be shown worse, nor tied:
    # untested, no p-value, never significant.
    v = S.compare_to_best({"a": {0: 1.0, 1: 1.0, 2: 1.1}, "b": {2: 5.0, 7: 5.0}})
    assert v.tied == ["a"] and v.untested == ["b"] and v.pvalues["b"] is None
    assert v.basis["b"] == "untested" and not v.significant


def test_failure_rules():
    ok = {0: 1.0, 1: 1.1, 2: 0.9}
    one_fail = {0: 0.5, 1: INF, 2: 0.5}         # better finite mean, but one failure
    v = S.compare_to_best({"ok": ok, "f": one_fail})
    assert v.best == "ok" and v.tied == ["ok"] and v.means["f"] == INF
    assert v.failed == {"ok": 0, "f": 1}
    # When the best also failed somewhere, only seeds where both trained are tested.
    f2 = {0: 1.0, 1: INF, 2: 0.9, 3: 1.2}
    f3 = {0: 1.05, 1: INF, 2: 0.85, 3: INF}
    v = S.compare_to_best({"f2": f2, "f3": f3, "dead": {0: INF, 1: INF, 2: INF, 3: INF}})
    assert v.best == "f2" and v.tied == ["f2", "f3"] and v.order[-1] == "dead"


def test_deterministic_problem_resolution():
    """Full-batch problems give the same loss on every seed: differences of a few
    float32 ulps are ties, a real gap is still significant (zero spread)."""
    same = {"momentum": 0.5600000619888306, "adam": 0.5600001215934753}
    worse = {"rmsprop": 0.5605391263961792, "sgd": 0.6132994890213013}
    scores = {o: {s: v for s in range(5)} for o, v in {**same, **worse}.items()}
    v = S.compare_to_best(scores)
    assert v.best == "momentum" and v.tied == ["momentum", "adam"] and not v.significant
    assert v.pvalues["adam"] == 1.0 and v.pvalues["rmsprop"] == 0.0
    r = tie_ranks(v.means, groups=[v.tied], rtol=S.RTOL)
    assert r == {"momentum": 1.5, "adam": 1.5, "rmsprop": 3.0, "sgd": 4.0}
    # Without the resolution the ulps would decide.
    assert S.compare_to_best(scores, rtol=0.0).tied == ["momentum"]
    assert tie_ranks({"a": 1.0, "b": 1.0 + 1e-7, "c": INF, "d": INF}, rtol=S.RTOL) == \
        {"a": 1.5, "b": 1.5, "c": 3.5, "d": 3.5}


def test_losses_that_reached_the_optimum_tie():
    """The ravine of the default run: every converging optimizer reaches its optimum 0 to
    machine precision (1e-289 at a large lr, 1e-9 at a small one). Below the floor those
    are the same result; a loss still above it (sgd) is worse; the raw means stay."""
    rng = random.Random(3)
    raw = {"adagrad": 1e-289, "rmsprop": 1e-107, "adam": 2e-9, "sgd": 1.5e-3}
    scores = {o: {s: v * rng.uniform(0.5, 2.0) for s in range(5)} for o, v in raw.items()}
    floor = S.optimum_floor(0.0, 9.9)
    assert 1e-6 < floor < 2e-6 and S.optimum_floor(None, 9.9) == -INF
    v = S.compare_to_best(scores, floor=floor)
    assert v.best == "adagrad" and v.tied == ["adagrad", "rmsprop", "adam"]
    assert v.means["adagrad"] < 1e-280 and v.pvalues["sgd"] < 0.05
    # Without the floor 1e-289 "wins" against 1e-107 and 1e-9: the bug this fixes.
    assert S.compare_to_best(scores).tied == ["adagrad"]
    # A known optimum above 0 moves the floor with it.
    assert S.optimum_floor(0.56, 41.6) == pytest.approx(0.56 + 41.04 * 2.0 ** -23)


# ------------------------------------------------------------------ ranks

def test_tie_ranks_equal_values_share():
    assert tie_ranks({"a": 0.56, "b": 0.56, "c": 0.56, "d": 0.9}) == \
        {"a": 2.0, "b": 2.0, "c": 2.0, "d": 4.0}
    assert tie_ranks({"a": 0.56, "b": 0.56, "c": 0.7}, method="min") == \
        {"a": 1.0, "b": 1.0, "c": 3.0}
    r = tie_ranks({"a": 1.0, "b": float("nan"), "c": INF})
    assert r["a"] == 1.0 and r["b"] == r["c"] == 2.5


def test_tie_ranks_groups():
    vals = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    assert tie_ranks(vals, groups=[["a", "b"]]) == {"a": 1.5, "b": 1.5, "c": 3.0, "d": 4.0}
    # A group is contiguous in value order: c never ranks ahead of b, whose value is
    # lower, so c cannot join a's group past b (it was {"a": 1.5, "c": 1.5, "b": 3}).
    assert tie_ranks(vals, groups=[["a", "c"]]) == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert tie_ranks(vals, groups=[["a", "b", "d"]]) == \
        {"a": 1.5, "b": 1.5, "c": 3.0, "d": 4.0}
    # A non-member equal to the group's best shares its rank.
    assert tie_ranks({"a": 0.1, "b": 0.1, "c": 0.3}, groups=[["a", "c"]]) == \
        {"a": 2.0, "b": 2.0, "c": 2.0}
    assert tie_ranks(vals, groups=[["a", "b", "c"]], method="min") == \
        {"a": 1.0, "b": 1.0, "c": 1.0, "d": 4.0}
    # Ranks always add up to 1 + ... + n with mean ranking.
    assert sum(tie_ranks(vals, groups=[["b", "d"]]).values()) == 10.0


# ------------------------------------------------------------------ claims

def test_claim_test_three_outcomes():
    rng = random.Random(5)
    seeds = range(8)
    base = {s: rng.gauss(1.0, 0.3) for s in seeds}
    better = {s: v - 0.2 + rng.gauss(0, 0.02) for s, v in base.items()}
    same = {s: v + rng.gauss(0, 0.05) for s, v in base.items()}
    assert S.claim_test(better, base) == "supported"
    assert S.claim_test(base, better) == "contradicted"
    assert S.claim_test(same, base) == "inconclusive"
    # A margin larger than the real improvement: the claim "better by 0.5" fails.
    assert S.claim_test(better, base, margin=0.5) == "contradicted"
    # Failures: the side that fails is worse.
    assert S.claim_test(base, {**base, 3: INF}) == "supported"
    assert S.claim_test({**base, 3: INF}, base) == "contradicted"
    assert S.claim_test({0: 1.0}, {0: 2.0}) == "inconclusive"
    # Deterministic problem: ulps are no evidence, a real gap is.
    det = {s: 0.5600000619888306 for s in seeds}
    assert S.claim_test(det, {s: 0.5600001215934753 for s in seeds}) == "inconclusive"
    assert S.claim_test(det, {s: 0.6 for s in seeds}) == "supported"


# ------------------------------------------------------------------ overflow, few seeds

@pytest.mark.parametrize("xs, mean, sd", [
    ([1.0, 2.0, 3.0], 2.0, 1.0),
    ([5.6e191, 5.8e191], 5.7e191, math.sqrt(2) * 1e190),   # (x - m)^2 overflows: 1e380
    ([1e308, 1e308, 1e308], 1e308, 0.0),                    # the sum overflows
    ([1e308, -1e308], 0.0, math.sqrt(2) * 1e308),           # (x - m)^2: 1e616
    ([1.5e308, -1.5e308], 0.0, INF),                        # the sd itself does not fit
    ([7.0], 7.0, 0.0),
])
def test_mean_sd_never_overflows(xs, mean, sd):
    m, s = S.mean_sd(xs)
    assert m == pytest.approx(mean, rel=1e-12, abs=1e-300)
    assert s == pytest.approx(sd, rel=1e-12)


def test_huge_finite_losses_do_not_crash_the_statistics():
    """A run that exploded to 5.6e191 but stayed finite (an old store's "ok" runs)."""
    big = {0: 5.64e191, 1: 5.59e191, 2: 5.70e191}
    small = {0: 0.26, 1: 0.27, 2: 0.25}
    ci = S.mean_ci(big.values())
    assert ci.lo < ci.mean < ci.hi and math.isfinite(ci.hi)
    assert S.paired_t(S.paired(big, small)) < 0.05
    v = S.compare_to_best({"sgd": big, "adam": small})
    assert v.best == "adam" and v.tied == ["adam"]
    assert S.claim_test(small, big) == "supported"


@pytest.mark.parametrize("diffs, p", [
    ([0.5, 0.5], 1.0),           # two equal differences: no evidence (was p = 0)
    ([0.5, 0.5, 0.5], 0.0),      # three: a deterministic difference
    ([-0.5, -0.5, -0.5], 1.0),
    ([0.0, 0.0], 1.0),
])
def test_zero_spread_needs_three_differences(diffs, p):
    assert S.paired_t(diffs) == p


def test_zero_spread_on_two_seeds_decides_nothing():
    two = {"a": {0: 1.0, 1: 2.0}, "b": {0: 1.5, 1: 2.5}}   # b - a = 0.5 on both seeds
    v = S.compare_to_best(two)
    assert v.tied == ["a"] and v.untested == ["b"] and not v.significant
    assert S.claim_test(two["a"], two["b"]) == "inconclusive"
    three = {o: {**d, 2: d[1] + 1.0} for o, d in two.items()}
    assert S.compare_to_best(three).tied == ["a"]
    assert S.claim_test(three["a"], three["b"]) == "supported"


@pytest.mark.parametrize("k, n, lo, hi", [   # scipy.stats.beta.ppf, 95% two-sided
    (3, 3, 0.2924017738212866, 1.0),
    (1, 2, 0.01257911709342505, 0.9874208829065749),
    (1, 1, 0.025, 1.0),
    (0, 3, 0.0, 0.7075982261787133),
    (5, 10, 0.18708602844739855, 0.8129139715526015),
    (0, 0, 0.0, 1.0),
])
def test_clopper_pearson(k, n, lo, hi):
    from optimlab.lab.binomial import clopper_pearson

    got = clopper_pearson(k, n)
    assert got == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
