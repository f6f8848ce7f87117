"""Everything torch.optim.Optimizer offers keeps working, for every registry entry, and behaves
like the torch.optim twin."""

from __future__ import annotations


import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ENTRY_PARAMS, RULE_PARAMS, accepts, drive, flat, make_params, rel_err, tolerance
from numpy_reference import Quadratic

STEPS = 15


def _pair(entry, make_groups, **hp):
    """(optimlab, its params), (torch twin, its params) on identical copies of the problem."""
    problem = Quadratic()
    out = []
    for build in (entry.build, entry.build_torch):
        params = make_params(problem)
        out.append((build(make_groups(params), lr=entry.test_lr, **hp), params))
    return problem, out


def _linear(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Linear(3, 2).to(dtype)


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=dtype), torch.randn(8, 2, generator=g, dtype=dtype)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_add_param_group(entry):
    def groups(params):
        return [params[0]]

    problem, [(opt, ours), (ref, theirs)] = _pair(entry, groups)
    opt.add_param_group({"params": [ours[1]], "lr": entry.test_lr * 2})
    ref.add_param_group({"params": [theirs[1]], "lr": entry.test_lr * 2})
    g0, g1 = opt.param_groups
    assert g1["lr"] == entry.test_lr * 2
    for key in g0:
        if key not in ("params", "lr"):
            assert g1[key] == g0[key], key  # defaults filled in
    assert rel_err(drive(opt, ours, problem, STEPS), drive(ref, theirs, problem, STEPS)) <= tolerance(entry)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [ours[0]]})


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("entry", RULE_PARAMS)  # build only: every engine-run entry
def test_zero_grad(entry, set_to_none):
    model = _linear()
    opt = entry.build(model.parameters(), lr=entry.test_lr)
    x, y = _data()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is not None and not p.grad.any()


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_step_with_closure_returns_the_loss(entry):
    x, y = _data()
    results = []
    for build in (entry.build, entry.build_torch):
        model = _linear()
        opt = build(model.parameters(), lr=entry.test_lr)
        calls = []

        def closure():
            calls.append(1)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses = [opt.step(closure) for _ in range(5)]
        assert len(calls) == 5
        assert all(torch.is_tensor(loss) and loss.requires_grad for loss in losses)
        results.append((torch.stack([loss.detach() for loss in losses]), flat(model.parameters())))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=tolerance(entry), atol=0)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=tolerance(entry))
    assert opt.step() is None


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_named_parameters(entry):
    x, y = _data()
    sds, models = [], []
    for build in (entry.build, entry.build_torch):
        model = _linear()
        opt = build(model.named_parameters(), lr=entry.test_lr)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sds.append(opt.state_dict())
        models.append(model)
    ours, theirs = sds
    assert ours["param_groups"][0]["param_names"] == ["weight", "bias"]
    assert ours["param_groups"][0]["param_names"] == theirs["param_groups"][0]["param_names"]
    # a named state_dict loads into a named optimizer (ours and torch's)
    for build in (entry.build, entry.build_torch):
        other = build(_linear().named_parameters(), lr=entry.test_lr)
        other.load_state_dict(copy.deepcopy(ours))
        assert other.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_hooks(entry):
    model = _linear()
    opt = entry.build(model.parameters(), lr=entry.test_lr)
    x, y = _data()
    seen = []
    before = {}

    def pre(optimizer, args, kwargs):
        assert optimizer is opt
        before["w"] = model.weight.detach().clone()
        seen.append("pre")

    def post(optimizer, args, kwargs):
        assert not torch.equal(before["w"], model.weight.detach())  # runs after the update
        seen.append("post")

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert seen == ["pre", "post"]

    opt.register_state_dict_pre_hook(lambda o: seen.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    sd = opt.state_dict()
    assert seen[-1] == "sd_pre" and sd["extra"] == 1
    sd.pop("extra")

    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post"))
    opt.load_state_dict(sd)
    assert seen[-2:] == ["load_pre", "load_post"]

    for handle in handles:
        handle.remove()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert seen.count("pre") == 1 and seen.count("post") == 1


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_tensor_lr(entry):
    """A Tensor lr gives the float-lr trajectory, and follows in-place changes."""
    problem = Quadratic()
    trajectories = []
    for lr in (entry.test_lr, torch.tensor(entry.test_lr, dtype=torch.float64)):
        params = make_params(problem)
        opt = entry.build(params, lr=lr)
        first = drive(opt, params, problem, STEPS)
        opt.param_groups[0]["lr"] = lr * 0.5 if isinstance(lr, float) else lr.mul_(0.5)
        trajectories.append(np.vstack([first, drive(opt, params, problem, STEPS, start=STEPS)]))
    np.testing.assert_array_equal(trajectories[0], trajectories[1])
    # and torch.optim with the same Tensor lr agrees, where torch's for-loop path accepts it
    params = make_params(problem)
    try:
        ref = entry.build_torch(params, lr=torch.tensor(entry.test_lr, dtype=torch.float64))
        theirs = drive(ref, params, problem, STEPS)
    except (RuntimeError, TypeError, ValueError):
        return
    assert rel_err(trajectories[0][:STEPS], theirs) <= tolerance(entry)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_complex_parameters_match_torch(entry):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=g, dtype=torch.complex128) * 0.3 + 2 * torch.eye(6)
    b = torch.randn(6, generator=g, dtype=torch.complex128)
    p0 = torch.randn(6, generator=g, dtype=torch.complex128)
    try:
        p = p0.clone().requires_grad_(True)
        p.grad = torch.ones_like(p)
        entry.build_torch([p], lr=entry.test_lr).step()
    except RuntimeError as refused:  # torch refuses complex params (Adafactor): so must we
        p.grad = torch.ones_like(p)
        with pytest.raises(RuntimeError, match=re.escape(str(refused))):
            entry.build([p], lr=entry.test_lr).step()
        return
    runs = []
    for build in (entry.build, entry.build_torch):
        p = p0.clone().requires_grad_(True)
        opt = build([p], lr=entry.test_lr)
        traj = []
        for _ in range(STEPS):
            opt.zero_grad()
            (a @ p - b).abs().pow(2).sum().backward()
            opt.step()
            traj.append(torch.view_as_real(p.detach()).reshape(-1).numpy().copy())
        assert p.dtype == torch.complex128
        runs.append((np.array(traj), {k: v for k, v in opt.state[p].items()}))
    assert rel_err(runs[0][0], runs[1][0]) <= tolerance(entry)
    assert np.abs(runs[1][0][-1] - torch.view_as_real(p0).reshape(-1).numpy()).max() > 1e-6
    assert [(k, v.dtype) for k, v in runs[0][1].items()] == [(k, v.dtype) for k, v in runs[1][1].items()]


@pytest.mark.parametrize("entry", RULE_PARAMS)  # build only: every engine-run entry
def test_deepcopy(entry):
    problem = Quadratic()
    params = make_params(problem)
    opt = entry.build(params, lr=entry.test_lr)
    drive(opt, params, problem, 5)
    params2, opt2 = copy.deepcopy((params, opt))
    assert opt2.param_groups[0]["params"][0] is params2[0]
    a = drive(opt, params, problem, STEPS, start=5)
    snapshot = copy.deepcopy(opt.state_dict())
    b = drive(opt2, params2, problem, STEPS, start=5)
    np.testing.assert_array_equal(a, b)
    # stepping the copy did not touch the original
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(v, snapshot["state"][i][k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_dtype_is_preserved(entry, dtype):
    problem = Quadratic()
    layouts = []
    for build in (entry.build, entry.build_torch):
        params = make_params(problem, dtype)
        opt = build(params, lr=entry.test_lr)
        traj = drive(opt, params, problem, 5)
        assert all(p.dtype == dtype for p in params)
        assert np.isfinite(traj).all() and np.abs(traj[-1] - flat(make_params(problem, dtype))).max() > 0
        layouts.append({i: [(k, v.dtype) for k, v in st.items()]
                        for i, st in opt.state_dict()["state"].items() if st})
    assert layouts[0] == layouts[1]


@pytest.mark.parametrize("entry", RULE_PARAMS)  # build only: every engine-run entry
def test_param_group_isolation(entry):
    """Group 2's hyperparameters don't leak into group 1 (and vice versa): each group moves
    exactly as a single-group optimizer with its own hyperparameters would."""
    problem = Quadratic()
    lr = entry.test_lr
    special = {"lr": 3 * lr, **entry.variants[-1]}
    if accepts(entry.cls, "weight_decay"):
        special["weight_decay"] = 0.3
    params = make_params(problem)
    opt = entry.build([{"params": [params[0]]}, {"params": [params[1]], **special}], lr=lr)
    both = drive(opt, params, problem, STEPS)

    # the same gradients, fed to two single-group optimizers
    alone = make_params(problem)
    opt_a = entry.build([alone[0]], lr=lr)
    opt_b = entry.build([alone[1]], **{"lr": lr, **special})
    traj = []
    for t in range(STEPS):
        grads = problem.split(problem.grad(flat(alone), t))
        for p, g in zip(alone, grads):
            p.grad = torch.tensor(g)
        opt_a.step()
        opt_b.step()
        traj.append(flat(alone))
    np.testing.assert_array_equal(both, np.array(traj))


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_params_without_grad_are_skipped(entry):
    problem = Quadratic()
    states = []
    for build in (entry.build, entry.build_torch):
        params = make_params(problem)
        frozen = params[1].detach().clone()
        opt = build(params, lr=entry.test_lr)
        for t in range(3):
            params[0].grad = torch.tensor(problem.split(problem.grad(flat(params), t))[0])
            opt.step()
        assert params[1].grad is None and torch.equal(params[1].detach(), frozen)
        assert not torch.equal(params[0].detach(), torch.tensor(problem.split(problem.x0)[0]))
        states.append({i: sorted(st) for i, st in opt.state_dict()["state"].items() if st})
    assert states[0] == states[1]


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_torch_step_lr_drives_optimlab(entry):
    problem = Quadratic()
    runs = []
    for build in (entry.build, entry.build_torch):
        params = make_params(problem)
        opt = build(params, lr=entry.test_lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        lrs, traj = [], []
        for t in range(10):
            traj.append(drive(opt, params, problem, 1, start=t)[0])
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((lrs, np.array(traj)))
    assert runs[0][0] == runs[1][0] and runs[0][0][-1] == entry.test_lr * 0.125
    assert rel_err(runs[0][1], runs[1][1]) <= tolerance(entry)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_torch_reduce_lr_on_plateau_drives_optimlab(entry):
    problem = Quadratic()
    params = make_params(problem)
    opt = entry.build(params, lr=entry.test_lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    lrs = []
    for t in range(6):
        drive(opt, params, problem, 1, start=t)
        sched.step(1.0)  # a metric that never improves
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([entry.test_lr * f for f in (1, 1, 0.5, 0.5, 0.25, 0.25)])
