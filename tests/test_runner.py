"""Runner and sweep protocol on a tiny fake 2-D problem (independent of the real problems).

``noisy_quadratic`` is also the custom problem the CLI tests load in subprocesses via
``--problem test_runner:noisy_quadratic``.
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from optimlab.lab import runner
from optimlab.lab.analysis import Selection
from optimlab.lab.problems.base import Problem
from optimlab.lab.spec import RunSpec
from optimlab.lab.store import Store
from optimlab.lab.executor import Executor
from optimlab.lab.sweep import Plan, lr_grid


class _Point(torch.nn.Module):
    def __init__(self, xy):
        super().__init__()
        self.xy = torch.nn.Parameter(torch.as_tensor(xy, dtype=torch.float64))

    def forward(self):
        return self.xy


def _f(x, y):
    return 0.5 * (x ** 2 + 10 * y ** 2)


def noisy_quadratic(name: str = "fake-quad", fail_at: int | None = None) -> Problem:
    """f(x, y) = (x^2 + 10 y^2) / 2 with seeded gradient noise; optimum 0.

    ``fail_at``: the loss raises at that step (for error runs). The environment variable
    OPTIMLAB_TEST_SLEEP (seconds per step) slows it down for the kill/resume test.
    """
    sleep = float(os.environ.get("OPTIMLAB_TEST_SLEEP", "0"))

    def model(seed):
        g = torch.Generator().manual_seed(1000 + seed)
        return _Point(torch.tensor([1.5, -1.0], dtype=torch.float64)
                      + 0.1 * seed * torch.randn(2, generator=g, dtype=torch.float64))

    def batch(step, seed):
        if sleep:
            time.sleep(sleep)
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        return (torch.randn(2, generator=g, dtype=torch.float64), step)

    def loss(m, b):
        noise, step = b
        if fail_at is not None and step == fail_at:
            raise RuntimeError("boom")
        xy = m()
        return _f(xy[0], xy[1]) + 0.1 * (noise * xy).sum()

    def evaluate(m, split):
        assert split in ("train", "val", "test")
        xy = m()
        return {"loss": float(_f(xy[0], xy[1])), "metric": None}

    return Problem(name=name, kind="2d", description="fake noisy quadratic", default_steps=60,
                   model=model, batch=batch, loss=loss, evaluate=evaluate, optimum=0.0,
                   target=1e-2, surface=lambda x, y: _f(x, y),
                   bounds=((-2, 2), (-2, 2)), minima=((0.0, 0.0),))


@pytest.fixture(scope="module")
def quad():
    return noisy_quadratic()


def _spec(**kw):
    base = dict(problem="fake-quad", optimizer="sgd", lr=0.05, seed=0, steps=100)
    return RunSpec(**{**base, **kw})


def test_ok_run(quad):
    rec = runner.run(_spec(), quad)
    assert rec.status == "ok"
    c = rec.curves
    assert len({len(v) for v in c.values()}) == 1
    assert c["step"][0] == 0 and c["step"][-1] == 100 and len(c["step"]) == runner.EVAL_POINTS + 1
    assert c["lr"] == [0.05] * len(c["step"])
    f = rec.final
    assert f["train_loss"] < c["train_loss"][0] / 100
    assert f["gap"] == pytest.approx(f["train_loss"])
    assert f["steps_to_target"] is not None and 0 < f["steps_to_target"] <= 100
    assert f["diverged_at"] is None and f["error"] is None
    assert len(rec.trajectory) == 101 and rec.trajectory[0] == [1.5, -1.0]
    assert rec.seconds > 0 and rec.seconds_per_step > 0
    assert set(rec.versions) == {"python", "torch", "numpy", "optimlab"}


def test_run_uses_the_hyperparameters_and_one_thread(quad, monkeypatch):
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    plain = runner.run(_spec(optimizer="momentum"), quad)
    damped = runner.run(_spec(optimizer="momentum", hyperparameters=(("dampening", 0.5),)),
                        quad)
    assert seen[0] == 1
    assert plain.status == damped.status == "ok"
    assert plain.final["train_loss"] != damped.final["train_loss"]


def test_schedule_sets_the_lr(quad):
    import optimlab

    rec = runner.run(_spec(optimizer="adam", lr=0.1, schedule="cosine"), quad)
    fn = optimlab.schedules.by_name("cosine", 100)
    assert rec.status == "ok"
    assert rec.curves["lr"] == [pytest.approx(0.1 * fn(s)) for s in rec.curves["step"]]
    assert rec.curves["lr"][-1] < rec.curves["lr"][0]


def test_diverged_run_keeps_the_curve_up_to_divergence(quad):
    rec = runner.run(_spec(lr=0.3, steps=400), quad)
    assert rec.status == "diverged"
    at = rec.final["diverged_at"]
    assert 0 < at < 400
    c = rec.curves
    assert len({len(v) for v in c.values()}) == 1 and 1 < len(c["step"]) < runner.EVAL_POINTS + 1
    assert max(c["step"]) <= at
    assert all(math.isfinite(v) for v in c["train_loss"] + c["val_loss"])
    assert rec.final["train_loss"] == rec.final["val_loss"] == rec.final["test_loss"] == math.inf
    assert rec.final["gap"] is None
    assert all(math.isfinite(v) for xy in rec.trajectory for v in xy)


@pytest.mark.parametrize("lr, steps, rule, status, at", [
    (0.05, 100, "on", "ok", None),        # converges
    (0.3, 30, "on", "diverged", 17),      # loss x4 a step: 1e10 x its start at step 17
    (0.3, 30, "off", "ok", None),         # ... but still finite (7e18) at step 30
    (10.0, 400, "on", "diverged", 3),
    (10.0, 400, "off", "diverged", 77),   # inf only after 77 steps
])
def test_a_finite_but_exploded_loss_is_diverged(quad, monkeypatch, lr, steps, rule, status, at):
    """A loss more than runner.EXPLODED x its start is a divergence, not a result: SGD past
    its stability limit ends at 1e191 or at inf depending only on the budget."""
    if rule == "off":
        monkeypatch.setattr(runner, "EXPLODED", math.inf)
    rec = runner.run(_spec(lr=lr, steps=steps, eval_every=1), quad)
    assert (rec.status, rec.final["diverged_at"]) == (status, at)
    curve = rec.curves["train_loss"]
    assert all(v <= runner.EXPLODED * max(curve[0], 1.0) for v in curve)
    if status == "diverged":
        assert rec.final["val_loss"] == math.inf


def test_error_runs_are_recorded():
    rec = runner.run(_spec(steps=runner.EVAL_POINTS), noisy_quadratic(fail_at=20))
    assert rec.status == "error" and "boom" in rec.final["error"]
    assert rec.curves["step"] == list(range(21))  # evaluated every step until the failure
    assert rec.final["val_loss"] == math.inf

    bad = runner.run(_spec(hyperparameters=(("no_such_option", 1),)), noisy_quadratic())
    assert bad.status == "error" and "TypeError" in bad.final["error"]
    assert bad.curves["step"] == []


def test_same_spec_same_record(quad):
    spec = _spec(optimizer="adam", lr=0.1, seed=2)
    a, b = runner.run(spec, quad), runner.run(spec, noisy_quadratic())
    assert (a.status, a.final, a.curves, a.trajectory) == (b.status, b.final, b.curves,
                                                           b.trajectory)
    other = runner.run(_spec(optimizer="adam", lr=0.1, seed=1), quad)
    assert other.final != a.final


def test_run_does_not_disturb_global_state(quad):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    runner.run(_spec(steps=10), quad)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


# ---------------------------------------------------------------------- sweep plan

def test_lr_grid():
    assert lr_grid() == [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    assert lr_grid(per_decade=2) == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316, 1.0]
    assert lr_grid(1e-3, 10.0, 1) == [1e-3, 1e-2, 0.1, 1.0, 10.0]


def _plan(quad, **kw):
    base = dict(sources={"fake-quad": "x:y"}, optimizers=["sgd", "adam", "nadam"],
                lrs=[1e-3, 1e-2, 0.1, 1.0], seeds=3, steps={"fake-quad": 40},
                problems={"fake-quad": quad})
    return Plan(**{**base, **kw})


def test_sweep_plan_shares_the_grid_and_seed(quad):
    plan = _plan(quad)
    specs = plan.sweep_specs()
    assert len(specs) == 3 * 4 == len({s.run_id for s in specs})
    by_opt = {}
    for s in specs:
        assert (s.seed, s.phase, s.steps, s.hyperparameters) == (0, "sweep", 40, ())
        by_opt.setdefault(s.optimizer, []).append(s.lr)
    assert all(lrs == plan.lrs for lrs in by_opt.values())


def test_seed_phase_reruns_the_selected_lr(quad):
    plan = _plan(quad, seeds=3)
    sel = {("fake-quad", "sgd"): Selection(lr=0.1, score=0.0, on_edge=False, grid=()),
           ("fake-quad", "adam"): Selection(lr=1e-3, score=1.0, on_edge=True, grid=())}
    specs = plan.seed_specs(sel)
    got = sorted((s.optimizer, s.lr, s.seed, s.phase) for s in specs)
    assert got == [("adam", 1e-3, 1, "seeds"), ("adam", 1e-3, 2, "seeds"),
                   ("sgd", 0.1, 1, "seeds"), ("sgd", 0.1, 2, "seeds")]
    assert _plan(quad, seeds=1).seed_specs(sel) == []


def test_compare_selects_on_seed_means_and_skips_stored_runs(quad, tmp_path, monkeypatch):
    from optimlab.lab import sweep
    from optimlab.lab.selection import CANDIDATES

    plan = _plan(quad)
    store = Store(tmp_path / "r.sqlite")
    selections = sweep.compare(plan, store, workers=1, log=lambda m: None)
    sweep_recs, seed_recs = store.records("sweep"), store.records("seeds")
    assert len(sweep_recs) == 12   # a fixed (user) grid: no extension, no refinement
    for (p, o), sel in selections.items():
        mine = [r for r in sweep_recs if r.spec.optimizer == o]
        ranked = sorted((r.final["val_loss"], r.spec.lr) for r in mine
                        if math.isfinite(r.final["val_loss"]))
        cands = sorted(lr for _, lr in ranked[:CANDIDATES])
        reruns = [r for r in seed_recs if r.spec.optimizer == o]
        assert sorted({r.spec.lr for r in reruns}) == cands
        # Successive halving: seed 1 for every candidate, seed 2 for the promoted only.
        assert sorted(r.spec.lr for r in reruns if r.spec.seed == 1) == cands
        full = sorted(r.spec.lr for r in reruns if r.spec.seed == 2)
        assert full == list(sel.promoted) and sel.lr in full
        # The selected lr has the lowest mean over seeds 0..2 among the promoted.
        means = {lr: sum(r.final["val_loss"] for r in mine + reruns if r.spec.lr == lr) / 3
                 for lr in full}
        assert sel.lr == min(means, key=lambda lr: (means[lr], lr))
        assert sel.score == pytest.approx(means[sel.lr]) and sel.seeds == 3
    n = len(store)
    assert n == 12 + len(seed_recs)

    # A second compare finds everything stored and runs nothing.
    monkeypatch.setattr(runner, "run", lambda *a: pytest.fail("re-ran a stored run"))
    sweep.compare(plan, store, workers=1, log=lambda m: None)
    assert len(store) == n


def test_executor_retries_error_runs_only(quad, tmp_path):
    store = Store(tmp_path / "r.sqlite")
    ok, err = _spec(steps=5), _spec(steps=5, optimizer="adam")
    store.put(runner.run(ok, quad))
    store.put(runner.run(err, noisy_quadratic(fail_at=2)))
    ex = Executor(store, {"fake-quad": "x:y"}, problems={"fake-quad": quad})
    assert ex.pending([ok, err, err]) == [err]
    assert ex.run([ok, err]) == 1
    assert {r.status for r in store.records()} == {"ok"}


def test_adaptive_compare_searches_in_rounds(quad, tmp_path):
    """The search (coarse, then extension/refinement rounds) on the fake quadratic: every
    optimizer gets the refined lrs around its best, and a rerun adds nothing."""
    from optimlab.lab import sweep
    from optimlab.lab.search import COARSE, index

    plan = _plan(quad, lrs=list(COARSE), adaptive=True, optimizers=["sgd", "adam"], seeds=2)
    store = Store(tmp_path / "r.sqlite")
    logs = []
    selections = sweep.compare(plan, store, workers=1, log=logs.append)
    assert sum("phase sweep, round" in m for m in logs) >= 2
    for (p, o), sel in selections.items():
        searched = {r.spec.lr for r in store.records("sweep") if r.spec.optimizer == o}
        assert set(sel.grid) == searched and set(COARSE) < searched
        best0 = min(store.records("sweep"),
                    key=lambda r: (r.final["val_loss"], r.spec.lr) if r.spec.optimizer == o
                    else (math.inf, 0)).spec.lr
        have = {index(lr) for lr in searched}
        assert all(index(best0) + d in have for d in (-2, -1, 1, 2))
        assert sel.seeds == 2 and sel.lr in [lr for lr, _ in sel.candidates]
    n = len(store)
    assert set(sweep.compare(plan, store, workers=1, log=lambda m: None)) == set(selections)
    assert len(store) == n


def test_bias_correction_uses_adams_searched_lrs():
    from types import SimpleNamespace

    plan = Plan(sources={"v": "v"}, optimizers=["adam", "sgd"], lrs=[1e-3, 1e-2], seeds=2,
                steps={"v": 10}, problems={"v": SimpleNamespace(kind="vae")})
    assert {s.lr for s in plan.bias_specs()} == {1e-3, 1e-2}
    sel = {("v", "adam"): Selection(1e-2, 0.1, False, (1e-3, 5.62e-3, 1e-2, 0.1))}
    specs = plan.bias_specs(sel)
    assert {s.lr for s in specs} == {1e-3, 5.62e-3, 1e-2, 0.1}
    assert len(specs) == 4 * 3 * 2 and {s.phase for s in specs} == {"bias-correction"}


def test_train_metric_only_where_it_is_kept():
    """With ``evaluate_loss``, intermediate train evaluations skip the metric (it would be
    discarded); the final one keeps it, and the losses equal ``evaluate``'s."""
    import dataclasses

    base = noisy_quadratic()
    calls = []

    def evaluate(m, split):
        calls.append(("full", split))
        return {**base.evaluate(m, split), "metric": 0.5}

    def evaluate_loss(m, split):
        calls.append(("loss", split))
        return base.evaluate(m, split)["loss"]

    fast = dataclasses.replace(base, evaluate=evaluate, evaluate_loss=evaluate_loss)
    slow = dataclasses.replace(base, evaluate=evaluate)
    a, b = runner.run(_spec(steps=20), fast), runner.run(_spec(steps=20), slow)
    assert a.curves == b.curves and a.final == b.final and a.final["train_metric"] == 0.5
    fast_calls = calls[:len(calls) - (2 * 21 + 1)]
    train = [kind for kind, split in fast_calls if split == "train"]
    assert train == ["loss"] * 20 + ["full"]          # 21 points, only the last with metric
    assert all(kind == "full" for kind, split in fast_calls if split != "train")
