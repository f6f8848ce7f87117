"""``optimizer.state`` edited between steps, as torch.optim users do it: a layer's state
cleared to re-initialise it, a buffer or ``step`` replaced, the whole state cleared. torch.optim
reads the state afresh at every step, so the edit takes effect at the next one; optimlab's
cached plans (C kernel, C++ step helper, multi-tensor path, torch's kernels) must see it too.
Also: state written by older torch versions (a buffer saved as None), state of another shape
than its param, and group keys the class does not take."""

from __future__ import annotations

import pytest
import torch

import optimlab
from conftest import ENTRY_PARAMS, drive, fused_modes, make_params, rel_err, tolerance, two_groups
from numpy_reference import Quadratic
from optimlab import fused
from optimlab.fused import build, torch_kernels

BEFORE, AFTER = 6, 12


def _replace_tensors(opt, p):
    """Every tensor of ``state[p]`` rebound to a new one: halved (0-dim ones: the same value)."""
    st = opt.state[p]
    for key, value in list(st.items()):
        if torch.is_tensor(value):
            st[key] = value.clone() if value.dim() == 0 else value * 0.5


EDITS = {
    "state[p].clear()": lambda opt, p: opt.state[p].clear(),
    "state[p] = {}": lambda opt, p: opt.state.__setitem__(p, {}),
    "del state[p]": lambda opt, p: opt.state.pop(p, None),
    "state.clear()": lambda opt, p: opt.state.clear(),
    "tensors rebound": _replace_tensors,
}


def _modes(entry):
    """Every path a group can take: the class's flag choices (:func:`fused_modes`), no C
    kernel (no compiler), and the state checked by the C++ step helper or in Python."""
    modes = [(f"flags={kw}", kw, None) for kw in fused_modes(entry)]
    return modes + [(how, {}, how) for how in ("no kernel", "c++ check", "python check")]


CASES = [pytest.param(e.values[0], kw, how, edit, id=f"{e.id}-{name}-{edit}")
         for e in ENTRY_PARAMS for name, kw, how in _modes(e.values[0]) for edit in EDITS]


def _switch(monkeypatch, how):
    if how == "c++ check" and build.gatherer(compile=True) is None:
        pytest.skip("no C++ compiler: the step helper cannot be built")
    if how == "no kernel":
        monkeypatch.setenv("OPTIMLAB_DISABLE_FUSED", "1")
    elif how == "python check":
        monkeypatch.setattr(build, "state_checker", lambda compile=False: None)


def _states(opt, params):
    return [{k: v.detach().clone() if torch.is_tensor(v) else v for k, v in opt.state.get(p, {}).items()}
            for p in params]


@pytest.mark.parametrize("entry,flags,how,edit", CASES)
def test_state_edits_take_effect_as_in_torch(entry, flags, how, edit, monkeypatch):
    _switch(monkeypatch, how)
    problem = Quadratic()
    ours, theirs = make_params(problem), make_params(problem)
    opt = entry.build(two_groups(ours, entry.test_lr), lr=entry.test_lr, **flags)
    ref = entry.build_torch(two_groups(theirs, entry.test_lr), lr=entry.test_lr)
    drive(opt, ours, problem, BEFORE)
    drive(ref, theirs, problem, BEFORE)
    if how == "c++ check" and entry.is_rule and opt.rule.elementwise:  # a C kernel's plan
        assert fused._plans[opt][id(opt.param_groups[0])].snapshot.meta is not None
    EDITS[edit](opt, ours[0])
    EDITS[edit](ref, theirs[0])
    try:
        expected = drive(ref, theirs, problem, AFTER, start=BEFORE)
    except (KeyError, RuntimeError) as e:  # torch.optim itself cannot step on (Adagrad: no `sum`)
        pytest.skip(f"torch.optim.{type(ref).__name__} raises after this edit: {e!r}")
    got = drive(opt, ours, problem, AFTER, start=BEFORE)
    assert rel_err(got, expected) <= tolerance(entry)
    for a, b in zip(_states(opt, ours), _states(ref, theirs)):
        assert list(a) == list(b)
        for key in a:
            assert torch.allclose(torch.as_tensor(a[key], dtype=torch.float64),
                                  torch.as_tensor(b[key], dtype=torch.float64), rtol=1e-6, atol=0), key


def test_the_plan_is_kept_while_the_state_is_untouched():
    """The check costs no rebuilds: the same plan (and the C++ helper) step after step, on
    groups large enough to build the helper; one rebuild after an edit."""
    ps = [torch.nn.Parameter(torch.randn(4, dtype=torch.float64)) for _ in range(130)]
    opt = optimlab.Adam(ps, lr=0.01)

    def step():
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        return fused._plans[opt][id(opt.param_groups[0])]

    plans = [step() for _ in range(5)]
    if plans[-1].gather is None:
        pytest.skip("no C++ compiler: the step helper was not built")
    assert plans[-1].snapshot.meta is not None
    assert all(p is plans[0] for p in plans)
    opt.state[ps[7]]["exp_avg"] = torch.zeros_like(ps[7])
    after = [step() for _ in range(3)]
    assert after[0] is not plans[0] and after[1] is after[0] is after[2]
    assert opt.state[ps[7]]["exp_avg"].abs().sum() > 0  # the new buffer was stepped


@pytest.mark.parametrize("flags", [{}, {"fused": False}, {"fused": False, "foreach": False}])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_momentum_buffer_saved_as_none_is_made_at_the_next_step(momentum, flags):
    """torch < 2.2 wrote ``{"momentum_buffer": None}`` for every param of SGD; torch.optim's
    SGD treats it as not made yet, and keeps it while momentum is 0."""
    saved = {"state": {0: {"momentum_buffer": None}},
             "param_groups": [{"lr": 0.1, "momentum": momentum, "dampening": 0, "weight_decay": 0,
                               "nesterov": False, "maximize": False, "foreach": None,
                               "differentiable": False, "fused": None, "params": [0]}]}
    results = []
    for make in (optimlab.SGD, torch.optim.SGD):
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        opt = make([p], lr=0.1, momentum=momentum, **(flags if make is optimlab.SGD else {}))
        opt.load_state_dict(saved)
        for step in range(4):
            p.grad = torch.full_like(p, 1.0 + step)
            opt.step()
        results.append((p.detach().clone(), opt.state_dict()["state"]))
    (p_ours, st_ours), (p_torch, st_torch) = results
    assert torch.allclose(p_ours, p_torch, rtol=1e-12, atol=0)
    assert list(st_ours[0]) == list(st_torch[0]) == ["momentum_buffer"]
    if momentum == 0:
        assert st_ours[0]["momentum_buffer"] is None
    else:
        assert torch.allclose(st_ours[0]["momentum_buffer"], st_torch[0]["momentum_buffer"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("flags", [{}, {"fused": False}, {"fused": False, "foreach": False}])
@pytest.mark.parametrize("make,key,kw", [
    (optimlab.SGD, "momentum_buffer", {"momentum": 0.9}),
    (optimlab.Adam, "exp_avg", {}),
    (optimlab.Adagrad, "sum", {}),
])
def test_state_of_another_shape_is_refused_as_torch_refuses_it(make, key, kw, flags, monkeypatch):
    """A checkpoint whose buffer has the param's element count but not its shape (two params
    swapped after a refactoring) raises at the step, on every path; torch's own fused kernel
    (:mod:`optimlab.fused.torch_kernels`) is not handed it."""
    calls = []
    real = torch_kernels.step
    monkeypatch.setattr(torch_kernels, "step", lambda *a: calls.append(1) or real(*a))
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = make([p], lr=0.1, **kw, **flags)
    p.grad = torch.ones_like(p)
    opt.step()
    opt.state[p][key] = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="size|shape"):
        opt.step()
    assert calls


def _foreign_keys(entry):
    """Group keys optimlab's engine knows that neither this class nor its torch twin takes."""
    known = set(entry.build([torch.zeros(1, requires_grad=True)]).defaults)
    known |= set(entry.build_torch([torch.zeros(1, requires_grad=True)]).defaults)
    candidates = {"weight_decay": 0.1, "maximize": True, "decoupled_weight_decay": True,
                  "bias_correction": False}
    return {k: v for k, v in candidates.items() if k not in known}


@pytest.mark.parametrize("entry", [e for e in ENTRY_PARAMS if _foreign_keys(e.values[0])])
def test_group_keys_the_class_does_not_take_are_ignored(entry):
    """A generic group builder writes ``weight_decay`` into every group; torch.optim's Rprop
    (which has none) ignores it, as SGD ignores ``decoupled_weight_decay``."""
    extra = _foreign_keys(entry)
    if "weight_decay" not in extra:  # the class decays: decoupled or not then matters
        extra["weight_decay"] = 0.1
    problem = Quadratic()
    ours, theirs = make_params(problem), make_params(problem)
    opt = entry.build([{"params": ours, **extra}], lr=entry.test_lr)
    ref = entry.build_torch([{"params": theirs, **extra}], lr=entry.test_lr)
    assert rel_err(drive(opt, ours, problem, 30), drive(ref, theirs, problem, 30)) <= tolerance(entry)
