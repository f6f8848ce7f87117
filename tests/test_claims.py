"""Each claim's verdict follows its data: fabricated stores in which the claim clearly
holds, clearly fails, or is within noise give supported / contradicted / inconclusive, and
"not run" when the runs it needs are absent."""

from __future__ import annotations

import math
import random

import pytest

from optimlab.lab import claims
from optimlab.lab.spec import RunRecord, RunSpec
from optimlab.lab.store import Store

INF = float("inf")
SEEDS = range(5)
LRS = (1e-3, 1e-2, 1e-1)
SEL = 1e-2   # every fabricated (problem, optimizer) selects the middle lr


def record(problem, optimizer, lr, seed, val, *, phase="sweep", schedule="constant", hp=(),
           status="ok", steps=100, train=None, trajectory=None, diverged_at=None):
    """A run whose final val loss is ``val``; ``train`` is its train-loss curve at steps
    0, 10, ..., steps (default: a line from 2 * val down to val)."""
    n = len(train) if train is not None else 11
    every = steps // max(n - 1, 1)
    step = [i * every for i in range(n)]
    if train is None:
        train = [2 * val - val * i / (n - 1) for i in range(n)] if math.isfinite(val) else [1.0]
        step = step[:len(train)]
    ok = status == "ok"
    final = {"train_loss": train[-1] if ok else INF, "val_loss": val if ok else INF,
             "test_loss": val if ok else INF, "train_metric": None, "val_metric": None,
             "test_metric": None, "gap": None, "steps_to_target": None,
             "diverged_at": diverged_at, "error": None}
    curves = {"step": step, "train_loss": list(train), "val_loss": list(train),
              "val_metric": [None] * len(step), "lr": [lr] * len(step)}
    spec = RunSpec(problem=problem, optimizer=optimizer, lr=lr, seed=seed, steps=steps,
                   schedule=schedule, hyperparameters=tuple(hp), phase=phase)
    return RunRecord(spec=spec, status=status, final=final, curves=curves, seconds=1.0,
                     seconds_per_step=0.01, trajectory=trajectory, versions={})


def selected(problem, optimizer, vals, *, others=None, **kw):
    """The sweep (seed 0 at LRS, middle lr = vals[0]) and seeds 1.. at the middle lr.
    ``others``: {lr: val} of the other lrs (default: clearly worse)."""
    worst = max(v for v in vals if math.isfinite(v)) if any(map(math.isfinite, vals)) else 1.0
    others = others or {}
    out = [record(problem, optimizer, lr, 0, others.get(lr, worst + 1.0)) for lr in LRS
           if lr != SEL]
    out += [record(problem, optimizer, SEL, s, v, phase="sweep" if s == 0 else "seeds", **kw)
            for s, v in zip(SEEDS, vals)]
    return out


def stored(tmp_path, records, info):
    """Round-trip through a real Store; returns (records, meta)."""
    path = tmp_path / f"s{random.random():.12f}.sqlite"
    with Store(path) as store:
        for r in records:
            store.put(r)
        store.set_meta("problem_info", info)
        return store.records(), store.meta()


def verdict(tmp_path, cid, records, info):
    recs, meta = stored(tmp_path, records, info)
    out = {c["id"]: c for c in claims.evaluate(recs, meta)}
    return out[cid]["verdict"], out[cid]


def jitter(base, scale, seed):
    rng = random.Random(seed)
    return [base + scale * rng.uniform(-1, 1) for _ in SEEDS]


NOISE_A = [0.50, 0.62, 0.41, 0.55, 0.47]
NOISE_B = [0.56, 0.44, 0.52, 0.43, 0.60]   # same mean, differences of both signs

HOLDS, FAILS, NOISE = "supported", "contradicted", "inconclusive"


# ------------------------------------------------------------------------ claim 1

SPARSE = {"bow": {"kind": "sparse", "optimum": 0.0, "target": None, "description": ""}}


@pytest.mark.parametrize("adam,sgd,want", [
    (jitter(0.30, 0.01, 1), jitter(0.60, 0.01, 2), HOLDS),
    (jitter(0.60, 0.01, 1), jitter(0.30, 0.01, 2), FAILS),
    (NOISE_A, NOISE_B, NOISE)])
def test_claim1_sparse(tmp_path, adam, sgd, want):
    # adam's default lr 1e-3 is swept: holds at default too when it beats tuned sgd.
    recs = selected("bow", "adam", adam, others={1e-3: min(adam) + 0.01}) + \
        selected("bow", "sgd", sgd)
    got, c = verdict(tmp_path, 1, recs, SPARSE)
    assert got == want
    assert c["evidence"]["units"][0]["default_lr"]["adam"]["lr"] == 1e-3


def test_claim1_needs_the_default_lr_to_hold_too(tmp_path):
    recs = selected("bow", "adam", jitter(0.30, 0.01, 1), others={1e-3: 5.0}) + \
        selected("bow", "sgd", jitter(0.60, 0.01, 2))
    assert verdict(tmp_path, 1, recs, SPARSE)[0] == NOISE


# ------------------------------------------------------------------------ claim 2

MLP = {"mlp": {"kind": "mlp", "optimum": None, "target": 0.5, "description": ""}}


def schedules(problem, optimizer, per_schedule: dict):
    return [record(problem, optimizer, SEL, s, v, phase="schedules", schedule=sch)
            for sch, vals in per_schedule.items() for s, v in zip(SEEDS, vals)]


@pytest.mark.parametrize("sgd,adam,want", [
    # sgd at cosine: as good on average, far tighter over seeds
    ([0.300, 0.301, 0.299, 0.302, 0.298], [0.30, 0.20, 0.40, 0.22, 0.38], HOLDS),
    (jitter(0.30, 0.005, 3), jitter(0.10, 0.005, 4), FAILS),      # adam clearly better
    (NOISE_A, NOISE_B, NOISE)])
def test_claim2_scheduled_sgd(tmp_path, sgd, adam, want):
    recs = (selected("mlp", "sgd", [v + 1 for v in sgd])
            + schedules("mlp", "sgd", {"cosine": sgd, "step": [v + 0.5 for v in sgd]})
            + selected("mlp", "adam", adam)
            + schedules("mlp", "adam", {"cosine": [v + 0.5 for v in adam]}))
    got, c = verdict(tmp_path, 2, recs, MLP)
    assert got == want
    u = c["evidence"]["units"][0]
    assert u["sgd_schedule"] == "cosine" and u["adam_schedule"] == "constant"


def test_claim2_spread_needs_three_seeds(tmp_path):
    """With 2 seeds both |seed - median| are |x1 - x2| / 2: the paired spread test had zero
    spread and called any difference decisive ("supported" from 2 runs each)."""
    sgd, adam = [0.300, 0.301], [0.30, 0.20]
    recs = (selected("mlp", "sgd", [v + 1 for v in sgd]) + schedules("mlp", "sgd", {"cosine": sgd})
            + selected("mlp", "adam", adam) + schedules("mlp", "adam", {"cosine": adam}))
    got, c = verdict(tmp_path, 2, recs, MLP)
    u = c["evidence"]["units"][0]
    assert (got, u["spread"]) == (NOISE, NOISE)
    assert "not enough seeds" in u["spread_numbers"]["note"]


# ------------------------------------------------------------------------ claim 3

def reaching(at_steps):
    """Train curves (0..100 by 10) that drop below the target 0.5 at the given steps."""
    return [[1.0 if s < at else 0.4 for s in range(0, 101, 10)] for at in at_steps]


def with_curves(problem, optimizer, curves):
    return [record(problem, optimizer, SEL, s, 0.4, phase="sweep" if s == 0 else "seeds",
                   train=c) for s, c in zip(SEEDS, curves)] + \
        [record(problem, optimizer, lr, 0, 2.0) for lr in LRS if lr != SEL]


@pytest.mark.parametrize("adam,sgd,want", [
    ([20, 20, 30, 20, 30], [80, 90, 80, 90, 80], HOLDS),
    ([80, 90, 80, 90, 80], [20, 20, 30, 20, 30], FAILS),
    ([20, 80, 50, 90, 30], [70, 30, 40, 20, 90], NOISE)])
def test_claim3_steps_to_target(tmp_path, adam, sgd, want):
    recs = with_curves("mlp", "adam", reaching(adam)) + with_curves("mlp", "sgd", reaching(sgd))
    got, c = verdict(tmp_path, 3, recs, MLP)
    assert got == want
    assert c["evidence"]["units"][0]["target"] == 0.5


def test_claim3_without_a_target_uses_a_level_both_reach(tmp_path):
    info = {"mlp": {"kind": "mlp", "optimum": None, "target": None, "description": ""}}
    recs = with_curves("mlp", "adam", reaching([20] * 5)) + \
        with_curves("mlp", "sgd", reaching([90] * 4 + [80]))
    got, c = verdict(tmp_path, 3, recs, info)
    assert got == HOLDS and c["evidence"]["units"][0]["target"] == pytest.approx(0.4)


# ------------------------------------------------------------------------ claim 4

@pytest.mark.parametrize("vals,want", [
    ({o: jitter(0.300, 0.001, i) for i, o in enumerate(("adadelta", "rmsprop", "adam"))}, HOLDS),
    ({"adadelta": jitter(0.3, 0.002, 1), "rmsprop": jitter(0.3, 0.002, 2),
      "adam": jitter(0.1, 0.002, 3)}, FAILS),
    ({"adadelta": NOISE_A, "rmsprop": NOISE_B, "adam": NOISE_A[::-1]}, NOISE)])
def test_claim4_adaptive_trio_about_the_same(tmp_path, vals, want):
    info = {"q": {"kind": "quadratic", "optimum": 0.0, "target": None, "description": ""}}
    recs = [r for o, v in vals.items() for r in selected("q", o, v)]
    assert verdict(tmp_path, 4, recs, info)[0] == want


# ------------------------------------------------------------------------ claim 5

@pytest.mark.parametrize("nadam,adam,want", [
    (jitter(0.2, 0.01, 1), jitter(0.3, 0.01, 2), HOLDS),
    (jitter(0.3, 0.01, 1), jitter(0.2, 0.01, 2), FAILS),
    (NOISE_A, NOISE_B, NOISE)])
def test_claim5_nadam(tmp_path, nadam, adam, want):
    info = {p: {"kind": "mlp", "optimum": None, "target": None, "description": ""}
            for p in ("a", "b")}
    recs = [r for p in info for r in selected(p, "nadam", nadam) + selected(p, "adam", adam)]
    assert verdict(tmp_path, 5, recs, info)[0] == want


# ------------------------------------------------------------------------ claim 6

RAVINE = {"ravine": {"kind": "2d", "optimum": 0.0, "target": 1e-3,
                     "description": "ill-conditioned quadratic (x^2 + 100 y^2) / 2"}}


def path(reach, zigzag, seed):
    """A 2-D trajectory of 101 steps and its loss curve reaching 1e-3 at ``reach``;
    ``zigzag``: the y-coordinate flips sign every step, else it decays monotonically."""
    j = 1 + 0.01 * seed
    traj = [[-2.0 * j * 0.97 ** t, 0.4 * j * (-0.8 if zigzag else 0.8) ** t] for t in range(101)]
    train = [1.0 if s < reach else 1e-4 for s in range(0, 101, 10)]
    return traj, train


def ravine_runs(optimizer, reach, zigzag):
    out = []
    for s, at in zip(SEEDS, reach):
        traj, train = path(at, zigzag, s)
        out.append(record("ravine", optimizer, SEL, s, train[-1], train=train, trajectory=traj,
                          phase="sweep" if s == 0 else "seeds"))
    return out + [record("ravine", optimizer, lr, 0, 1.0) for lr in LRS if lr != SEL]


@pytest.mark.parametrize("mom,sgd,want", [
    (([20, 30, 20, 30, 20], False), ([80, 90, 80, 90, 90], True), HOLDS),
    (([80, 90, 80, 90, 90], True), ([20, 30, 20, 30, 20], False), FAILS),
    (([20, 90, 50, 30, 70], True), ([60, 30, 40, 80, 20], True), NOISE)])
def test_claim6_momentum_on_the_ravine(tmp_path, mom, sgd, want):
    recs = ravine_runs("momentum", *mom) + ravine_runs("sgd", *sgd)
    got, c = verdict(tmp_path, 6, recs, RAVINE)
    assert got == want
    u = c["evidence"]["units"][0]
    if want == HOLDS:
        assert u["reversals"]["momentum"][0] == 0.0 and u["reversals"]["sgd"][0] == 1.0


# ------------------------------------------------------------------------ claim 7

def bias(problem, b2, bc, early_by_lr):
    """Bias-correction runs whose early train loss (steps 10, 20 of 100) is given per lr."""
    return [record(problem, "adam", lr, 0, 1.0, phase="bias-correction",
                   hp=(("betas", (0.9, b2)), ("bias_correction", bc)),
                   train=[9.0, e, e] + [1.0] * 8) for lr, e in early_by_lr.items()]


LRS5 = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


@pytest.mark.parametrize("lo_without,hi_without,hi_with,want", [
    ([2.5, 2.6, 2.4, 2.5, 2.6], [5.0, 5.5, 4.8, 5.2, 6.0], [2.0] * 5, HOLDS),
    ([2.5, 2.6, 2.4, 2.5, 2.6], [1.0, 1.1, 0.9, 1.2, 1.0], [2.0] * 5, FAILS),
    ([2.5, 1.6, 2.4, 1.5, 2.6], [2.5, 1.5, 2.4, 1.6, 2.6], [2.0] * 5, NOISE)])
def test_claim7_bias_correction(tmp_path, lo_without, hi_without, hi_with, want):
    info = {"vae": {"kind": "vae", "optimum": None, "target": None, "description": ""}}
    recs = (bias("vae", 0.99, True, dict(zip(LRS5, [2.0, 2.1, 1.9, 2.0, 2.1])))
            + bias("vae", 0.99, False, dict(zip(LRS5, lo_without)))
            + bias("vae", 0.9999, True, dict(zip(LRS5, hi_with)))
            + bias("vae", 0.9999, False, dict(zip(LRS5, hi_without))))
    got, c = verdict(tmp_path, 7, recs, info)
    assert got == want
    assert [b["beta2"] for b in c["evidence"]["units"][0]["by_beta2"]] == [0.99, 0.9999]


def test_claim7_diverged_early_counts_against(tmp_path):
    info = {"vae": {"kind": "vae", "optimum": None, "target": None, "description": ""}}
    diverged = [record("vae", "adam", lr, 0, INF, phase="bias-correction", status="diverged",
                       hp=(("betas", (0.9, 0.9999)), ("bias_correction", False)),
                       train=[9.0], diverged_at=3) for lr in LRS5]
    recs = (bias("vae", 0.9999, True, dict(zip(LRS5, [2.0, 2.2, 1.9, 2.1, 2.0]))) + diverged)
    assert verdict(tmp_path, 7, recs, info)[0] == HOLDS


# ------------------------------------------------------------------------ claim 8

def sweep_pair(problem, optimizer, large_diverges, small_slow):
    lrs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    out = []
    for lr in lrs:
        if lr == 1.0 and large_diverges:
            out.append(record(problem, optimizer, lr, 0, INF, status="diverged", train=[1.0, 9.0],
                              diverged_at=10))
        elif lr == 1e-4:
            out.append(record(problem, optimizer, lr, 0, 0.9 if small_slow else 0.101))
        else:
            out.append(record(problem, optimizer, lr, 0, 0.1 if lr == 1e-2 else 0.102))
    return out


@pytest.mark.parametrize("pattern,want", [
    ([(True, True)] * 8, HOLDS),
    ([(False, False)] * 8, FAILS),
    ([(True, True), (False, False)] * 4, NOISE)])
def test_claim8_lr_extremes(tmp_path, pattern, want):
    info = {f"p{i}": {"kind": "quadratic", "optimum": 0.0, "target": None, "description": ""}
            for i in range(4)}
    recs = [r for i, (large, small) in enumerate(pattern)
            for r in sweep_pair(f"p{i // 2}", ("sgd", "adam")[i % 2], large, small)]
    got, c = verdict(tmp_path, 8, recs, info)
    assert got == want and len(c["evidence"]["units"]) == 8


@pytest.mark.parametrize("pattern,want,lo,hi", [
    ([(True, True)], NOISE, 0.025, 1.0),           # 1 of 1: was 100%..100%, "supported"
    ([(True, True)] * 3, NOISE, 0.292, 1.0),       # 3 of 3 only shows > 29%
    ([(True, True), (False, False)], NOISE, 0.0126, 0.987),   # was -585%..685%
    ([(True, True)] * 6, HOLDS, 0.541, 1.0),       # the fewest pairs that can support it
    ([(False, False)] * 6, FAILS, 0.0, 0.459),
])
def test_claim8_fraction_has_an_exact_binomial_interval(tmp_path, pattern, want, lo, hi):
    from optimlab.lab.report import claims as report_claims

    info = {f"p{i}": {"kind": "quadratic", "optimum": 0.0, "target": None, "description": ""}
            for i in range(len(pattern))}
    recs = [r for i, (large, small) in enumerate(pattern)
            for r in sweep_pair(f"p{i}", "sgd", large, small)]
    got, c = verdict(tmp_path, 8, recs, info)
    f = c["evidence"]["fraction"]
    assert got == want
    assert (f["lo"], f["hi"]) == (pytest.approx(lo, abs=1e-3), pytest.approx(hi, abs=1e-3))
    assert 0.0 <= f["lo"] <= f["mean"] <= f["hi"] <= 1.0
    assert "exact binomial 95% CI" in report_claims.summary_text(c)


def test_claim8_oscillating_curve_counts_as_unstable(tmp_path):
    info = {"p": {"kind": "quadratic", "optimum": 0.0, "target": None, "description": ""}}
    recs = [r for r in sweep_pair("p", "sgd", False, True) if r.spec.lr != 1.0]
    recs.append(record("p", "sgd", 1.0, 0, 0.5, train=[1.0, 0.3, 0.9, 0.2, 0.8, 0.5]))
    _, c = verdict(tmp_path, 8, recs, info)
    assert c["evidence"]["units"][0]["large_unstable"] is True


# ------------------------------------------------------------------------ claim 9

#: the lr was tuned for the constant schedule (or the uniform lr): a baseline that wins
#: there cannot contradict the claim, it only leaves it open
FAVOURED = NOISE


@pytest.mark.parametrize("cosine,const,want", [
    (jitter(0.20, 0.005, 1), jitter(0.30, 0.005, 2), HOLDS),
    (jitter(0.40, 0.005, 1), jitter(0.30, 0.005, 2), FAVOURED),
    (NOISE_A, NOISE_B, NOISE)])
def test_claim9_decaying_schedule(tmp_path, cosine, const, want):
    recs = []
    for o in ("sgd", "adam"):
        recs += selected("mlp", o, const)
        recs += schedules("mlp", o, {"cosine": cosine, "step": [v + 0.3 for v in cosine],
                                     "warmup_cosine": [v + 0.3 for v in cosine]})
    got, c = verdict(tmp_path, 9, recs, MLP)
    assert got == want
    assert {u["best_schedule"] for u in c["evidence"]["units"]} == {"cosine"}
    favoured = cosine[0] > const[0]
    assert all((u.get("favoured") == "constant lr") is favoured for u in c["evidence"]["units"])


# ----------------------------------------------------------------------- claim 10

@pytest.mark.parametrize("decayed,uniform,want", [
    (jitter(0.20, 0.005, 1), jitter(0.30, 0.005, 2), HOLDS),
    (jitter(0.40, 0.005, 1), jitter(0.30, 0.005, 2), FAVOURED),
    (NOISE_A, NOISE_B, NOISE)])
def test_claim10_layerwise(tmp_path, decayed, uniform, want):
    recs = selected("mlp", "sgd", uniform) + [
        record("mlp", "sgd", SEL, s, v, phase="layerwise", hp=(("layer_decay", 0.5),))
        for s, v in zip(SEEDS, decayed)]
    got, c = verdict(tmp_path, 10, recs, MLP)
    assert got == want and c["evidence"]["units"][0]["layer_decay"] == 0.5


# ------------------------------------------------------- verdicts follow the interval

def test_claim_verdicts_agree_with_the_interval_shown():
    """claims.test: supported exactly when the shown 95% interval of a - b lies below 0,
    contradicted when above (it was a one-sided 5% test each way: "Δ 0.009 [-0.005,
    0.024], n=2 → contradicted"). Random paired samples around the decision boundary."""
    from optimlab.lab.stats import paired_t

    rng = random.Random(11)
    between = 0
    for _ in range(300):
        n = rng.choice((2, 3, 5))
        shift = rng.uniform(-1.5, 1.5) / math.sqrt(n)
        a = {s: 1.0 + rng.gauss(0, 0.3) for s in range(n)}
        b = {s: v + shift + rng.gauss(0, 0.1) for s, v in a.items()}
        v, nums = claims.test(a, b)
        d = nums["diff"]
        want = HOLDS if d["hi"] < 0 else FAILS if d["lo"] > 0 else NOISE
        assert v == want, (a, b, d)
        diffs = [b[s] - a[s] for s in range(n)]
        between += d["lo"] <= 0 <= d["hi"] and min(paired_t(diffs), paired_t(diffs, 0.0,
                                                                              "less")) < 0.05
    assert between >= 5   # draws the old one-sided 5% verdict decided against the interval


# ------------------------------------------------------------------------- not run

def test_every_claim_is_not_run_without_its_data(tmp_path):
    # A logistic problem with sgd alone: nothing any claim needs.
    info = {"q": {"kind": "logistic", "optimum": 0.0, "target": None, "description": ""}}
    recs = [r for r in selected("q", "sgd", jitter(0.3, 0.01, 1)) if r.spec.lr != LRS[-1]]
    out = claims.evaluate(*stored(tmp_path, recs, info))   # 2 lrs: too few for claim 8
    assert [c["id"] for c in out] == list(range(1, 11))
    assert {c["verdict"] for c in out} == {"not run"}
    assert all(c["evidence"]["reason"] and c["claim"] == claims.CLAIMS[c["id"]] for c in out)
    assert {c["verdict"] for c in claims.evaluate([], {})} == {"not run"}


def test_majority_rule():
    assert claims.majority(["supported", "supported", "inconclusive"]) == "supported"
    assert claims.majority(["supported", "contradicted"]) == "inconclusive"
    assert claims.majority(["contradicted"] * 2 + ["inconclusive"]) == "contradicted"
    assert claims.majority([]) == "not run"


# ------------------------------------------------------------------ report and json

def _layerwise_store(tmp_path):
    recs = selected("mlp", "sgd", jitter(0.30, 0.005, 2)) + [
        record("mlp", "sgd", SEL, s, v, phase="layerwise", hp=(("layer_decay", 0.5),))
        for s, v in zip(SEEDS, jitter(0.20, 0.005, 1))]
    return stored(tmp_path, recs, MLP)


def test_report_has_the_claims_section(tmp_path):
    from optimlab.lab.report import render

    recs, meta = _layerwise_store(tmp_path)
    page, md, _ = render(recs, meta)
    assert "What the articles say, and what we found" in page and 'href="#claims"' in page
    section = page[page.index('<section id="claims">'):]
    section = section[:section.index("</section>")]
    # claim 10 supported with its comparison and forest plot; claims 1-7 and 9 not run.
    rows = section.split("<tr><td>")[1:]
    assert [r.split("<")[0] for r in rows] == [str(i) for i in range(1, 11)]
    assert ">supported</span>" in rows[9] and all(">not run</span>" in rows[i]
                                                  for i in (0, 1, 2, 3, 4, 5, 6, 8))
    assert "layer decay 0.5 vs uniform" in section and "data:image/png;base64," in section
    assert "## What the articles say, and what we found" in md
    row10 = next(line for line in md.splitlines() if line.startswith("| 10 |"))
    assert "**supported**" in row10 and "layer decay 0.5 vs uniform" in row10


def test_report_escapes_store_strings(tmp_path):
    from optimlab.lab.report import render

    evil = "<script>x</script>"
    recs = selected(evil, "sgd", jitter(0.30, 0.005, 2)) + [
        record(evil, "sgd", SEL, s, v, phase="layerwise", hp=(("layer_decay", 0.5),))
        for s, v in zip(SEEDS, jitter(0.20, 0.005, 1))]
    recs, meta = stored(tmp_path, recs, {evil: MLP["mlp"]})
    page, _, _ = render(recs, meta)
    section = page[page.index('<section id="claims">'):]
    assert evil not in section and "&lt;script&gt;" in section


def test_json_summary_carries_the_claims(tmp_path):
    import json

    from optimlab.lab.cli import summary

    recs, meta = _layerwise_store(tmp_path)
    out = json.loads(json.dumps(summary(recs, None, meta=meta), allow_nan=False))
    assert [c["id"] for c in out["claims"]] == list(range(1, 11))
    assert all(set(c) == {"id", "claim", "verdict", "evidence"} for c in out["claims"])
    c10 = out["claims"][9]
    assert c10["verdict"] == "supported"
    assert c10["evidence"]["units"][0]["diff"]["hi"] < 0


def test_forest_plot_keeps_names_out_of_mathtext(tmp_path):
    from optimlab.lab.report import claims as report_claims

    name = "$\\frac$"   # malformed mathtext: would raise if matplotlib parsed it
    recs = selected(name, "sgd", jitter(0.30, 0.005, 2)) + [
        record(name, "sgd", SEL, s, v, phase="layerwise", hp=(("layer_decay", 0.5),))
        for s, v in zip(SEEDS, jitter(0.20, 0.005, 1))]
    c10 = claims.evaluate(*stored(tmp_path, recs, {name: MLP["mlp"]}))[9]
    png = report_claims.forest(c10)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
