"""The schedules and layer-wise lr phases: spec builders, the runner's layer-wise decay, and
the hook into ``sweep.compare``."""

from __future__ import annotations

import pytest
import torch

import optimlab
from optimlab.lab import experiments, runner
from optimlab.lab.analysis import Selection
from optimlab.lab.problems.base import Problem
from optimlab.lab.spec import RunSpec
from optimlab.lab.store import Store
from optimlab.lab.sweep import Plan

INF = float("inf")


class _TwoLayer(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lower = torch.nn.Linear(4, 3)
        self.upper = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.upper(torch.tanh(self.lower(x)))


def tiny_net(name="tiny-mlp", kind="mlp", built=None) -> Problem:
    """A two-layer regression net on fixed data; ``built`` collects every model made."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = x[:, :1] - 0.5 * x[:, 1:2]

    def model(seed):
        m = _TwoLayer(seed)
        if built is not None:
            built.append(m)
        return m

    def loss(m, batch):
        return torch.nn.functional.mse_loss(m(x), y)

    def evaluate(m, split):
        return {"loss": float(loss(m, None)), "metric": None}

    return Problem(name=name, kind=kind, description="tiny two-layer net", default_steps=20,
                   model=model, batch=lambda step, seed: (), loss=loss, evaluate=evaluate)


def _plan(problems: dict, optimizers=("sgd", "momentum", "adam", "nadam"), seeds=5):
    return Plan(sources={n: n for n in problems}, optimizers=list(optimizers), lrs=[1e-2, 1e-1],
                seeds=seeds, steps={n: 20 for n in problems}, problems=dict(problems))


def _sel(lr, score=0.5):
    return Selection(lr=lr, score=score, on_edge=False, grid=(lr,))


def test_schedule_specs_cover_neural_problems_at_the_selected_lr():
    problems = {"mlp": tiny_net("mlp", "mlp"), "lm": tiny_net("lm", "char-lm"),
                "quad": tiny_net("quad", "quadratic")}
    plan = _plan(problems)
    sel = {(p, o): _sel(0.01 * (i + 1)) for i, (p, o) in enumerate(
        (p, o) for p in problems for o in plan.optimizers)}
    sel[("lm", "adam")] = _sel(0.3, score=INF)   # every lr diverged: no schedule runs
    specs = experiments.schedule_specs(plan, sel)
    got = {(s.problem, s.optimizer) for s in specs}
    assert got == {("mlp", "sgd"), ("mlp", "adam"), ("lm", "sgd")}
    for s in specs:
        assert s.phase == "schedules" and s.hyperparameters == ()
        assert s.lr == sel[(s.problem, s.optimizer)].lr and s.steps == 20
    per = {}
    for s in specs:
        per.setdefault((s.problem, s.optimizer), set()).add((s.schedule, s.seed))
    want = {(sch, seed) for sch in experiments.SCHEDULES for seed in range(5)}
    assert all(v == want for v in per.values())
    assert len(specs) == 3 * 3 * 5
    # The comparison's own schedule is the baseline and is not rerun.
    plan.schedule = "cosine"
    assert {s.schedule for s in experiments.schedule_specs(plan, sel)} == {"step", "warmup_cosine",
                                                                           }


def test_layerwise_specs_decay_on_mlp_and_cnn_only():
    problems = {"mlp": tiny_net("mlp", "mlp"), "cnn": tiny_net("cnn", "cnn"),
                "vae": tiny_net("vae", "vae")}
    plan = _plan(problems, optimizers=("sgd", "adam", "rmsprop"), seeds=3)
    sel = {(p, o): _sel(0.05) for p in problems for o in plan.optimizers}
    specs = experiments.layerwise_specs(plan, sel)
    assert {(s.problem, s.optimizer) for s in specs} == {
        ("mlp", "sgd"), ("mlp", "adam"), ("cnn", "sgd"), ("cnn", "adam")}
    assert sorted({s.seed for s in specs}) == [0, 1, 2]
    assert all(s.phase == "layerwise" and s.lr == 0.05 and
               s.hyperparameters == (("layer_decay", experiments.LAYER_DECAY),) for s in specs)
    assert experiments.layerwise_specs(plan, {}) == []


def test_runner_gives_each_layer_its_decayed_lr(monkeypatch):
    groups_seen = []
    real = optimlab.create

    def spy(name, params, **kw):
        opt = real(name, params, **kw)
        groups_seen.append([g["lr"] for g in opt.param_groups])
        return opt

    monkeypatch.setattr(optimlab, "create", spy)
    built = []
    problem = tiny_net(built=built)
    spec = RunSpec(problem="tiny-mlp", optimizer="sgd", lr=0.1, seed=0, steps=1,
                   hyperparameters=(("layer_decay", 0.25),), phase="layerwise")
    decayed = runner.run(spec, problem)
    uniform = runner.run(RunSpec(problem="tiny-mlp", optimizer="sgd", lr=0.1, seed=0, steps=1),
                         problem)
    assert decayed.status == uniform.status == "ok"
    assert sorted(groups_seen[0]) == pytest.approx([0.025, 0.1]) and groups_seen[1] == [0.1]
    # One SGD step from the same weights: the lower layer moves 0.25x as far, the upper
    # layer exactly as far.
    init = tiny_net().model(0)
    (m_dec, m_uni) = built
    for name, scale in (("lower", 0.25), ("upper", 1.0)):
        w0 = getattr(init, name).weight
        d_dec = getattr(m_dec, name).weight.detach() - w0.detach()
        d_uni = getattr(m_uni, name).weight.detach() - w0.detach()
        assert d_uni.abs().max() > 0
        torch.testing.assert_close(d_dec, scale * d_uni)


def test_compare_runs_both_phases_and_lists_them_in_meta(tmp_path):
    problems = {"tiny-mlp": tiny_net()}
    plan = _plan(problems, optimizers=("sgd", "adam"), seeds=2)
    from optimlab.lab import sweep

    with Store(tmp_path / "r.sqlite") as store:
        sweep.compare(plan, store, workers=1, log=lambda m: None)
        sched, layer = store.records("schedules"), store.records("layerwise")
        assert len(sched) == 2 * 3 * 2 and len(layer) == 2 * 2
        runs = set(store.meta()["runs"])
        assert {r.run_id for r in sched + layer} <= runs
