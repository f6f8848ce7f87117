"""The lab with every kind of registry entry: named optimizer sets on the command line, and
a runner that drives what each entry needs (from its Entry fields, not its name): a closure
(``needs_closure``: LBFGS), sparse gradients (``sparse_grads``: SparseAdam), the
``train()``/``eval()`` switch around evaluation (Schedule-Free), 2-D weights for an optimizer
that takes only those and AdamW for the rest (``matrices_only``: Muon).

Entries that other branches add are stood in for by small fakes registered for one test.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import optimlab
from optimlab import registry
from optimlab.lab import cli, runner
from optimlab.lab.problems.base import Problem
from optimlab.lab.spec import RunSpec
from optimlab.registry import Entry
from test_runner import noisy_quadratic


@pytest.fixture
def register(monkeypatch):
    """Register an Entry for the duration of one test."""
    def add(entry):
        monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
        monkeypatch.setattr(registry, "ENTRIES", registry.ENTRIES + (entry,))
        return entry
    return add


# ------------------------------------------------------------------------- named sets
def test_default_is_the_classic_eleven():
    classic = optimlab.sets()["classic"]
    assert len(classic) == 11 and classic == [e.name for e in registry.CLASSIC]
    assert cli._optimizer_names(None) == classic


def test_sets_follow_the_entries():
    sets = optimlab.sets()
    assert set(sets) == {"classic", "modern", "torch", "all"}
    assert sets["all"] == optimlab.names()
    assert sets["torch"] == [e.name for e in registry.ENTRIES if e.torch_cls is not None]
    assert {"sparse_adam", "lbfgs"} <= set(sets["torch"]) and "sparse_adam" not in sets["classic"]
    assert set(registry.MODERN_BASELINES) <= set(sets["modern"])
    assert set(sets["modern"]) == set(registry.MODERN_BASELINES) | {
        e.name for e in registry.ENTRIES if "modern" in e.tags}


def test_a_modern_entry_joins_the_modern_set(register):
    register(Entry("fake_modern", optimlab.SGD, "a stand-in", "none", tags=("modern",)))
    assert "fake_modern" in optimlab.sets()["modern"] and "fake_modern" not in optimlab.sets()["torch"]


def test_sets_and_names_mix_case_insensitively():
    sets = optimlab.sets()
    assert cli._optimizer_names(["Torch"]) == sets["torch"]
    mixed = cli._optimizer_names(["lbfgs", "modern", "SGD", "adamw"])
    assert mixed == list(dict.fromkeys(["lbfgs", *sets["modern"], "sgd"]))
    assert cli._optimizer_names(["all"]) == optimlab.names()


def test_help_lists_the_sets(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in optimlab.sets():
        assert f"{name} (" in text
    assert "default: classic" in text


def test_a_set_name_typo_gets_did_you_mean(capsys):
    assert cli.main(["compare", "--optimizers", "modrn"]) == 2
    assert "did you mean 'modern'" in capsys.readouterr().err


# ------------------------------------------------------------------ the runner's drivers
def _spec(optimizer, lr, steps=60, problem="fake-quad"):
    return RunSpec(problem=problem, optimizer=optimizer, lr=lr, seed=0, steps=steps)


def test_lbfgs_runs_on_a_closure_one_evaluation_per_step():
    quad = noisy_quadratic()
    calls = []
    counted = replace(quad, loss=lambda m, b: calls.append(1) or quad.loss(m, b))
    rec = runner.run(_spec("lbfgs", 0.5), counted)
    assert rec.status == "ok", rec.final["error"]
    assert rec.final["train_loss"] < rec.curves["train_loss"][0] / 10
    # lab_preset max_iter=1: the same gradient budget per step as every other optimizer
    assert optimlab.lookup("lbfgs").lab_preset == {"max_iter": 1} and len(calls) == 60


def test_a_diverging_closure_run_is_diverged():
    rec = runner.run(_spec("lbfgs", 1e4), noisy_quadratic())
    assert rec.status == "diverged" and rec.final["diverged_at"] is not None


def test_sparse_adam_gets_its_gradients_in_sparse_layout():
    rec = runner.run(_spec("sparse_adam", 0.1), noisy_quadratic())
    assert rec.status == "ok", rec.final["error"]
    assert rec.final["train_loss"] < rec.curves["train_loss"][0] / 10
    # and without the conversion it could not run at all
    with pytest.raises(RuntimeError, match="dense gradients"):
        p = torch.zeros(2, requires_grad=True)
        p.grad = torch.ones(2)
        optimlab.SparseAdam([p]).step()


class _Switching(torch.optim.SGD):
    """A stand-in for Schedule-Free: SGD whose ``eval()`` moves the parameters by +10
    (its "averaged point") and ``train()`` moves them back; it logs what happens."""

    log: list = []

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr=lr)
        self.mode = None  # like schedulefree: train() must come before the first step

    def train(self):
        if self.mode == "eval":
            self._shift(-10.0)
        self.mode = "train"
        self.log.append("train")

    def eval(self):
        if self.mode == "train":
            self._shift(10.0)
        self.mode = "eval"
        self.log.append("eval")

    @torch.no_grad()
    def _shift(self, by):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(by)

    def step(self, closure=None):
        assert self.mode == "train"
        self.log.append("step")
        return super().step(closure)


def test_evaluation_happens_in_eval_mode(register):
    register(Entry("fake_switch", _Switching, "a stand-in", "none", tags=("modern",)))
    quad = noisy_quadratic()
    log = _Switching.log = []

    def evaluate(m, split):
        log.append("evaluate")
        return quad.evaluate(m, split)

    rec = runner.run(_spec("fake_switch", 0.05, steps=20), replace(quad, evaluate=evaluate))
    assert rec.status == "ok", rec.final["error"]
    mode = None
    for event in log:
        if event in ("train", "eval"):
            mode = event
        else:
            assert mode == ("eval" if event == "evaluate" else "train"), log
    assert log.count("step") == 20 and log.count("evaluate") >= 3 * 2
    # the curves were measured at the eval point (+10 from where the steps go), which is
    # far from the optimum, while the trajectory (train point) converges
    assert rec.curves["train_loss"][-1] > 10 and max(map(abs, rec.trajectory[-1])) < 1


def _linear_problem() -> Problem:
    """y = W x + b on fixed data: a 2-D weight and a 1-D bias."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(32, 4, generator=g), torch.randn(3, 4, generator=g)
    y = x @ w.T

    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Linear(4, 3)

    def loss(m, b):
        return ((m(x) - y) ** 2).mean()

    return Problem(name="fake-linear", kind="least-squares", description="", default_steps=20,
                   model=model, batch=lambda step, seed: (), loss=loss,
                   evaluate=lambda m, split: {"loss": float(loss(m, ())), "metric": None})


def test_matrix_optimizer_gets_the_2d_weights_and_adamw_the_rest(register):
    register(Entry("fake_muon", torch.optim.Muon, "a stand-in", "none", tags=("modern",),
                   matrices_only=True, lab_preset={"adjust_lr_fn": "match_rms_adamw"}))
    problem = _linear_problem()
    spec = _spec("fake_muon", 0.3, steps=40, problem="fake-linear")
    model = problem.model(0)
    entry, opt = runner._optimizer(spec, model, list(model.parameters()))
    assert isinstance(opt, optimlab.Combined)
    muon, adamw = opt.optimizers
    assert type(muon) is torch.optim.Muon and type(adamw) is optimlab.AdamW
    assert [p for g in muon.param_groups for p in g["params"]] == [model.weight]
    assert [p for g in adamw.param_groups for p in g["params"]] == [model.bias]
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert all(g["lr"] == 0.3 for g in opt.param_groups)
    rec = runner.run(spec, problem)
    assert rec.status == "ok", rec.final["error"]
    assert rec.final["train_loss"] < rec.curves["train_loss"][0] / 5


# ------------------------------------------------------------- a modern comparison, whole
def tiny_mlp() -> Problem:
    """A 4-6-3 tanh MLP regressing fixed data: two 2-D weights (Muon's) and two biases
    (AdamW's, beside Muon). ``--problem test_lab_optimizers:tiny_mlp``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=g)
    y = torch.tanh(x @ torch.randn(4, 3, generator=g))

    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))

    def loss(m, b):
        return ((m(x) - y) ** 2).mean()

    return Problem(name="fake-mlp", kind="least-squares", description="", default_steps=20,
                   model=model, batch=lambda step, seed: (), loss=loss,
                   evaluate=lambda m, split: {"loss": float(loss(m, ())), "metric": None})


def test_a_modern_comparison_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """``optimlab compare --optimizers modern,lbfgs`` on two tiny problems, in process: every
    optimizer of the set gets runs and a selection on both; Schedule-Free is evaluated in
    eval mode (at x) and steps in train mode; LBFGS is stepped through a closure, one
    evaluation a step; Muon takes the 2-D weights and AdamW the rest (on the quadratic,
    whose one parameter is a vector, AdamW takes everything)."""
    made = []  # (spec, model, optimizer), in the order the runner builds them
    build, evaluate = runner._optimizer, runner._evaluate

    def spy_build(spec, model, params):
        entry, opt = build(spec, model, params)
        made.append((spec, model, opt))
        return entry, opt

    modes = []  # at each evaluation: the optimizer's name and its groups' train_mode flags

    def spy_evaluate(problem, model, split, metric=True):
        spec, built_for, opt = made[-1]
        assert built_for is model
        modes.append((spec.optimizer, [g.get("train_mode") for g in opt.param_groups]))
        return evaluate(problem, model, split, metric)

    monkeypatch.setattr(runner, "_optimizer", spy_build)
    monkeypatch.setattr(runner, "_evaluate", spy_evaluate)
    steps = 12
    argv = ["compare", "--problem", "test_lab_optimizers:tiny_mlp", "--problem",
            "test_runner:noisy_quadratic", "--optimizers", "modern,lbfgs", "--lrs", "0.003,0.03",
            "--seeds", "1", "--steps", str(steps), "--workers", "1", "--json", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    names = optimlab.sets()["modern"] + ["lbfgs"]
    pairs = {(p, o) for p in ("fake-mlp", "fake-quad") for o in names}
    ok = {(r["problem"], r["optimizer"]) for r in summary["runs"] if r["status"] == "ok"}
    assert ok == pairs and all(r["status"] != "error" for r in summary["runs"])
    assert {(s["problem"], s["optimizer"]) for s in summary["selections"]} == pairs
    assert (tmp_path / "report.html").is_file()

    sf = [flags for name, flags in modes if name.startswith("schedule_free")]
    assert len(sf) >= 2 * 2 * 2 * 3 and all(flags and not any(flags) for flags in sf)
    assert all(all(g["train_mode"] for g in opt.param_groups)
               for spec, _, opt in made if spec.optimizer.startswith("schedule_free"))
    for spec, model, opt in made:
        if spec.optimizer == "lbfgs":
            assert type(opt) is optimlab.LBFGS
            assert next(iter(opt.state.values()))["func_evals"] == steps
        if spec.optimizer == "muon" and spec.problem == "fake-quad":  # no matrix: AdamW alone
            assert type(opt) is optimlab.AdamW
        elif spec.optimizer == "muon":
            muon, adamw = opt.optimizers
            matrices = [p for p in model.parameters() if p.dim() == 2]
            assert len(matrices) == 2 and [p for g in muon.param_groups for p in g["params"]] == matrices
            assert type(muon) is optimlab.Muon and type(adamw) is optimlab.AdamW
            assert {id(p) for g in adamw.param_groups for p in g["params"]} == {
                id(p) for p in model.parameters() if p.dim() != 2}
