"""Rules that read whole tensors (reductions, matrix products) and two-phase rules.

Muon takes 2-D parameters only, so the generic tables (whose parity problem has a vector)
leave it out (``Entry.matrices_only``); here it is compared with torch.optim.Muon on a
quadratic over two matrices (a wide and a tall one, so both Newton-Schulz orientations
run), in two param groups, float64, every variant, and its state_dict loads both ways.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import optimlab
from conftest import drive, make_params, rel_err, two_groups
from numpy_reference import Quadratic
from optimlab import _reduce
from optimlab.fused import passes, passes_batch
from optimlab.fused.trace import TraceError, trace
from optimlab.registry import REGISTRY

STEPS = 120
MUON = REGISTRY["muon"]
MUON_CASES = [pytest.param(v, id=f"muon-{i}") for i, v in enumerate(MUON.variants)]


def _matrices(**kw):
    return Quadratic(dim=20, shapes=((2, 6), (4, 2)), **kw)


def _muon_pair(variant, steps=STEPS):
    problem = _matrices()
    ours, theirs = make_params(problem), make_params(problem)
    lr = MUON.test_lr
    opt = MUON.build(two_groups(ours, lr), lr=lr, **variant)
    ref = MUON.build_torch(two_groups(theirs, lr), lr=lr, **variant)
    return problem, (opt, ours, drive(opt, ours, problem, steps)), (ref, theirs, drive(ref, theirs, problem, steps))


@pytest.mark.parametrize("variant", MUON_CASES)
def test_muon_trajectory_matches_torch(variant):
    problem, (opt, ours, a), (ref, theirs, b) = _muon_pair(variant)
    assert problem.loss(b[-1]) < problem.loss(problem.x0)
    assert rel_err(a, b) <= 1e-6
    for p, q in zip(ours, theirs):
        assert list(opt.state[p]) == list(ref.state[q]) == ["momentum_buffer"]
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"],
                                   rtol=1e-6, atol=1e-12)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in ref.param_groups]


def test_muon_spectral_unclamped_is_original_with_sqrt_a_over_b_on_wide_matrices():
    """``adjust_lr_fn="spectral_unclamped"`` (Bernstein's sqrt(A/B), torch >= 2.14; taken on any
    torch, swept against torch.optim.Muon itself in MUON_CASES where torch has it): a tall
    matrix gets the original sqrt(max(1, A/B)) = sqrt(A/B), a wide one sqrt(A/B) < 1 where the
    original clamps to 1, so with no weight decay it is torch's "original" Muon with the wide
    matrix's lr scaled by sqrt(A/B), 120 steps, float64."""
    problem = _matrices()
    ours, theirs = make_params(problem), make_params(problem)
    (wide, tall), lr = ours, MUON.test_lr
    assert tall.shape[0] > tall.shape[1] and wide.shape[0] < wide.shape[1]
    ratio = (wide.shape[0] / wide.shape[1]) ** 0.5
    opt = optimlab.Muon(ours, lr=lr, weight_decay=0.0, adjust_lr_fn="spectral_unclamped")
    ref = torch.optim.Muon([{"params": [theirs[0]], "lr": lr * ratio}, {"params": [theirs[1]]}],
                           lr=lr, weight_decay=0.0, adjust_lr_fn="original")
    a, b = drive(opt, ours, problem, STEPS), drive(ref, theirs, problem, STEPS)
    assert problem.loss(b[-1]) < problem.loss(problem.x0)
    assert rel_err(a, b) <= 1e-6
    with pytest.raises(ValueError, match="not supported"):
        optimlab.Muon(ours, adjust_lr_fn="spectral")


@pytest.mark.parametrize("variant", MUON_CASES)
def test_muon_batched_newton_schulz_matches_torch(variant, monkeypatch):
    """Equal-shape matrices (three tall, two wide, one square, each product >= 400
    multiply-adds) run their Newton-Schulz once per bucket (bmm/baddbmm, passes_batch):
    the same trajectory as torch.optim.Muon's per-matrix mm/addmm, float64, 120 steps."""
    calls = []
    original = passes_batch.BATCHED[_reduce.addmm]
    monkeypatch.setitem(passes_batch.BATCHED, _reduce.addmm,
                        lambda *a, **k: calls.append(a[1].shape) or original(*a, **k))
    passes._programs.clear()
    passes._reads.clear()
    shapes = ((12, 8),) * 3 + ((8, 12),) * 2 + ((10, 10),)
    problem = Quadratic(dim=sum(a * b for a, b in shapes), shapes=shapes)
    ours, theirs = make_params(problem), make_params(problem)
    a = drive(MUON.build(ours, lr=MUON.test_lr, **variant), ours, problem, STEPS)
    b = drive(MUON.build_torch(theirs, lr=MUON.test_lr, **variant), theirs, problem, STEPS)
    passes._programs.clear()
    passes._reads.clear()
    assert (3, 8, 8) in calls and (2, 8, 8) in calls  # the buckets ran batched
    assert rel_err(a, b) <= 1e-6


@pytest.mark.parametrize("save_torch", [True, False], ids=["torch_to_optimlab", "optimlab_to_torch"])
def test_muon_state_dict_both_ways(save_torch):
    """Five steps in one implementation, its state_dict loaded into the other, five more."""
    problem = _matrices()
    first, second = (MUON.build_torch, MUON.build) if save_torch else (MUON.build, MUON.build_torch)
    params = make_params(problem)
    opt = first(params, lr=MUON.test_lr)
    drive(opt, params, problem, 5)
    sd = copy.deepcopy(opt.state_dict())
    resumed = second(params, lr=MUON.test_lr)
    resumed.load_state_dict(sd)
    a = drive(resumed, params, problem, 5, start=5)
    ref_params = make_params(problem)
    ref = first(ref_params, lr=MUON.test_lr)
    b = drive(ref, ref_params, problem, 10)[5:]
    assert rel_err(a, b) <= 1e-6


def test_muon_refuses_like_torch():
    v = torch.zeros(3, requires_grad=True)
    for build in (optimlab.Muon, torch.optim.Muon):
        with pytest.raises(ValueError, match="Muon only supports 2D parameters whereas we found"):
            build([v])
        with pytest.raises(ValueError, match="Adjust learning rate function bad is not supported"):
            build([torch.zeros(2, 2, requires_grad=True)], adjust_lr_fn="bad")
        p = torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)
        p.grad = torch.ones_like(p)
        with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
            build([p]).step()
        q = torch.ones(2, 3, requires_grad=True)
        q.grad = torch.ones_like(q)
        with pytest.raises(ValueError, match="Number of steps must be less than 100"):
            build([q], ns_steps=100).step()


@pytest.mark.parametrize("name", ["adafactor", "muon"])
def test_tracer_refuses_whole_tensor_rules_cleanly(name):
    """No C kernel is generated for a rule with reductions: the tracer says so (TraceError,
    which the fused path turns into a fallback) before running a line of it."""
    entry = REGISTRY[name]
    p = torch.zeros(3, 2, requires_grad=True)
    built = entry.build([p])
    h = optimlab.engine.hyperparameters(built.param_groups[0], built.defaults)
    with pytest.raises(TraceError, match="reads whole tensors"):
        trace(entry.cls.rule, h, frozenset())


def test_adafactor_foreach_true_equals_torch_foreach():
    """``foreach=True`` (torch's multi-tensor Adafactor) is accepted and gives torch's result."""
    problem = Quadratic(shapes=((3, 4), (8,)))
    ours, theirs = make_params(problem), make_params(problem)
    opt = optimlab.Adafactor(ours, foreach=True)
    ref = torch.optim.Adafactor(theirs, foreach=True)
    assert rel_err(drive(opt, ours, problem, STEPS), drive(ref, theirs, problem, STEPS)) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adafactor_bucket_means_and_factors_run_batched(dtype, monkeypatch):
    """Equal-shape matrices (three tall, two wide, two 3-D) take their row and column means,
    the factors' moving averages and mean(R) once per bucket, on the stacked grads and state
    (:mod:`.passes_batch`), not once per matrix: the same trajectory as torch.optim.Adafactor's
    per-matrix calls over 120 steps."""
    calls = []
    original = passes_batch.BATCHED[_reduce.mean_square]
    monkeypatch.setitem(passes_batch.BATCHED, _reduce.mean_square,
                        lambda x, dim: calls.append((tuple(x.shape), dim)) or original(x, dim))
    lerps = []
    monkeypatch.setitem(passes_batch.BATCHED, _reduce.lerp,
                        lambda a, b, w: lerps.append(tuple(a.shape)) or _reduce.lerp(a, b, w))
    passes._programs.clear()
    passes._reads.clear()
    shapes = ((12, 8),) * 3 + ((8, 12),) * 2 + ((2, 3, 4),) * 2
    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref = optimlab.Adafactor(ours, lr=0.05), torch.optim.Adafactor(theirs, lr=0.05)
    for _ in range(STEPS):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    passes._programs.clear()
    passes._reads.clear()
    assert ((3, 12, 8), -1) in calls and ((2, 8, 12), -2) in calls and ((2, 2, 3, 4), -1) in calls
    assert not [c for c in calls if c[0][0] == 1]  # never one matrix at a time
    assert (3, 12, 1) in lerps and (2, 1, 12) in lerps and (2, 2, 3, 1) in lerps  # the state, stacked
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
        for k in ("row_var", "col_var"):
            torch.testing.assert_close(opt.state[p][k], ref.state[q][k], rtol=tol, atol=0)


def test_adafactor_factors_every_matrix_over_its_last_two_dims():
    p = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt, ref = optimlab.Adafactor([p], weight_decay=0.1), torch.optim.Adafactor([q], weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert opt.state[p]["row_var"].shape == (2, 3, 1) and opt.state[p]["col_var"].shape == (2, 1, 4)
    for k in ("row_var", "col_var"):
        torch.testing.assert_close(opt.state[p][k], ref.state[q][k], rtol=1e-10, atol=0)
    assert np.abs((p - q).detach().numpy()).max() <= 1e-10 * q.abs().max().item()


# ------------------------------------------------ LAMB, LARS, Prodigy: published references
from conftest import fused_modes  # noqa: E402
from numpy_reference import RULES, run_reference  # noqa: E402
from optimlab.registry import WITH_REDUCTIONS  # noqa: E402

PUBLISHED = [pytest.param(e, v, mode, id=f"{e.name}-{i}-{j}")
             for e in WITH_REDUCTIONS if e.reference is not None
             for i, v in enumerate(e.variants) for j, mode in enumerate(fused_modes(e))]


@pytest.mark.parametrize("entry, variant, mode", PUBLISHED)
def test_trajectory_matches_published_reference(entry, variant, mode):
    """150 steps, two param groups, float64, 1e-6: the authors' code with the paper
    differences switched off (see the entry's reference builder). The reference minimises f;
    optimlab with ``maximize=True`` maximises -f, the same trajectory if the flag is right."""
    variant = dict(variant)
    maximize = variant.pop("maximize", False)
    lr = entry.test_lr
    objective, f = Quadratic(maximize=maximize), Quadratic()
    ours, theirs = make_params(objective), make_params(f)
    opt = entry.build(two_groups(ours, lr), lr=lr, maximize=maximize, **variant, **mode)
    ref = entry.reference(two_groups(theirs, lr), lr=lr, **variant)
    a, b = drive(opt, ours, objective, 150), drive(ref, theirs, f, 150)
    assert f.loss(b[-1]) < f.loss(f.x0) and np.abs(b[-1] - f.x0).max() > 1e-3
    assert rel_err(a, b) <= 1e-6


#: the paper's forms the published references lack, checked against the NumPy references
PAPER_ONLY = {"lamb": ({}, {"weight_decay": 0.1}), "lars": ({}, {"weight_decay": 0.01, "nesterov": True}),
              "prodigy": ({}, {"betas": (0.0, 0.99)}, {"weight_decay": 0.1, "use_bias_correction": True})}
NUMPY_CASES = [pytest.param(e, v, mode, id=f"{e.name}-{i}-{j}")
               for e in WITH_REDUCTIONS if e.name in PAPER_ONLY
               for i, v in enumerate(e.variants + PAPER_ONLY[e.name])
               for j, mode in enumerate(fused_modes(e))]


@pytest.mark.parametrize("entry, variant, mode", NUMPY_CASES)
def test_matches_numpy_reference_from_the_paper(entry, variant, mode):
    problem = Quadratic(maximize=variant.get("maximize", False))
    params = make_params(problem)
    lr = entry.test_lr
    opt = entry.build(two_groups(params, lr), lr=lr, **variant, **mode)
    groups = [dict(g) for g in opt.param_groups]  # one tensor per group: Prodigy's d per group
    expected = run_reference(RULES[entry.name], problem, groups, STEPS)[0]
    got = drive(opt, params, problem, STEPS)
    assert np.abs(got[-1] - problem.x0).max() > 1e-3
    assert rel_err(got, expected) <= 1e-6


def test_prodigy_d_lives_in_the_group_and_round_trips():
    problem = Quadratic()
    params = make_params(problem)
    opt = optimlab.Prodigy(two_groups(params, 1.0), lr=1.0)
    drive(opt, params, problem, 20)
    d = [g["d"] for g in opt.param_groups]
    assert all(x > 1e-6 for x in d) and d[0] != d[1]  # each group estimated its own distance
    sd = copy.deepcopy(opt.state_dict())
    assert [g["k"] for g in sd["param_groups"]] == [20, 20]
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = optimlab.Prodigy(two_groups(resumed_params, 1.0), lr=1.0)
    resumed.load_state_dict(sd)
    a = drive(resumed, resumed_params, problem, 10, start=20)
    b = drive(opt, params, problem, 10, start=20)
    np.testing.assert_array_equal(a, b)


def test_prodigy_phase_two_runs_in_the_kernel():
    """The group-level sums run on tensors; the step itself is element-wise and fused."""
    from optimlab import fused

    p = torch.randn(100, dtype=torch.float64, requires_grad=True)
    opt = optimlab.Prodigy([p])
    for _ in range(3):
        p.grad = torch.randn(100, dtype=torch.float64)
        opt.step()
    assert fused._plans.get(opt), "the fused path was not taken"
    assert opt.param_groups[0]["k"] == 3
