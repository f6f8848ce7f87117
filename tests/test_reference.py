"""optimlab and torch.optim against the independent NumPy reference (tests/numpy_reference.py).

The reference is first validated against torch.optim, then optimlab is checked against it,
including ``bias_correction=False``, for which torch has no equivalent and the reference is
the only oracle. Closed-form first steps pin the bias-correction formulas down exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import (CASES, ENTRY_PARAMS, RULE_CASES, accepts, drive, fused_modes, make_params,
                      rel_err, tolerance, two_groups)
from numpy_reference import Quadratic, rule_for, run_reference

STEPS = 100


def _reference(entry, opt, problem, steps=STEPS):
    rule = rule_for(entry)
    groups = [dict(g) for g in opt.param_groups]
    return run_reference(rule, problem, groups, steps)[0]


@pytest.mark.parametrize("entry, variant", CASES)
def test_reference_matches_torch(entry, variant):
    """The reference is right: it reproduces torch.optim (NAdam to 1e-4: torch's mu_product
    is float32, the reference's float64)."""
    problem = Quadratic(maximize=variant.get("maximize", False))
    params = make_params(problem)
    ref = entry.build_torch(two_groups(params, entry.test_lr), lr=entry.test_lr, **variant)
    expected = _reference(entry, ref, problem)
    got = drive(ref, params, problem, STEPS)
    assert rel_err(expected, got) <= tolerance(entry, float32_mu_product=False)


def _bias_variants():
    """Every engine-run entry (with or without a torch twin), every variant, plus
    ``bias_correction`` both ways where the class has it."""
    out = []
    for p in RULE_CASES:
        entry, variant = p.values
        if accepts(entry.cls, "bias_correction"):
            for bc in (True, False):
                out.append(pytest.param(entry, {**variant, "bias_correction": bc},
                                        id=f"{p.id}-bc_{bc}"))
        else:
            out.append(p)
    return out


BIAS_CASES = _bias_variants()
MODE_CASES = [pytest.param(*p.values, mode, id=f"{p.id}-{'fused_off' if mode else 'default'}")
              for p in BIAS_CASES for mode in fused_modes(p.values[0])]


@pytest.mark.parametrize("entry, variant, mode", MODE_CASES)
def test_optimlab_matches_reference(entry, variant, mode):
    problem = Quadratic(maximize=variant.get("maximize", False))
    params = make_params(problem)
    opt = entry.build(two_groups(params, entry.test_lr), lr=entry.test_lr, **variant, **mode)
    expected = _reference(entry, opt, problem)
    got = drive(opt, params, problem, STEPS)
    assert np.abs(got[-1] - problem.x0).max() > 1e-3
    assert rel_err(got, expected) <= tolerance(entry, float32_mu_product=False)


@pytest.mark.parametrize("entry", [p for p in ENTRY_PARAMS if accepts(p.values[0].cls, "bias_correction")])
def test_bias_correction_false_changes_the_trajectory(entry):
    """The flag is not ignored: the two settings give visibly different trajectories."""
    problem = Quadratic()
    runs = []
    for bc in (True, False):
        params = make_params(problem)
        opt = entry.build(params, lr=entry.test_lr, bias_correction=bc)
        runs.append(drive(opt, params, problem, 20))
    assert np.abs(runs[0] - runs[1]).max() > 1e-4


# ---------------------------------------------------------------- closed-form first steps
G = np.array([3.0, -0.5, 2e-3, -1e-3, 0.0, 1e-6])  # magnitudes from large to ~eps
LR, EPS = 0.1, 1e-3


def _first_step(entry, **hp):
    p = torch.zeros(len(G), dtype=torch.float64, requires_grad=True)
    opt = entry.build([p], lr=LR, eps=EPS, **hp)
    p.grad = torch.tensor(G)
    opt.step()
    return p.detach().numpy()


def _closed_forms(name, beta1, beta2, md=4e-3):
    """Expected first update Delta p = -lr * (...) for bias_correction True and False."""
    a = np.abs(G)
    if name in ("Adam", "AdamW"):
        # m_1 = (1-b1) g, v_1 = (1-b2) g^2;  corrected: m/(1-b1) = g, v/(1-b2) = g^2
        return (-LR * G / (a + EPS),
                -LR * (1 - beta1) * G / (math.sqrt(1 - beta2) * a + EPS))
    if name == "Adamax":
        # u_1 = max(0, |g| + eps)
        return -LR * G / (a + EPS), -LR * (1 - beta1) * G / (a + EPS)
    if name == "NAdam":
        mu1 = beta1 * (1 - 0.5 * 0.96 ** md)
        mu2 = beta1 * (1 - 0.5 * 0.96 ** (2 * md))
        corrected = -LR * (1 + mu2 * (1 - beta1) / (1 - mu1 * mu2)) * G / (a + EPS)
        plain = -LR * ((1 - mu1) + mu2 * (1 - beta1)) * G / (math.sqrt(1 - beta2) * a + EPS)
        return corrected, plain
    raise KeyError(name)


@pytest.mark.parametrize("entry", [p for p in ENTRY_PARAMS if accepts(p.values[0].cls, "bias_correction")])
@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_first_step_closed_form(entry, beta):
    """beta1 = beta2 = beta: corrected Adam's first step is lr * g / (|g| + eps) (about
    lr * sign(g)); uncorrected it is lr (1-b1) g / (sqrt(1-b2) |g| + eps)."""
    hp = {"betas": (beta, beta)}
    if accepts(entry.cls, "weight_decay"):
        hp["weight_decay"] = 0.0  # AdamW's default decay would only rescale p = 0 anyway
    corrected, plain = _closed_forms(entry.torch_cls.__name__, beta, beta)
    # NAdam's corrected step reads mu_1 * mu_2 through its float32 mu_product state, rounded
    # as torch rounds it (``mu_product *= mu``): the closed form to float32's precision
    rtol = 1e-6 if entry.torch_cls is torch.optim.NAdam else 1e-12
    ours = _first_step(entry, **hp, bias_correction=True)
    np.testing.assert_allclose(ours, corrected, rtol=rtol, atol=1e-15)
    np.testing.assert_allclose(_first_step(entry, **hp, bias_correction=False), plain,
                               rtol=1e-12, atol=1e-15)
    # the closed form is also torch's first step for the corrected case, and ours is torch's
    p = torch.zeros(len(G), dtype=torch.float64, requires_grad=True)
    opt = entry.build_torch([p], lr=LR, eps=EPS, **hp)
    p.grad = torch.tensor(G)
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), corrected, rtol=rtol, atol=1e-15)
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=1e-14, atol=1e-17)


def test_adam_first_step_is_about_lr_sign_g():
    """Kingma & Ba's observation: |Delta| ~ lr for corrected Adam, whatever the gradient scale;
    uncorrected it is (1-b1)/sqrt(1-b2) lr = 3.16 lr for the default betas."""
    from optimlab import Adam

    for scale in (1e-2, 1.0, 1e3):
        deltas = []
        for bc in (True, False):
            p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
            opt = Adam([p], lr=0.01, bias_correction=bc)
            p.grad = scale * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
            opt.step()
            deltas.append(p.detach())
        np.testing.assert_allclose(deltas[0].abs().numpy(), 0.01, rtol=1e-5)
        np.testing.assert_allclose(deltas[1].abs().numpy(), 0.01 * 0.1 / math.sqrt(0.001),
                                   rtol=1e-4)
        assert torch.equal(deltas[0].sign(), -torch.tensor([1.0, -2.0, 0.5]).sign().double())
