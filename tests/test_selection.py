"""Selection on seed means (optimlab.lab.selection) and the tuning-cost curve, on
fabricated records (no training)."""

from __future__ import annotations

import itertools
import math

import pytest

from optimlab.lab import analysis as A
from optimlab.lab import selection as SEL
from optimlab.lab.spec import RunRecord, RunSpec
from optimlab.lab.sweep import Plan

INF = float("inf")


def rec(lr, val, seed=0, phase=None, status="ok", problem="p", opt="sgd", first=2.0):
    phase = phase or ("sweep" if seed == 0 else "seeds")
    final = {"train_loss": val, "val_loss": val if status == "ok" else INF, "test_loss": val,
             "val_metric": None, "test_metric": None, "gap": None, "steps_to_target": None,
             "diverged_at": None if status == "ok" else 5, "error": None}
    return RunRecord(RunSpec(problem, opt, lr, seed, 100, phase=phase), status, final,
                     {"step": [0, 100], "val_loss": [first, val]}, 1.0, 1e-3)


def store_where_seed0_misleads():
    """lr 0.01 wins on seed 0 (lucky), lr 0.1 wins on the mean of 5 seeds."""
    rs = [rec(lr, v) for lr, v in ((1e-3, 0.50), (0.01, 0.10), (0.1, 0.20), (1.0, 0.90))]
    rs += [rec(0.01, 0.50, s) for s in range(1, 5)]          # mean 0.42
    rs += [rec(0.1, v, s) for s, v in zip(range(1, 5), (0.21, 0.19, 0.22, 0.18))]  # 0.2
    rs += [rec(1e-3, 0.50, s) for s in range(1, 5)]          # mean 0.5
    return rs


def test_selection_uses_the_seed_mean_not_seed_0():
    rs = store_where_seed0_misleads()
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.lr == 0.1 and sel.score == pytest.approx(0.2) and sel.seeds == 5
    assert [lr for lr, _ in sel.candidates] == [0.1, 0.01, 1e-3]
    assert dict(sel.candidates)[0.01] == pytest.approx(0.42)
    assert sel.grid == (1e-3, 0.01, 0.1, 1.0) and not sel.on_edge and not sel.at_bound
    # Every downstream number comes from the selected lr's 5 runs.
    runs = A.best_runs(rs)[("p", "sgd")]
    assert [r.spec.seed for r in runs] == [0, 1, 2, 3, 4] and {r.spec.lr for r in runs} == {0.1}
    agg = A.aggregate(rs)[("p", "sgd")]
    assert agg["val_loss"]["mean"] == pytest.approx(sel.score)
    # Before the seeds phase the same candidates are chosen on seed 0 alone.
    sweep_only = [r for r in rs if r.spec.phase == "sweep"]
    early = A.select_best(sweep_only)[("p", "sgd")]
    assert early.lr == 0.01 and early.seeds == 1
    assert sorted(lr for lr, _ in early.candidates) == [1e-3, 0.01, 0.1]


def test_seed_phase_reruns_the_candidates_only():
    rs = [r for r in store_where_seed0_misleads() if r.spec.phase == "sweep"]
    plan = Plan(sources={"p": "x"}, optimizers=["sgd"], lrs=[1e-3, 0.01, 0.1, 1.0], seeds=5,
                steps={"p": 100})
    specs = plan.seed_specs(A.select_best(rs))
    assert sorted({s.lr for s in specs}) == [1e-3, 0.01, 0.1]    # not 1.0 (rank 4)
    # Rung 1 of the halving: seeds 1..RUNG_SEEDS-1 for every candidate, nothing more yet.
    assert SEL.RUNG_SEEDS == 2
    assert sorted(s.seed for s in specs if s.lr == 0.1) == [1]
    assert {s.phase for s in specs} == {"seeds"}


def rung1(seed1):
    """Seed-0 sweep (0.01 best on seed 0) + seed 1 of the three candidates, with the
    seed-1 scores ``seed1`` = {lr: score}."""
    rs = [rec(lr, v) for lr, v in ((1e-3, 0.50), (0.01, 0.30), (0.1, 0.31), (1.0, 0.90))]
    return rs + [rec(lr, v, 1) for lr, v in seed1.items()]


def test_successive_halving_promotes_the_leader_and_those_within_noise():
    plan = Plan(sources={"p": "x"}, optimizers=["sgd"], lrs=[1e-3, 0.01, 0.1, 1.0], seeds=5,
                steps={"p": 100})
    # 0.1 is within noise of 0.01 (differences +0.01, -0.02); 1e-3 is far behind.
    rs = rung1({0.01: 0.32, 0.1: 0.30, 1e-3: 0.51})
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.promoted == (0.01, 0.1) and sel.seeds == 2
    specs = plan.seed_specs({("p", "sgd"): sel})
    late = sorted((s.lr, s.seed) for s in specs if s.seed >= 2)
    assert late == [(0.01, 2), (0.01, 3), (0.01, 4), (0.1, 2), (0.1, 3), (0.1, 4)]
    assert sorted(s.seed for s in specs if s.lr == 1e-3) == [1]   # rung 1 only
    # Rung 2 stored: the choice is made among the 5-seed candidates only, even though
    # 1e-3's 2-seed mean (0.505) now looks better than both (it cannot be selected).
    rs += [rec(lr, 2.0 + lr, s) for lr in (0.01, 0.1) for s in (2, 3, 4)]
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.seeds == 5 and sel.lr in (0.01, 0.1)
    assert sel.lr == min((0.01, 0.1), key=lambda lr: sum(
        r.final["val_loss"] for r in rs if r.spec.lr == lr))
    assert [lr for lr, _ in sel.candidates][-1] == 1e-3
    # The promoted set reads seeds 0..RUNG_SEEDS-1 only: later seeds do not change it.
    assert sel.promoted == (0.01, 0.1)


def test_a_clear_leader_alone_gets_every_seed():
    # 0.1 is worse than 0.01 on both seeds by a steady 0.01-0.02: beyond 2 standard errors.
    rs = rung1({0.01: 0.30, 0.1: 0.32, 1e-3: 0.52})
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.promoted == (0.01,)
    # Before rung 1 is complete nothing is promoted.
    part = A.select_best([r for r in rs if not (r.spec.lr == 0.1 and r.spec.seed == 1)])
    assert part[("p", "sgd")].promoted == ()
    # A failed seed is not noise: only an equal failure count stays in.
    assert SEL._within_noise({0: 1.0, 1: INF}, {0: 1.0, 1: 1.0}) is False
    assert SEL._within_noise({0: 1.0, 1: INF}, {0: 2.0, 1: INF}) is True


@pytest.mark.parametrize("cand, lead, within", [
    ({0: 5.64e191, 1: 5.59e191}, {0: 0.26, 1: 0.27}, False),   # overflowed (x - m) ** 2
    ({0: 0.26, 1: 0.27}, {0: 5.64e191, 1: 5.59e191}, True),
    ({0: 1e308, 1: -1e308}, {0: 0.0, 1: 0.0}, True),           # spread inf: not separable
])
def test_within_noise_survives_huge_finite_scores(cand, lead, within):
    assert SEL._within_noise(cand, lead) is within


def test_a_diverged_seed_disqualifies_a_candidate():
    rs = [rec(0.01, 0.1), rec(0.1, 0.2)]
    rs += [rec(0.01, 0.1, s) for s in (1, 2)] + [rec(0.01, 0.1, 3, status="diverged")]
    rs += [rec(0.1, 0.2, s) for s in (1, 2, 3)]
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.lr == 0.1 and sel.score == pytest.approx(0.2)
    assert dict(sel.candidates)[0.01] == INF


def test_all_diverged_has_no_candidates_and_no_reruns():
    rs = [rec(lr, 0.0, status="diverged") for lr in (1e-6, 1e-5, 1e-4, 1e-3)]
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.score == INF and sel.candidates == () and sel.lr == 1e-6 and sel.at_bound
    plan = Plan(sources={"p": "x"}, optimizers=["sgd"], lrs=[1e-4], seeds=5, steps={"p": 100})
    assert plan.seed_specs({("p", "sgd"): sel}) == []
    assert SEL.tuning_cost(rs) == {}


def test_a_best_at_the_hard_bound_is_flagged():
    rs = [rec(lr, 1.0 / lr) for lr in (1e-4, 1e-3, 1e-2, 0.1, 1.0, 5.62, 10.0)]
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.lr == 10.0 and sel.at_bound and sel.on_edge
    # The edge of a fixed grid is on_edge but not a hard bound of the search.
    rs = [rec(lr, 1.0 / lr) for lr in (1e-3, 1e-2, 0.1)]
    sel = A.select_best(rs)[("p", "sgd")]
    assert sel.lr == 0.1 and sel.on_edge and not sel.at_bound


def test_width_at_the_refined_resolution():
    # Quarter-decade points around the best: val within 10% of best (1.0 -> 1.1) on
    # 0.0316 .. 0.0562, i.e. log10(0.0562 / 0.0316) = 0.25 decades.
    pts = {1e-3: 3.0, 0.01: 2.0, 0.0178: 1.2, 0.0316: 1.05, 0.0562: 1.0, 0.1: 1.09,
           0.178: 1.3, 1.0: 5.0}
    s = A.sensitivity([rec(lr, v) for lr, v in pts.items()])[("p", "sgd")]
    assert (s.lo, s.hi) == (0.0316, 0.1)
    assert s.width == pytest.approx(math.log10(0.1 / 0.0316))


def brute_expected_min(values, n):
    tuples = list(itertools.product(values, repeat=n))
    return sum(min(t) for t in tuples) / len(tuples)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_expected_best_matches_enumeration(n):
    vals = [0.9, 0.3, 0.5, 0.3, 2.0]
    assert SEL.expected_best(vals, n) == pytest.approx(brute_expected_min(vals, n))


def test_tuning_cost_curve():
    rs = [rec(lr, v) for lr, v in ((1e-3, 0.5), (0.01, 0.2), (0.1, 0.3))]
    rs.append(rec(1.0, 0.0, status="diverged", first=4.0))
    curve = SEL.tuning_cost(rs)[("p", "sgd")]
    assert [n for n, _ in curve] == [1, 2, 3, 4]
    # The diverged lr counts as its initial val loss (4.0, worse than every finished run).
    assert curve[0][1] == pytest.approx((0.5 + 0.2 + 0.3 + 4.0) / 4)
    assert curve[1][1] == pytest.approx(brute_expected_min([0.5, 0.2, 0.3, 4.0], 2))
    ys = [y for _, y in curve]
    assert all(a > b for a, b in zip(ys, ys[1:])) and ys[-1] > 0.2
