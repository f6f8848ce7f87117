"""Parity with torch.optim: every registry entry, every variant, default path and fused=False.

float64, 150 steps of an ill-conditioned (condition number 1e4) noisy 20-D quadratic split
over two parameter tensors in two param groups (the second at half the learning rate); the
whole trajectory is compared, plus the final optimizer state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimlab.registry import lookup

from conftest import CASES, accepts, drive, fused_modes, make_params, rel_err, tolerance, two_groups
from numpy_reference import Quadratic

STEPS = 150

MODE_CASES = [
    pytest.param(entry, variant, mode, id=f"{p.id}-{'fused_off' if mode else 'default'}")
    for p in CASES for entry, variant in [p.values] for mode in fused_modes(entry)
]


def _run_pair(entry, variant, mode, steps=STEPS):
    problem = Quadratic(maximize=variant.get("maximize", False))
    ours, theirs = make_params(problem), make_params(problem)
    lr = entry.test_lr
    opt = entry.build(two_groups(ours, lr), lr=lr, **variant, **mode)
    ref = entry.build_torch(two_groups(theirs, lr), lr=lr, **variant)
    return problem, (opt, ours, drive(opt, ours, problem, steps)), (ref, theirs,
                                                                   drive(ref, theirs, problem, steps))


@pytest.mark.parametrize("entry, variant, mode", MODE_CASES)
def test_trajectory_matches_torch(entry, variant, mode):
    problem, (opt, _, ours), (ref, _, theirs) = _run_pair(entry, variant, mode)
    # the problem is well-behaved at test_lr (the optimizer descends on f), so parity is meaningful
    assert problem.loss(theirs[-1]) < problem.loss(problem.x0)
    assert np.abs(theirs[-1] - problem.x0).max() > 1e-3
    err = rel_err(ours, theirs)
    assert err <= tolerance(entry), f"relative trajectory error {err:.3g}"

    # and the optimizer state agrees at the end: same keys, dtypes, shapes and values
    # (empty per-parameter entries are checked strictly in test_state_dict.py)
    s_ours = {i: s for i, s in opt.state_dict()["state"].items() if s}
    s_theirs = ref.state_dict()["state"]
    assert s_ours.keys() == s_theirs.keys()
    for i in s_theirs:
        assert list(s_ours[i]) == list(s_theirs[i])
        for key, theirs_v in s_theirs[i].items():
            ours_v = s_ours[i][key]
            if not torch.is_tensor(theirs_v):
                assert ours_v == theirs_v, key
                continue
            assert ours_v.dtype == theirs_v.dtype and ours_v.shape == theirs_v.shape, key
            scale = theirs_v.abs().max().item() or 1.0
            assert (ours_v - theirs_v).abs().max().item() <= 10 * tolerance(entry) * scale, key


@pytest.mark.parametrize("entry, variant", CASES)
def test_param_groups_match_torch(entry, variant):
    """Same group keys and values as torch.optim (defaults included); only optimlab's own
    ``bias_correction`` is extra."""
    problem = Quadratic()
    lr = entry.test_lr
    opt = entry.build(two_groups(make_params(problem), lr), lr=lr, **variant)
    ref = entry.build_torch(two_groups(make_params(problem), lr), lr=lr, **variant)
    for ours, theirs in zip(opt.param_groups, ref.param_groups):
        extra = set(ours) - set(theirs)
        assert extra <= {"bias_correction"}, extra
        assert set(theirs) <= set(ours), set(theirs) - set(ours)
        for key in theirs:
            if key != "params":
                assert ours[key] == theirs[key], key
    assert opt.defaults.keys() - ref.defaults.keys() <= {"bias_correction"}


AMSGRAD_ENTRIES = [p for p in CASES if p.values[1] == {} and accepts(p.values[0].cls, "amsgrad")]


@pytest.mark.parametrize("entry, variant", AMSGRAD_ENTRIES)
def test_amsgrad_max_is_exercised_and_matches_torch(entry, variant):
    """With beta2 = 0.999 the second moment only grows in 150 steps, so the AMSGrad max is never
    taken; beta2 = 0.9 makes it bite (checked), and the trajectories must still agree."""
    hp = {"amsgrad": True, "betas": (0.9, 0.9)}
    problem = Quadratic()
    ours, theirs = make_params(problem), make_params(problem)
    lr = entry.test_lr
    opt = entry.build(two_groups(ours, lr), lr=lr, **hp)
    ref = entry.build_torch(two_groups(theirs, lr), lr=lr, **hp)
    a, b = drive(opt, ours, problem, STEPS), drive(ref, theirs, problem, STEPS)
    state = ref.state[theirs[0]]
    assert (state["max_exp_avg_sq"] > state["exp_avg_sq"]).any()
    assert rel_err(a, b) <= tolerance(entry)


@pytest.mark.parametrize("entry, variant", CASES)
def test_float32_trajectory_close_to_torch(entry, variant):
    """float32 parameters: same algorithm, so the trajectories agree to float32 accuracy."""
    problem = Quadratic(maximize=variant.get("maximize", False))
    ours, theirs = make_params(problem, torch.float32), make_params(problem, torch.float32)
    lr = entry.test_lr
    opt = entry.build(two_groups(ours, lr), lr=lr, **variant)
    ref = entry.build_torch(two_groups(theirs, lr), lr=lr, **variant)
    a, b = drive(opt, ours, problem, 50), drive(ref, theirs, problem, 50)
    assert all(p.dtype == torch.float32 for p in ours)
    assert rel_err(a, b) <= 1e-3


NADAM = lookup("nadam")


@pytest.mark.parametrize("mode", fused_modes(NADAM) + [{"foreach": True}],
                         ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()) or "default")
@pytest.mark.parametrize("resumed", [False, True], ids=["fresh", "resumed"])
def test_nadam_mu_product_rounds_like_torch(mode, resumed):
    """torch's NAdam keeps ``mu_product`` in a 0-dim state of the default dtype (float32) and
    multiplies it in place: ``mu`` rounded to float32, the product rounded, and the same step
    reads the rounded value. float64 parameters expose any other rounding at ~1e-7, so the
    trajectory must agree to float64 accuracy and ``mu_product`` bit for bit, on every path,
    from fresh state and after ``load_state_dict`` (which casts the state to the parameter's
    float64, so from there on the multiply is exact in both)."""
    assert torch.get_default_dtype() == torch.float32
    problem = Quadratic()
    ours, theirs = make_params(problem), make_params(problem)
    lr = NADAM.test_lr
    opt = NADAM.build(two_groups(ours, lr), lr=lr, **mode)
    ref = NADAM.build_torch(two_groups(theirs, lr), lr=lr)
    a, b = [drive(opt, ours, problem, 40)], [drive(ref, theirs, problem, 40)]
    if resumed:
        saved_ours, saved_theirs = opt.state_dict(), ref.state_dict()
        opt = NADAM.build(two_groups(ours, lr), lr=lr, **mode)
        ref = NADAM.build_torch(two_groups(theirs, lr), lr=lr)
        opt.load_state_dict(saved_ours)
        ref.load_state_dict(saved_theirs)
    a.append(drive(opt, ours, problem, 80, start=40))
    b.append(drive(ref, theirs, problem, 80, start=40))
    for p, q in zip(ours, theirs):
        mine, torchs = opt.state[p]["mu_product"], ref.state[q]["mu_product"]
        assert mine.dtype == torchs.dtype == (torch.float64 if resumed else torch.float32)
        assert mine.item() == torchs.item()
    assert rel_err(np.concatenate(a), np.concatenate(b)) <= 1e-13
