"""The claims, the lr width, the performance profile and the steps column follow the
verdicts' evidence rules: the optimum floor, the resolution stats.RTOL, the tied group,
and no certainty from a quantised or censored measure (the audit's findings 4-9)."""

from __future__ import annotations

import pytest

from optimlab.lab import analysis as A
from optimlab.lab import stats as S
from optimlab.lab import verdicts as V
from optimlab.lab.report.verdicts import steps_text
from test_claims import INF, LRS, NOISE, SEEDS, SEL, bias, ravine_runs, record, verdict, with_curves

FLOOR_10 = 10 * 2.0 ** -23   # optimum 0 reached from a start of 10


def at_optimum(recs, optimum):
    """The records with their gap to ``optimum`` (``analysis.optima`` reads it back)."""
    for r in recs:
        if r.status == "ok":
            r.final["gap"] = r.final["train_loss"] - optimum
    return recs


def started(problem, optimizer, vals, start, optimum):
    """``selected`` runs whose val curves start at ``start`` and end at ``vals``."""
    recs = []
    for s, v in zip(SEEDS, vals):
        recs.append(record(problem, optimizer, SEL, s, v, phase="sweep" if s == 0 else "seeds",
                           train=[start, 0.5 * (start + v), v]))
    worst = max(vals) + 1.0
    recs += [record(problem, optimizer, lr, 0, worst, train=[start, worst, worst])
             for lr in LRS if lr != SEL]
    return at_optimum(recs, optimum)


RAV = {"rav": {"kind": "2d", "optimum": 0.0, "target": 1e-3, "description": ""}}
FIVE = {"five": {"kind": "least-squares", "optimum": 0.56, "target": 0.561, "description": ""}}
ADAM_RAV = [2e-9, 3e-9, 1.5e-9, 2.5e-9, 1e-9]


def test_floors_are_the_verdicts_floors():
    recs = started("rav", "adam", ADAM_RAV, 10.0, 0.0) + started("five", "adam", [0.56] * 5,
                                                                 41.0, 0.56)
    assert A.floors(recs) == V.floors(recs)
    assert A.floors(recs)["rav"] == pytest.approx(FLOOR_10)


def test_claim5_losses_below_the_floor_tie(tmp_path):
    # Both reached the optimum of a problem that started at 10: the verdicts tie them.
    recs = (started("rav", "nadam", [1e-17, 5e-18, 2e-18, 8e-18, 3e-18], 10.0, 0.0)
            + started("rav", "adam", ADAM_RAV, 10.0, 0.0))
    assert V.verdicts(recs)["rav"].tied == ["nadam", "adam"]
    got, c = verdict(tmp_path, 5, recs, RAV)
    u = c["evidence"]["units"][0]
    assert (got, u["verdict"]) == (NOISE, NOISE)
    assert u["tie"] == "optimum"
    assert u["diff"]["mean"] == 0.0


def test_claim4_margin_uses_the_floor_gap_not_the_loss(tmp_path):
    # five-points: the best mean is below the optimum by float32 rounding; adadelta's
    # 0.0134 excess is far above it (the verdict says significantly worse).
    five = (started("five", "adam", [0.5599998] * 5, 41.0, 0.56)
            + started("five", "rmsprop", [0.56000006] * 5, 41.0, 0.56)
            + started("five", "adadelta", [0.5734] * 5, 41.0, 0.56))
    got, c = verdict(tmp_path, 4, five, FIVE)
    pairs = {(p["a"], p["b"]): p for p in c["evidence"]["units"][0]["pairs"]}
    assert pairs[("adadelta", "adam")]["different"] and got == "contradicted"
    assert pairs[("rmsprop", "adam")]["equivalent"]
    assert c["evidence"]["units"][0]["margin"] < 1e-4
    # ill-conditioned: rmsprop and adam both below the floor are equivalent, not different.
    rav = (started("rav", "adam", ADAM_RAV, 10.0, 0.0)
           + started("rav", "rmsprop", [1e-107, 2e-107, 1.5e-107, 1e-107, 2e-107], 10.0, 0.0)
           + started("rav", "adadelta", [0.030, 0.0301, 0.0299, 0.0302, 0.030], 10.0, 0.0))
    _, c = verdict(tmp_path, 4, rav, RAV)
    pairs = {(p["a"], p["b"]): p for p in c["evidence"]["units"][0]["pairs"]}
    assert pairs[("rmsprop", "adam")]["equivalent"]
    assert pairs[("adadelta", "adam")]["different"]


def test_profile_costs_follow_the_floor_and_each_optimizers_own_loss():
    rav = (started("rav", "a", [1e-18] * 5, 10.0, 0.0) + started("rav", "b", ADAM_RAV, 10.0, 0.0)
           + started("rav", "c", [0.03, 0.031, 0.029, 0.03, 0.031], 10.0, 0.0))
    cost = A.score_costs(rav)["rav"]
    assert cost["a"] == cost["b"] == pytest.approx(FLOOR_10)
    assert cost["c"] / cost["a"] > 1e3
    five = (started("five", "a", [0.5599998] * 5, 41.0, 0.56)
            + started("five", "w", [0.5618] * 5, 41.0, 0.56))
    cost = A.score_costs(five)["five"]
    assert cost["w"] / cost["a"] > 100   # significantly worse: never within tau = 1.05
    # Tied by the verdict (differences of both signs), 1.39x in mean: its own cost, so
    # the profile's "within a factor τ of the best" holds (it was the best's cost).
    base = [1.0, 1.2, 0.8, 1.1, 0.9]
    noisy = started("q", "a", base, 3.0, 0.0) + started("q", "m", [1.9, 0.9, 1.7, 1.0, 1.45],
                                                       3.0, 0.0)
    assert "m" in V.verdicts(noisy)["q"].tied
    cost = A.score_costs(noisy)["q"]
    assert cost["m"] / cost["a"] == pytest.approx(1.39, abs=0.01)
    prof = A.performance_profile({"q": cost}, [1.0, 1.3, 1.5])
    assert prof["a"] == [1.0, 1.0, 1.0] and prof["m"] == [0.0, 0.0, 1.0]


def sweep(problem, points, start, optimum):
    """Seed-0 sweep runs {lr: final val loss} whose val curves start at ``start``."""
    return at_optimum([record(problem, "sgd", lr, 0, v, train=[start, v, v])
                       for lr, v in points.items()], optimum)


def test_lr_width_never_counts_an_lr_that_learned_nothing():
    # sparse-bow's sgd: 10% of the excess over the train optimum (0.031) is more than
    # the whole learning range 0.6957 -> 0.6704; lr 1e-4 ends where it started.
    pts = {1e-4: 0.6931, 1e-3: 0.6938, 1e-2: 0.6911, 0.1: 0.6734, 0.178: 0.6704,
           0.316: 0.6712, 1.0: 0.7253}
    s = A.sensitivity(sweep("bow", pts, 0.6957, 0.364))[("bow", "sgd")]
    assert (s.lo, s.hi) == (0.178, 0.316)


def test_lr_width_counts_lrs_that_reached_the_optimum():
    # five-points' momentum: 0.5600005 .. 0.56000006 are all the optimum 0.56 to float32.
    pts = {1e-3: 0.6133, 3.16e-3: 0.56038, 5.62e-3: 0.5600005, 1e-2: 0.56000006,
           0.1: 0.5600002, 1.0: 0.9}
    s = A.sensitivity(sweep("five", pts, 41.0, 0.56))[("five", "sgd")]
    assert (s.lo, s.hi) == (5.62e-3, 0.1)
    rav = {1e-4: 9.2, 1e-2: 0.12, 0.0316: 5e-9, 0.1: 3e-9, 0.178: 2e-9, 1.0: 1.2e-8, 10.0: 5.0}
    s = A.sensitivity(sweep("rav", rav, 10.0, 0.0))[("rav", "sgd")]
    assert (s.lo, s.hi) == (0.0316, 1.0)


def test_claim7_failures_alone_do_not_decide_across_lrs(tmp_path):
    # Without correction: lower early loss at 4 of 5 lrs, diverged at the largest.
    info = {"vae": {"kind": "vae", "optimum": None, "target": None, "description": ""}}
    lrs = (1e-4, 3e-4, 1e-3, 3e-3)
    diverged = record("vae", "adam", 1e-2, 0, INF, phase="bias-correction", status="diverged",
                      hp=(("betas", (0.9, 0.9999)), ("bias_correction", False)), train=[9.0],
                      diverged_at=3)
    recs = (bias("vae", 0.99, True, dict.fromkeys(lrs + (1e-2,), 2.0))
            + bias("vae", 0.99, False, dict(zip(lrs + (1e-2,), [1.0, 1.1, 1.0, 1.1, 1.0])))
            + bias("vae", 0.9999, True, dict.fromkeys(lrs + (1e-2,), 2.0))
            + bias("vae", 0.9999, False, dict(zip(lrs, [1.5, 1.6, 1.7, 1.8]))) + [diverged])
    got, c = verdict(tmp_path, 7, recs, info)
    hi = c["evidence"]["units"][0]["by_beta2"][-1]
    assert got != "supported" and hi["verdict"] != "supported"
    assert "decided_by" not in hi
    assert (hi["lower"]["with"], hi["lower"]["without"], hi["lower"]["failed_without"]) == (1, 4, 1)


def curve(reach, final):
    """A train curve (steps 0..100 by 10) at 1.0 until ``reach``, then ``final``."""
    return [1.0 if s < reach else final for s in range(0, 101, 10)]


def test_claim3_equal_censored_differences_are_no_certainty(tmp_path):
    # adadelta never reaches the target on 3 seeds (censored at 110) and reaches it at
    # 90 on two; nesterov at 70 and 50: the five differences are all 40 by coincidence.
    info = {"mlp": {"kind": "mlp", "optimum": None, "target": 0.42, "description": ""}}
    ada = [curve(100, 0.5), curve(100, 0.5), curve(90, 0.3), curve(90, 0.3), curve(100, 0.5)]
    nes = [curve(at, 0.2) for at in (70, 70, 50, 50, 70)]
    recs = with_curves("mlp", "adadelta", ada) + with_curves("mlp", "nesterov", nes)
    got, c = verdict(tmp_path, 3, recs, info)
    u = c["evidence"]["units"][0]
    assert u["diff"]["lo"] == u["diff"]["hi"] == 40
    assert got == NOISE and u["zero_spread"]
    assert u["censored"] == {"a": [0, 1, 4], "b": [], "n_a": 5, "n_b": 5}


def test_claim3_without_a_target_every_seed_reaches_the_level(tmp_path):
    info = {"mlp": {"kind": "mlp", "optimum": None, "target": None, "description": ""}}
    ada = [curve(100, 0.5), curve(100, 0.5), curve(90, 0.3), curve(90, 0.3), curve(100, 0.5)]
    nes = [curve(at, 0.2) for at in (70, 70, 50, 50, 70)]
    _, c = verdict(tmp_path, 3, with_curves("mlp", "adadelta", ada)
                   + with_curves("mlp", "nesterov", nes), info)
    u = c["evidence"]["units"][0]
    assert u["target"] == 0.5 and u["censored"]["a"] == u["censored"]["b"] == []


def test_claim6_counts_censored_steps_and_needs_spread(tmp_path):
    # sgd never reaches the target within the budget: every difference is the same bound.
    recs = ravine_runs("momentum", [20] * 5, False) + ravine_runs("sgd", [200] * 5, True)
    got, c = verdict(tmp_path, 6, recs, {**RAV, "ravine": RAV["rav"] | {
        "description": "ill-conditioned quadratic"}})
    u = c["evidence"]["units"][0]
    assert u["speed"] == NOISE and u["oscillation"] == "supported" and got == NOISE
    assert u["speed_numbers"]["censored"]["b"] == list(SEEDS)


def test_zero_spread_of_an_inexact_measure_proves_nothing():
    assert S.paired_t([40.0] * 5, 0.0, "greater") == 0.0
    assert S.paired_t([40.0] * 5, 0.0, "greater", exact=False) == 1.0
    assert S.claim_test({s: 100.0 for s in SEEDS}, {s: 60.0 for s in SEEDS},
                        exact=False) == NOISE


def test_steps_column_says_how_many_seeds_reached():
    stat = {"mean": 376.0, "std": 80.0, "min": 320.0, "max": 432.0, "n": 2}
    assert steps_text({"seeds": 5, "diverged": 0, "reached": 2, "steps_to_target": stat}) \
        .endswith("(2/5 reached)")
    assert steps_text({"seeds": 5, "diverged": 1, "reached": 0, "steps_to_target": None}) \
        == "— (0/4 reached)"
    assert steps_text({"seeds": 2, "diverged": 2, "reached": 0, "steps_to_target": None}) == "—"

