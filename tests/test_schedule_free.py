"""Schedule-Free's train()/eval() switch, its group-level state and its checkpoints.

The trajectories of both points (train-mode ``y`` and eval-mode ``x``) against the
authors' ``schedulefree`` are in tests/test_reference_impls.py; here: what the switch
must guarantee, and that checkpoints move between optimlab and ``schedulefree`` both ways.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from conftest import flat, make_params, rel_err, two_groups
from numpy_reference import Quadratic
from optimlab.registry import REGISTRY

schedulefree = pytest.importorskip("schedulefree")

ENTRIES = [pytest.param(REGISTRY[n], id=n) for n in ("schedule_free_adamw", "schedule_free_sgd")]
STEPS = 120


def _feed(params, problem, t):
    for p, g in zip(params, problem.split(problem.grad(flat(params), t))):
        p.grad = torch.tensor(g, dtype=p.dtype)


def _steps(opt, params, problem, steps, start=0):
    for t in range(start, start + steps):
        _feed(params, problem, t)
        opt.step()


def _trained(entry, steps=30, **kw):
    problem = Quadratic()
    params = make_params(problem)
    opt = entry.build(two_groups(params, entry.test_lr), lr=entry.test_lr, **kw)
    _steps(opt, params, problem, steps)
    return opt, params, problem


@pytest.mark.parametrize("entry", ENTRIES)
def test_train_and_eval_are_idempotent_and_inverse(entry):
    opt, params, _ = _trained(entry)
    y = flat(params)
    opt.eval()
    x = flat(params)
    opt.eval()
    np.testing.assert_array_equal(flat(params), x)  # a second eval() does nothing
    assert np.abs(x - y).max() > 1e-4  # the two points differ after some steps
    opt.train()
    np.testing.assert_allclose(flat(params), y, rtol=1e-12, atol=1e-14)  # back to y
    opt.train()
    np.testing.assert_allclose(flat(params), y, rtol=1e-12, atol=1e-14)
    assert all(g["train_mode"] for g in opt.param_groups)


@pytest.mark.parametrize("entry", ENTRIES)
def test_eval_point_is_the_paper_interpolation(entry):
    """y = (1 - beta) z + beta x: the eval point solves the paper's line for x."""
    opt, params, _ = _trained(entry)
    beta = opt._interpolation(opt.param_groups[0])
    y = [p.detach().clone() for p in params]
    opt.eval()
    for p, y_p in zip(params, y):
        z = opt.state[p]["z"]
        torch.testing.assert_close((1 - beta) * z + beta * p.detach(), y_p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("entry", ENTRIES)
def test_step_in_eval_mode_raises_and_changes_nothing(entry):
    opt, params, problem = _trained(entry, steps=5)
    opt.eval()
    before = flat(params)
    groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    _feed(params, problem, 5)
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()
    np.testing.assert_array_equal(flat(params), before)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


@pytest.mark.parametrize("entry", ENTRIES)
def test_group_state_advances_once_per_step_even_without_grads(entry):
    """k, lr_max, weight_sum are the group's (as the authors keep them), so a param that gets
    its first grad late joins the group's average weights: the same trajectory as theirs."""
    problem = Quadratic()
    ours, theirs = make_params(problem), make_params(problem)
    lr = entry.test_lr
    opt = entry.build(two_groups(ours, lr), lr=lr)
    ref = entry.build_reference(two_groups(theirs, lr), lr=lr)
    ref.train()
    a, b = [], []
    for t in range(STEPS):
        for params, o, out in ((ours, opt, a), (theirs, ref, b)):
            _feed(params, problem, t)
            if t < 10:
                params[1].grad = None  # the second group's param waits 10 steps
            o.step()
            out.append(flat(params))
    assert opt.param_groups[1]["k"] == ref.param_groups[1]["k"] == STEPS
    assert rel_err(np.array(a), np.array(b)) <= 1e-6


def _resume(entry, save, load, transform=copy.deepcopy, before=25, after=STEPS - 25):
    """Train ``before`` steps with ``save`` ('ours' or 'theirs'), eval() and save as the
    authors advise, load into a fresh ``load`` optimizer (params at x), train() and go on."""
    def build(kind, params):
        lr = entry.test_lr
        if kind == "ours":
            return entry.build(two_groups(params, lr), lr=lr, warmup_steps=10)
        opt = entry.build_reference(two_groups(params, lr), lr=lr, warmup_steps=10)
        opt.train()
        return opt

    problem = Quadratic()
    params = make_params(problem)
    first = build(save, params)
    _steps(first, params, problem, before)
    first.eval()
    sd = transform(first.state_dict())
    resumed = make_params(problem, x=flat(params))
    second = build(load, resumed)
    second.load_state_dict(sd)
    second.train()
    _steps(second, resumed, problem, after, start=before)
    first.train()
    _steps(first, params, problem, after, start=before)
    return flat(resumed), flat(params)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("save, load", [("ours", "ours"), ("ours", "theirs"), ("theirs", "ours")])
def test_checkpoint_moves_between_optimlab_and_schedulefree(entry, save, load):
    resumed, straight = _resume(entry, save, load)
    assert np.abs(straight - Quadratic().x0).max() > 1e-3
    assert rel_err(resumed, straight) <= 1e-6


def _through_torch_save(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("entry", ENTRIES)
def test_checkpoint_through_torch_save_weights_only(entry):
    resumed, straight = _resume(entry, "ours", "ours", transform=_through_torch_save)
    assert rel_err(resumed, straight) <= 1e-12
