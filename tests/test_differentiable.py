"""``differentiable=True``: autograd through the step, checked against torch.optim's own.

For every registry entry and variant, in float64 (also as the default dtype: torch keeps
``step`` and ``mu_product`` in it and reads them on its differentiable path):

* the Jacobian of the parameter and the state after three steps with respect to the
  starting parameter and each step's gradient, given as inputs (torch's ``_diff_fn`` in
  test/optim/test_optim.py), equals torch.optim's differentiable optimizer's to 1e-6.
  Default flags, so a step that took the fused kernel (no graph) would fail here;
* ``torch.autograd.gradcheck`` (finite differences) passes on the same function;
* a Tensor ``lr`` (and ``weight_decay``, ``betas``) requiring grad gets the hypergradient
  of a meta loss after three steps whose gradients are themselves differentiable
  (``create_graph=True``; torch's ``_multistep_backprop_diff_hyperparams_fn``), equal to
  torch's where torch computes one, and gradcheck passes on it everywhere;
* torch.optim's errors where it refuses a combination, its grad mode, and the same
  trajectory as torch.optim when nothing requires grad.

Where torch.optim's own differentiable step breaks, the reference is adapted, not skipped:

* SGD creates its momentum buffer as ``grad.detach().clone()``, so torch's derivative
  through the first step is cut. The comparison seeds the buffer (an input, as torch's
  own test does); optimlab's lazily created buffer keeps the graph (gradcheck, and
  :func:`test_sgd_lazy_momentum_buffer_keeps_the_graph`).
* With a second step, RMSprop(centered), AMSGrad and Adamax (and, for the hypergradient,
  SGD momentum and NAdam) modify in place tensors autograd saved ("modified by an inplace
  operation"). The reference is then torch stepping once per fresh optimizer with the
  state handed over as clones: torch's ``_diff_fn`` composed step after step.
* Adagrad, RMSprop, Adadelta and Adamax reject a Tensor ``lr`` in their arithmetic
  (``argument 'value' must be Number, not Tensor``): there optimlab's hypergradient is
  compared with central differences of torch's meta loss (float hyperparameters); so
  where torch cannot take a Tensor ``lr`` at all (Rprop's ``full_like``) or cuts it out of
  its graph (ASGD reads ``eta`` with ``.item()``).
* Rprop's step depends on the gradient only through its sign: d p / d g is zero, torch's
  too; only the Jacobians' agreement is checked there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from conftest import CASES, ENTRY_PARAMS, RULE_CASES, accepts, drive, make_params, rel_err, tolerance, two_groups
from numpy_reference import Quadratic
from optimlab.engine import as_real, hyperparameters
from optimlab.registry import RULE_ENTRIES

# torch's Adafactor (and Muon) have no differentiable mode: nothing to compare with, and
# their constructors refuse the flag as torch's do
CASES = [p for p in CASES if accepts(p.values[0].cls, "differentiable")]
ENTRY_PARAMS = [p for p in ENTRY_PARAMS if accepts(p.values[0].cls, "differentiable")]
RULE_CASES = [p for p in RULE_CASES if accepts(p.values[0].cls, "differentiable")]

STEPS = 3
N = 4
INPLACE = "modified by an inplace operation"
#: the step depends on the gradient only through sign(): d p / d g is zero (torch's too)
SIGN_BASED = (torch.optim.Rprop,)
#: torch's step reads a state it derived from a Tensor hyperparameter as a float (ASGD's
#: eta), so the hyperparameter is not in its graph: the reference is then finite differences
UNUSED = "appears to not have been used in the graph"
COMPLEX_CASES = [pytest.param(e, e.variants[0], id=f"{e.name}-complex") for e in
                 (p.values[0] for p in ENTRY_PARAMS)]


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _builders(entry, variant):
    ours = lambda params, **kw: entry.build(params, **{**variant, **kw})  # noqa: E731
    theirs = lambda params, **kw: entry.build_torch(params, **{**variant, **kw})  # noqa: E731
    return ours, theirs


def _lazy_keys(entry, variant) -> list[str]:
    """State the rule creates on its first step (SGD's momentum buffer)."""
    opt = entry.build([torch.zeros(1)], **variant)
    return [k for k, fill in opt.rule.tensors(hyperparameters(opt.param_groups[0], opt.defaults)).items()
            if fill is None]


def _run(build, p0, seeds, grads, lr, chained=False):
    """Differentiable steps from ``p0`` with the given gradients; returns (param, state).

    ``chained``: one fresh optimizer per step, the state handed over as clones.
    """
    p, state, opt = p0.clone(), dict(seeds), None
    for g in grads:
        if opt is None or chained:
            if opt is not None:
                p, state = p.clone(), dict(opt.state[p])
            opt = build([p], lr=lr, differentiable=True)
            opt.state[p].update({k: v.clone() for k, v in state.items()})
        p.grad = g
        opt.step()
    return p, dict(opt.state[p])


def _state_keys(state) -> list[str]:
    return [k for k, v in state.items() if torch.is_tensor(v) and k != "step"]


def _split(seed_keys, inputs, is_complex):
    """(p0, seeds, grads) from the flat inputs."""
    conv = torch.view_as_complex if is_complex else (lambda t: t)
    n = 1 + len(seed_keys)
    return (conv(inputs[0]), dict(zip(seed_keys, map(conv, inputs[1:n]))),
            list(map(conv, inputs[n:])))



def _jacobian_fn(build, lr, seed_keys, keys, is_complex, chained=False):
    """(p0, *seeds, *grads) -> (p, *state[keys]) after ``len(grads)`` steps, as real tensors."""
    def f(*inputs):
        p, state = _run(build, *_split(seed_keys, inputs, is_complex), lr, chained)
        return (as_real(p), *(as_real(state[k]) for k in keys))

    return f


def _inputs(entry, variant, is_complex=False):
    """(seed_keys, (p0, *seeds, *grads)): random real tensors, (N, 2) for complex."""
    gen = torch.Generator().manual_seed(0)
    shape = (N, 2) if is_complex else (N,)
    seed_keys = _lazy_keys(entry, variant)
    inputs = tuple(torch.randn(shape, generator=gen) for _ in range(1 + len(seed_keys) + STEPS))
    return seed_keys, inputs


def _torch_jacobian(theirs, lr, seed_keys, keys, is_complex, inputs):
    try:
        return jacobian(_jacobian_fn(theirs, lr, seed_keys, keys, is_complex), inputs)
    except RuntimeError as e:  # torch's in-place updates break on a second step
        if INPLACE not in str(e):
            raise
        return jacobian(_jacobian_fn(theirs, lr, seed_keys, keys, is_complex, chained=True), inputs)


def _assert_jacobians_match(entry, variant, is_complex):
    ours, theirs = _builders(entry, variant)
    lr = entry.test_lr
    seed_keys, inputs = _inputs(entry, variant, is_complex)
    keys = _state_keys(_run(ours, *_split(seed_keys, inputs, is_complex), lr)[1])
    assert keys == _state_keys(_run(theirs, *_split(seed_keys, inputs, is_complex), lr)[1])

    j_ours = jacobian(_jacobian_fn(ours, lr, seed_keys, keys, is_complex), inputs)
    j_theirs = _torch_jacobian(theirs, lr, seed_keys, keys, is_complex, inputs)
    for out, (row_ours, row_theirs) in enumerate(zip(j_ours, j_theirs)):
        for inp, (a, b) in enumerate(zip(row_ours, row_theirs)):
            scale = max(1.0, b.abs().max().item())
            err = (a - b).abs().max().item()
            assert err <= 1e-6 * scale, f"d output {out} / d input {inp}: {err:.3g}"
    # the step is differentiated at all: d p / d g_1 is not zero
    if entry.torch_cls not in SIGN_BASED:
        assert j_ours[0][1 + len(seed_keys)].abs().max() > 0


@pytest.mark.parametrize("entry, variant", CASES)
def test_jacobian_matches_torch(entry, variant):
    _assert_jacobians_match(entry, variant, is_complex=False)


@pytest.mark.parametrize("entry, variant", COMPLEX_CASES)
def test_jacobian_matches_torch_complex(entry, variant):
    _assert_jacobians_match(entry, variant, is_complex=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_low_precision_params_differentiate_in_float32(entry, dtype):
    """bfloat16/float16 params are stepped in float32 and rounded back (like the reference
    path): the Jacobian is the float64 one to the storage precision."""
    variant = entry.variants[0]
    ours, _ = _builders(entry, variant)
    seed_keys, inputs = _inputs(entry, variant)
    f = _jacobian_fn(ours, entry.test_lr, seed_keys, [], False)
    exact = jacobian(f, inputs)[0]
    low = jacobian(lambda *a: f(*(x.to(dtype) for x in a))[0].double(), inputs)
    for a, b in zip(low, exact):
        assert (a - b).abs().max() <= 3e-2 * b.abs().max()
    assert low[1 + len(seed_keys)].abs().max() > 0 or entry.torch_cls in SIGN_BASED


@pytest.mark.parametrize("entry, variant", RULE_CASES)  # build only: every engine-run entry
def test_gradcheck(entry, variant):
    """Finite differences, on the lazily created state too (nothing seeded)."""
    ours, _ = _builders(entry, variant)
    gen = torch.Generator().manual_seed(1)
    inputs = tuple(torch.randn(3, generator=gen, requires_grad=True) for _ in range(1 + STEPS))
    keys = _state_keys(_run(ours, inputs[0].detach(), {}, [g.detach() for g in inputs[1:]],
                            entry.test_lr)[1])
    f = _jacobian_fn(ours, entry.test_lr, [], keys, False)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("entry, variant", [p for p in CASES if _lazy_keys(*p.values)])
def test_sgd_lazy_momentum_buffer_keeps_the_graph(entry, variant):
    """First SGD step with momentum: the buffer is the gradient, so dp_1/dg_1 = -lr (times
    1 + mu with Nesterov, -1 with maximize) exactly. torch.optim detaches that buffer."""
    ours, _ = _builders(entry, variant)
    lr = entry.test_lr
    defaults = entry.build([torch.zeros(1)], **variant).defaults
    expected = -lr * (1 + defaults["momentum"] if defaults["nesterov"] else 1.0)
    expected *= -1.0 if defaults["maximize"] else 1.0
    p0, g = torch.randn(N), torch.randn(N)
    j = jacobian(lambda g: _run(ours, p0, {}, [g], lr)[0], g)
    torch.testing.assert_close(j, expected * torch.eye(N), rtol=1e-12, atol=0)


def _quadratic(seed=1):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(N, N, generator=gen)
    A, b = a @ a.T / N + torch.eye(N), torch.randn(N, generator=gen)
    return (lambda p: 0.5 * p @ A @ p - b @ p), torch.randn(N, generator=gen)


def _meta_loss(build, hp: dict, seeds: dict, chained=False):
    """Loss after STEPS steps on a quadratic, each gradient taken with create_graph=True."""
    loss, x0 = _quadratic()
    p = x0.clone().requires_grad_(True).clone()  # a non-leaf: the step updates it in place
    state, opt = dict(seeds), None
    for _ in range(STEPS):
        (g,) = torch.autograd.grad(loss(p), p, create_graph=True)
        if opt is None or chained:
            if opt is not None:
                p, state = p.clone(), dict(opt.state[p])
            opt = build([p], differentiable=True, **hp)
            opt.state[p].update({k: v.clone() for k, v in state.items()})
        p.grad = g
        opt.step()
    return loss(p)


def _hyper_fn(build, names, seeds, chained=False):
    def f(*tensors):
        hp = dict(zip(names, tensors))
        if "beta1" in hp:
            hp["betas"] = (hp.pop("beta1"), hp.pop("beta2"))
        return _meta_loss(build, hp, seeds, chained)
    return f


def _torch_hypergradient(theirs, names, seeds, values):
    """torch.optim's hypergradients, or None where its step rejects a Tensor hyperparameter."""
    def grads(chained):
        inputs = [v.detach().clone().requires_grad_(True) for v in values]
        return torch.autograd.grad(_hyper_fn(theirs, names, seeds, chained)(*inputs), inputs)

    try:
        try:
            return grads(chained=False)
        except RuntimeError as e:  # torch's in-place updates break on a second step
            if INPLACE not in str(e):
                raise
            return grads(chained=True)
    except TypeError as e:
        assert "must be Number, not Tensor" in str(e)
        return None
    except RuntimeError as e:
        assert UNUSED in str(e)
        return None


def _torch_finite_differences(theirs, names, seeds, values, rel=1e-4):
    """Central differences of torch.optim's meta loss, each hyperparameter a float."""
    floats = [v.item() for v in values]
    out = []
    for i, x in enumerate(floats):
        h = rel * x
        up, down = list(floats), list(floats)
        up[i], down[i] = x + h, x - h
        f = _hyper_fn(theirs, names, seeds)
        out.append(torch.tensor((f(*up).item() - f(*down).item()) / (2 * h)))
    return out


def _check_hypergradients(entry, variant, hp: dict) -> str:
    """optimlab's hypergradients pass gradcheck and equal torch's: torch's autograd where its
    step takes a Tensor hyperparameter, else central differences of torch's meta loss.
    Lazily created state is seeded, so torch's detached first momentum buffer plays no part.
    Returns which torch reference was used."""
    ours, theirs = _builders(entry, variant)
    gen = torch.Generator().manual_seed(2)
    seeds = {k: torch.randn(N, generator=gen) for k in _lazy_keys(entry, variant)}
    names = list(hp)
    values = [torch.tensor(v, requires_grad=True) for v in hp.values()]
    f = _hyper_fn(ours, names, seeds)
    # RAdam's first steps do not use beta2 at all (nor does torch's): its gradient is 0
    got = torch.autograd.grad(f(*values), values, materialize_grads=True)
    assert got[0].abs() > 0  # lr always matters (beta2 may not: Adamax's max can ignore it)
    assert torch.autograd.gradcheck(f, tuple(values))
    expected, reference, rtol = _torch_hypergradient(theirs, names, seeds, values), "autograd", 1e-6
    if expected is None:
        expected = _torch_finite_differences(theirs, names, seeds, values)
        reference, rtol = "finite differences", 1e-5
    for name, a, b in zip(names, got, expected):
        scale = max(b.abs().item(), 1e-3 * got[0].abs().item())  # beta2's may be ~0
        assert (a - b).abs().item() <= rtol * scale, (name, a.item(), b.item(), reference)
    return reference


@pytest.mark.parametrize("entry, variant", CASES)
def test_tensor_lr_hypergradient(entry, variant):
    _check_hypergradients(entry, variant, {"lr": entry.test_lr})


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_all_tensor_hyperparameters_get_hypergradients(entry):
    """lr, weight_decay and betas as Tensors requiring grad (torch's *_all_hyperparams tests)."""
    hp = {"lr": entry.test_lr}
    if accepts(entry.cls, "weight_decay"):  # Rprop has none
        hp["weight_decay"] = 0.1
    if accepts(entry.cls, "betas"):
        hp |= {"beta1": 0.9, "beta2": 0.99}
    reference = _check_hypergradients(entry, {}, hp)
    # torch.optim differentiates these itself for SGD, Adam and AdamW
    if entry.torch_cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        assert reference == "autograd"


@pytest.mark.parametrize("entry, variant", CASES)
def test_foreach_true_still_differentiable(entry, variant):
    """torch.optim raises on foreach=True with differentiable=True (except SGD); optimlab takes
    the differentiable path whatever ``foreach`` says."""
    ours, _ = _builders(entry, variant)
    with_foreach, _ = _builders(entry, {**variant, "foreach": True})
    seed_keys, inputs = _inputs(entry, variant)
    a = jacobian(_jacobian_fn(ours, entry.test_lr, seed_keys, [], False), inputs)
    b = jacobian(_jacobian_fn(with_foreach, entry.test_lr, seed_keys, [], False), inputs)
    for x, y in zip(a[0], b[0]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("entry, variant", CASES)
def test_trajectory_matches_torch_without_graph(entry, variant):
    """differentiable=True on tensors that need no grad: torch.optim's trajectory, 150 steps."""
    problem = Quadratic(maximize=variant.get("maximize", False))
    ours = [p.detach() for p in make_params(problem)]
    theirs = make_params(problem)
    lr = entry.test_lr
    opt = entry.build(two_groups(ours, lr), lr=lr, differentiable=True, **variant)
    ref = entry.build_torch(two_groups(theirs, lr), lr=lr, **variant)
    a, b = drive(opt, ours, problem, 150), drive(ref, theirs, problem, 150)
    assert np.abs(b[-1] - problem.x0).max() > 1e-3
    assert rel_err(a, b) <= tolerance(entry)
    assert all(p.grad_fn is None for p in ours)


# --- flags, errors and grad mode, as torch.optim ------------------------------------------

def _error(build, *args, **kwargs):
    try:
        build(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the type and message are what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize("entry", [p for p in ENTRY_PARAMS if accepts(p.values[0].cls, "fused")])
def test_fused_and_differentiable_is_refused_like_torch(entry):
    params = [torch.zeros(2)]
    ours = _error(entry.build, params, fused=True, differentiable=True)
    theirs = _error(entry.build_torch, params, fused=True, differentiable=True)
    assert ours is not None and ours == theirs


@pytest.mark.parametrize("entry", [p for p in ENTRY_PARAMS if p.values[0].torch_cls
                                   in (torch.optim.Adam, torch.optim.AdamW)])
def test_step_requiring_grad_is_refused_like_torch(entry):
    def step(build):
        p = torch.randn(N, requires_grad=True).clone()
        opt = build([p], differentiable=True)
        p.grad = torch.randn(N)
        opt.step()
        opt.state[p]["step"].requires_grad_(True)
        p.grad = torch.randn(N)
        opt.step()

    ours = _error(step, entry.build)
    assert ours is not None and ours == _error(step, entry.build_torch)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_leaf_and_non_leaf_params_like_torch(entry):
    """A leaf that requires grad cannot be updated in place under autograd (torch's tests
    step a clone); a non-leaf is accepted only with differentiable=True."""
    def leaf_step(build):
        p = torch.randn(N, requires_grad=True)
        opt = build([p], differentiable=True)
        p.grad = torch.randn(N)
        opt.step()

    ours = _error(leaf_step, entry.build)
    assert ours is not None and ours == _error(leaf_step, entry.build_torch)
    non_leaf = [torch.randn(N, requires_grad=True) * 2]
    assert _error(entry.build, non_leaf) == _error(entry.build_torch, non_leaf) == (
        ValueError, "can't optimize a non-leaf Tensor")
    assert _error(entry.build, non_leaf, differentiable=True) is None


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_grad_mode_like_torch(entry):
    """The step records autograd exactly when the optimizer is differentiable, whatever the
    caller's grad mode (torch.optim's ``_use_grad_for_differentiable``)."""
    def recorded(build, differentiable, mode):
        x = torch.randn(N, requires_grad=True)
        p = x.clone() if differentiable else x.detach().clone().requires_grad_(True)
        opt = build([p], differentiable=differentiable)
        g = torch.randn(N, requires_grad=True)
        for grad in (torch.randn(N), g.clone() if differentiable else g.detach()):
            p.grad = grad  # two steps: torch detaches SGD's first momentum buffer
            with mode():
                opt.step()
        (dg,) = torch.autograd.grad(p.sum(), g, allow_unused=True) if p.requires_grad else (None,)
        return dg is not None

    for differentiable, mode in [(True, torch.no_grad), (True, torch.enable_grad),
                                 (False, torch.enable_grad)]:
        ours = recorded(entry.build, differentiable, mode)
        theirs = recorded(entry.build_torch, differentiable, mode)
        assert ours == theirs, (differentiable, mode)
    assert recorded(entry.build, True, torch.no_grad)
    assert not recorded(entry.build, False, torch.enable_grad)



#: entries torch.optim lacks that take ``differentiable=True``: their hypergradient against
#: central differences of optimlab's own meta loss (floats, no graph)
OWN_CASES = [pytest.param(e, v, id=f"{e.name}-{i}") for e in RULE_ENTRIES
             if e.torch_cls is None and accepts(e.cls, "differentiable") for i, v in enumerate(e.variants)]


@pytest.mark.parametrize("entry, variant", OWN_CASES)
def test_tensor_lr_hypergradient_without_a_torch_twin(entry, variant):
    """Schedule-free's group-level schedule (lr_t, max lr, weight sums) read a Tensor ``lr``
    as a float, so ``d loss / d lr`` was None; every such entry now differentiates it."""
    ours, _ = _builders(entry, variant)
    seeds = {}  # no torch first step to line up with: the rule's own state from the start
    lr = torch.tensor(entry.test_lr, requires_grad=True)
    f = _hyper_fn(ours, ["lr"], seeds)
    (got,) = torch.autograd.grad(f(lr), lr, allow_unused=True)
    assert got is not None and got.abs() > 0
    assert torch.autograd.gradcheck(f, (lr,))
    (expected,) = _torch_finite_differences(ours, ["lr"], seeds, [lr])
    assert (got - expected).abs().item() <= 1e-5 * expected.abs().item(), (got.item(), expected.item())
