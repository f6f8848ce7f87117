"""state_dict: round trip, cross-loading with torch.optim both ways, torch.save/torch.load
(weights_only=True), resume in a fresh process, torch's state keys and dtypes, and state
dicts written by older torch versions."""

from __future__ import annotations

import inspect

import copy
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CASES, ENTRY_PARAMS, RULE_CASES, accepts, drive, make_params, rel_err, tolerance, two_groups
from numpy_reference import Quadratic

from optimlab.rules.base import hyperparameters

BEFORE, AFTER = 25, 25
TORCH_STATE_KEYS = {"step", "momentum_buffer", "sum", "square_avg", "grad_avg", "acc_delta",
                    "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "mu_product",
                    "prev", "step_size", "eta", "mu", "ax",
                    "row_var", "col_var", "variance"}


def _problem(variant):
    return Quadratic(maximize=variant.get("maximize", False))


def _build(entry, variant, params, use_torch=False):
    build = entry.build_torch if use_torch else entry.build
    return build(two_groups(params, entry.test_lr), lr=entry.test_lr, **variant)


def _interrupted(entry, variant, save_torch, load_torch, transform=lambda sd: sd):
    """Run BEFORE steps with one implementation, hand its state_dict (through ``transform``) to
    a fresh optimizer of the other, run AFTER more. Returns (resumed trajectory, the
    uninterrupted trajectory of the loading implementation)."""
    problem = _problem(variant)
    params = make_params(problem)
    first = _build(entry, variant, params, save_torch)
    x = drive(first, params, problem, BEFORE)[-1]
    sd = transform(first.state_dict())

    resumed_params = make_params(problem, x=x)
    second = _build(entry, variant, resumed_params, load_torch)
    second.load_state_dict(sd)
    resumed = drive(second, resumed_params, problem, AFTER, start=BEFORE)

    straight_params = make_params(problem)
    straight = _build(entry, variant, straight_params, load_torch)
    uninterrupted = drive(straight, straight_params, problem, BEFORE + AFTER)[BEFORE:]
    return resumed, uninterrupted, second


def _state_dtypes(sd) -> dict:
    return {(i, k): v.dtype for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}


def _check_resumed(entry, variant, transform):
    """The resumed run equals the uninterrupted one bit for bit where every state tensor keeps
    its dtype through the load. torch's load casts 0-dim state other than ``step`` to its
    param's dtype (``Optimizer._process_value_according_to_param_policy``): NAdam's float32
    ``mu_product`` beside float64 params comes back float64, and the resumed steps round its
    products as float64, as torch's own resumed NAdam does (its variant 1 resumes 1e-17 off
    its uninterrupted run). There the resumed run must equal torch's resumed run."""
    saved = {}

    def recording(sd):
        saved.update(_state_dtypes(sd))
        return transform(sd)

    resumed, uninterrupted, opt = _interrupted(entry, variant, False, False, transform=recording)
    loaded = _state_dtypes(opt.state_dict())
    if loaded == saved:
        np.testing.assert_array_equal(resumed, uninterrupted)
        return
    changed = {key for key in saved if loaded[key] != saved[key]}
    assert {k for _, k in changed} <= set(entry.cls.rule.scalars) - {"step"}, changed
    torch_resumed, _, _ = _interrupted(entry, variant, True, True, transform=transform)
    assert rel_err(resumed, torch_resumed) <= 1e-14


@pytest.mark.parametrize("entry, variant", RULE_CASES)  # every engine-run entry
def test_round_trip(entry, variant):
    _check_resumed(entry, variant, copy.deepcopy)


@pytest.mark.parametrize("entry, variant", RULE_CASES)  # every engine-run entry
def test_state_dict_reloads_to_an_equal_state_dict(entry, variant):
    problem = _problem(variant)
    params = make_params(problem)
    opt = _build(entry, variant, params)
    drive(opt, params, problem, 5)
    sd = opt.state_dict()
    other = _build(entry, variant, make_params(problem))
    other.load_state_dict(copy.deepcopy(sd))
    sd2 = other.state_dict()
    assert sd2["param_groups"] == sd["param_groups"]
    assert sd2["state"].keys() == sd["state"].keys()
    for i, st in sd["state"].items():
        assert list(sd2["state"][i]) == list(st)
        for k, v in st.items():
            assert torch.equal(sd2["state"][i][k], v)
            # torch.optim casts non-`step` state to the param's dtype on load
            # (Optimizer._process_value_according_to_param_policy), e.g. NAdam's mu_product.
            expected = v.dtype if k == "step" else params[0].dtype
            assert sd2["state"][i][k].dtype == expected


@pytest.mark.parametrize("entry, variant", RULE_CASES)  # every engine-run entry
def test_another_optimizers_state_is_refused_at_load(entry, variant):
    """A state the rule cannot step (a key missing, a buffer of another shape: another
    optimizer's checkpoint) is refused by load_state_dict, naming what is wrong, and leaves
    the optimizer as it was; before, it loaded and the first step() failed (KeyError, or a
    size mismatch deep in the kernel)."""
    problem = _problem(variant)
    params = make_params(problem)
    opt = _build(entry, variant, params)
    drive(opt, params, problem, 3)
    sd = opt.state_dict()
    if not sd["state"]:
        pytest.skip("a stateless rule (plain SGD)")
    index, state = next(iter(sd["state"].items()))
    other = _build(entry, variant, make_params(problem))
    before = other.state, other.param_groups
    lazy = {k for k, fill in entry.cls.rule.tensors(hyperparameters(
        other.param_groups[0], other.defaults)).items() if fill is None}

    def refused(broken, match):
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(broken)
        assert other.state is before[0] and other.param_groups is before[1]

    for key, value in state.items():
        broken = copy.deepcopy(sd)
        del broken["state"][index][key]
        if broken["state"][index] and key not in lazy:
            refused(broken, f"param {index} .*lacks '{key}'")
        if value.dim() > 0:
            broken = copy.deepcopy(sd)
            broken["state"][index][key] = value.flatten()[:-1].clone()
            refused(broken, f"'{key}' shaped")
    broken = copy.deepcopy(sd)
    broken["state"][index]["exp_avg_of_another_class"] = torch.zeros(3)
    refused(broken, "'exp_avg_of_another_class', which .* does not keep")
    other.load_state_dict(copy.deepcopy(sd))   # the intact one still loads


@pytest.mark.parametrize("entry, variant", CASES)
def test_torch_state_dict_loads_into_optimlab(entry, variant):
    """A state_dict saved by torch.optim continues in optimlab as it would have in torch."""
    resumed, _, _ = _interrupted(entry, variant, save_torch=True, load_torch=False)
    _, torch_continued, _ = _interrupted(entry, variant, save_torch=True, load_torch=True)
    assert rel_err(resumed, torch_continued) <= tolerance(entry)


@pytest.mark.parametrize("entry, variant", CASES)
def test_optimlab_state_dict_loads_into_torch(entry, variant):
    resumed, _, _ = _interrupted(entry, variant, save_torch=False, load_torch=True)
    _, ours_continued, _ = _interrupted(entry, variant, save_torch=False, load_torch=False)
    assert rel_err(resumed, ours_continued) <= tolerance(entry)


def _through_torch_save(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("entry, variant", RULE_CASES)  # every engine-run entry
def test_torch_save_load_weights_only(entry, variant):
    _check_resumed(entry, variant, _through_torch_save)


# ------------------------------------------------------------------- fresh-process resume
_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    sys.path.insert(0, {tests!r})
    from conftest import drive, make_params, two_groups
    from numpy_reference import Quadratic
    from optimlab.registry import REGISTRY

    phase, folder, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    for case in cases:
        entry = REGISTRY[case["name"]]
        variant = entry.variants[case["variant"]]
        problem = Quadratic(maximize=variant.get("maximize", False))
        path = f"{{folder}}/{{case['name']}}-{{case['variant']}}"
        if phase == "save":
            params = make_params(problem)
            opt = entry.build(two_groups(params, entry.test_lr), lr=entry.test_lr, **variant)
            x = drive(opt, params, problem, {before})[-1]
            torch.save({{"state_dict": opt.state_dict(), "x": torch.from_numpy(x)}}, path + ".pt")
        else:
            saved = torch.load(path + ".pt", weights_only=True)
            params = make_params(problem, x=saved["x"].numpy())
            opt = entry.build(two_groups(params, entry.test_lr), lr=entry.test_lr, **variant)
            opt.load_state_dict(saved["state_dict"])
            np.save(path + ".npy", drive(opt, params, problem, {after}, start={before}))
""")


@pytest.fixture(scope="module")
def fresh_process_runs(tmp_path_factory):
    """Two separate interpreters: one saves after BEFORE steps, the next resumes AFTER steps."""
    folder = tmp_path_factory.mktemp("resume")
    tests = str(Path(__file__).resolve().parent)
    script = _SCRIPT.format(tests=tests, before=BEFORE, after=AFTER)
    cases = json.dumps([{"name": p.values[0].name, "variant": p.values[0].variants.index(p.values[1])}
                        for p in CASES])
    for phase in ("save", "resume"):
        subprocess.run([sys.executable, "-c", script, phase, str(folder), cases], check=True,
                       timeout=300)
    return folder


@pytest.mark.parametrize("entry, variant", CASES)
def test_resume_in_a_fresh_process(entry, variant, fresh_process_runs):
    resumed = np.load(fresh_process_runs / f"{entry.name}-{entry.variants.index(variant)}.npy")
    problem = _problem(variant)
    params = make_params(problem)
    opt = _build(entry, variant, params)
    uninterrupted = drive(opt, params, problem, BEFORE + AFTER)[BEFORE:]
    # not bitwise: the other process may pick another (fused/reference) path for the same rule
    assert rel_err(resumed, uninterrupted) <= 1e-13


# ------------------------------------------------------------------ state keys and dtypes
def _state_layout(opt):
    """{param index: [(key, dtype, shape) or (key, type)]} from the state_dict, in key order."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        out[i] = [(k, v.dtype, tuple(v.shape)) if torch.is_tensor(v) else (k, type(v))
                  for k, v in st.items()]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("entry, variant", CASES)
def test_state_keys_and_dtypes_match_torch(entry, variant, dtype):
    problem = _problem(variant)
    ours, theirs = make_params(problem, dtype), make_params(problem, dtype)
    opt, ref = _build(entry, variant, ours), _build(entry, variant, theirs, use_torch=True)
    assert _state_layout(opt) == _state_layout(ref), "at construction"
    for steps in (1, 2):
        drive(opt, ours, problem, steps)
        drive(ref, theirs, problem, steps)
        assert _state_layout(opt) == _state_layout(ref), f"after {steps} step(s)"
    names = {k for st in opt.state_dict()["state"].values() for k in st}
    assert names <= TORCH_STATE_KEYS


@pytest.mark.parametrize("entry", [p.values[0] for p in CASES if p.values[1] == {}],
                         ids=lambda e: e.name)
def test_scalar_state_dtype_follows_default_dtype(entry):
    """``step``/``mu_product`` are float64 when the default dtype is float64, as in torch."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        problem = Quadratic()
        ours, theirs = make_params(problem, torch.float32), make_params(problem, torch.float32)
        opt, ref = _build(entry, {}, ours), _build(entry, {}, theirs, use_torch=True)
        drive(opt, ours, problem, 2)
        drive(ref, theirs, problem, 2)
        assert _state_layout(opt) == _state_layout(ref)
    finally:
        torch.set_default_dtype(previous)


# --------------------------------------------------------------- older torch state dicts
NEWER_GROUP_KEYS = ("maximize", "foreach", "differentiable", "fused", "capturable",
                    "decoupled_weight_decay", "bias_correction")


def _as_legacy(sd):
    """What an older torch wrote: no newer group flags, scalar state as plain Python floats."""
    sd = copy.deepcopy(sd)
    for group in sd["param_groups"]:
        for key in NEWER_GROUP_KEYS:
            group.pop(key, None)
    for st in sd["state"].values():
        for key in ("step", "mu_product"):
            if key in st:
                st[key] = float(st[key])
    return sd


LEGACY_CASES = [p for p in CASES if not set(p.values[1]) & set(NEWER_GROUP_KEYS)]


@pytest.mark.parametrize("source", ["torch", "optimlab"])
@pytest.mark.parametrize("entry, variant", LEGACY_CASES)
def test_legacy_state_dict_loads_and_steps(entry, variant, source):
    save_torch = source == "torch"
    resumed, uninterrupted, opt = _interrupted(entry, variant, save_torch, False,
                                               transform=_as_legacy)
    assert rel_err(resumed, uninterrupted) <= tolerance(entry)
    for group in opt.param_groups:
        # (classes without the flag, such as Adafactor, do not get it, as in torch)
        assert group["maximize"] is False and group.get("differentiable", False) is False
        assert ("differentiable" in group) == ("differentiable" in inspect.signature(entry.cls).parameters)
    for st in opt.state.values():
        for key in ("step", "mu_product"):
            if key in st:
                assert torch.is_tensor(st[key]) and st[key].dtype == torch.float32, key


@pytest.mark.parametrize("fused", [True, None])
@pytest.mark.parametrize("entry", [e for e in ENTRY_PARAMS if accepts(e.values[0].cls, "fused")])
def test_step_dtype_under_a_float64_default_is_torchs(entry, fused):
    """torch.optim keeps ``step`` in float32 for ``fused=True`` whatever the default dtype
    (``_get_scalar_dtype(is_fused)``), in the default dtype otherwise."""
    dtypes = []
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for build in (entry.build, entry.build_torch):
            p = torch.nn.Parameter(torch.ones(3))
            opt = build([p], lr=entry.test_lr, fused=fused)
            p.grad = torch.ones_like(p)
            opt.step()
            dtypes.append({k: v.dtype for k, v in opt.state[p].items() if torch.is_tensor(v)})
    finally:
        torch.set_default_dtype(default)
    assert dtypes[0] == dtypes[1]
    if fused and "step" in dtypes[0]:
        assert dtypes[0]["step"] == torch.float32


@pytest.mark.parametrize("direction, nesterov", [
    ("torch->optimlab", False), ("torch->optimlab", True), ("optimlab->torch", False),
    pytest.param("optimlab->torch", True, marks=pytest.mark.xfail(
        strict=True, reason="torch's Nesterov step adds the buffer to the sparse grad: it "
                            "takes only the sparse buffer its own SGD makes, not optimlab's dense one"))])
def test_sgd_momentum_with_sparse_grads_loads_both_ways(direction, nesterov):
    """torch's SGD keeps a sparse grad's momentum buffer sparse, optimlab's rule a dense one:
    a checkpoint goes on with the same trajectory both ways, through torch.save and
    torch.load(weights_only=True) (a sparse buffer used to fail the next step with
    ``add(sparse, dense) is not supported``)."""
    import optimlab

    def grad(seed):
        gen = torch.Generator().manual_seed(seed)
        dense = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        return (dense * (torch.rand(5, 3, generator=gen) > 0.5)).to_sparse()

    first, second = ((torch.optim.SGD, optimlab.SGD) if direction == "torch->optimlab"
                     else (optimlab.SGD, torch.optim.SGD))
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov)
    p = torch.ones(5, 3, dtype=torch.float64, requires_grad=True)
    opt = first([p], **kw)
    for seed in range(4):
        p.grad = grad(seed)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q = p.detach().clone().requires_grad_()
    resumed = second([q], **kw)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for seed in range(4, 9):
        p.grad, q.grad = grad(seed), grad(seed)
        opt.step()
        resumed.step()
    torch.testing.assert_close(q, p, rtol=1e-14, atol=1e-15)
