"""Optimizers with their own ``step`` and a torch.optim twin (SparseAdam, LBFGS), driven from the
registry (``OWN_TORCH_ENTRIES``): trajectories, param groups, state_dict both ways, state keys,
bad input. The engine's table-driven tests (test_parity.py, ...) cover rule optimizers only.

How an entry is driven follows its registry fields: ``sparse_grads`` entries get the sparse
gradients of two embedding tables (``F.embedding(..., sparse=True)``); ``needs_closure`` entries
get ``step(closure)`` on a noisy convex quadratic (the noise changes every step, so the
optimizer keeps moving) and on the 20-D Rosenbrock function. Everything is float64.
"""

from __future__ import annotations

import copy
import inspect
import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import optimlab
from conftest import accepts, rel_err
from numpy_reference import Quadratic
from optimlab.registry import OWN_TORCH_ENTRIES

STEPS = 100
TOL = 1e-6


# ----------------------------------------------------------------------------- problems
class _Problem:
    """``params(x)``: fresh leaf tensors equal to ``x`` (a list of tensors; default the start)."""

    def params(self, x=None):
        return [p.detach().clone().requires_grad_(True) for p in (x or self.x0)]


class SparseLookups(_Problem):
    """Two embedding tables (30x4, 20x3); at step t, seeded random rows are looked up and
    pulled towards fixed targets: sum over looked-up rows of ||w_i - target_i||^2 (negated
    for ``maximize``, so a correct maximize still descends on the squared distance)."""

    shapes = ((30, 4), (20, 3))
    closure = False

    def __init__(self, maximize=False):
        g = torch.Generator().manual_seed(0)
        self.x0 = [torch.randn(s, generator=g, dtype=torch.float64) for s in self.shapes]
        self.targets = [torch.randn(s, generator=g, dtype=torch.float64) for s in self.shapes]
        self.sign = -1.0 if maximize else 1.0

    def _indices(self, t):
        g = torch.Generator().manual_seed(1000 + t)
        return [torch.randint(0, s[0], (2, 5), generator=g) for s in self.shapes]

    def objective(self, params, t):
        return self.sign * sum(((F.embedding(i, w, sparse=True) - tg[i]) ** 2).sum()
                               for i, w, tg in zip(self._indices(t), params, self.targets))

    def distance(self, params):
        return float(sum(((p.detach() - tg) ** 2).sum() for p, tg in zip(params, self.targets)))


class _Smooth(_Problem):
    """A smooth objective f over x in R^n, split into tensors of ``shapes`` (default (12,) and
    (2, 4): n = 20); -f for ``maximize``, so a correct maximize still minimises f."""

    closure = True

    def __init__(self, x0, shapes=((12,), (2, 4)), maximize=False):
        self.sign = -1.0 if maximize else 1.0
        sizes = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        self.x0 = [torch.from_numpy(x0[a:b].reshape(s).copy())
                   for a, b, s in zip(sizes[:-1], sizes[1:], shapes)]

    @staticmethod
    def flat(params):
        return torch.cat([p.reshape(-1) for p in params])

    def objective(self, params, t, noise=True):
        return self.sign * self.f(params, t, noise)

    def distance(self, params):
        return float(self.f([p.detach() for p in params], None, noise=False))


class NoisyQuadratic(_Smooth):
    """f_t(x) = 1/2 (x - x*)^T H (x - x*) + xi_t . x: the parity quadratic (condition number
    1e4) with its gradient noise as a linear term, so each step sees a new convex problem."""

    def __init__(self, maximize=False):
        self.q = self.quadratic()
        super().__init__(self.q.x0, self.q.shapes, maximize)

    @staticmethod
    def quadratic():
        return Quadratic()

    def f(self, params, t, noise=True):
        x = self.flat(params)
        d = x - torch.from_numpy(self.q.x_star)
        f = 0.5 * d @ torch.from_numpy(self.q.H) @ d
        return f + torch.from_numpy(self.q.noise[t % len(self.q.noise)]) @ x if noise else f

    def numpy_fg(self, t):
        noise = self.q.noise[t % len(self.q.noise)]
        return lambda x: (self.q.loss(x) + noise @ x, self.q.grad(x, t))


class NoisyQuadratic100(NoisyQuadratic):
    """The same in 100 dimensions (tensors (60,) and (8, 5)), eigenvalues 1e-3..1e1: long
    L-BFGS runs stay comparable with the NumPy reference (rounding differences grow slowly
    here, where the 20-D problem amplifies them ~10x every 25 iterations)."""

    @staticmethod
    def quadratic():
        return Quadratic(dim=100, shapes=((60,), (8, 5)))


class Rosenbrock(_Smooth):
    """The chained 20-D Rosenbrock function from (-1.2, 1, -1.2, 1, ...); minimum 0 at ones."""

    def __init__(self, maximize=False):
        super().__init__(np.tile([-1.2, 1.0], 10), maximize=maximize)

    def f(self, params, t, noise=True):
        x = self.flat(params)
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    def numpy_fg(self, t):
        def fg(x):
            r, s = x[1:] - x[:-1] ** 2, 1 - x[:-1]
            g = np.zeros_like(x)
            g[:-1] += -400 * x[:-1] * r - 2 * s
            g[1:] += 200 * r
            return float((100 * r ** 2 + s ** 2).sum()), g
        return fg


def problems_for(entry, variant):
    maximize = variant.get("maximize", False)
    if entry.sparse_grads:
        return [SparseLookups(maximize)]
    assert entry.needs_closure, f"{entry.name}: no test problem for this kind of entry"
    if variant.get("max_iter", 20) > 4:
        # many iterations per step: Rosenbrock converges within a few steps, while the noisy
        # quadratic would run every iteration of every step (2000 closures per run)
        return [Rosenbrock(maximize)]
    return [NoisyQuadratic(maximize), NoisyQuadratic100(maximize), Rosenbrock(maximize)]


def _groups(entry, params):
    """Two param groups (the second at half the lr) where the class allows them."""
    if entry.needs_closure:  # LBFGS: one group only
        return params
    return [{"params": [params[0]]}, {"params": [params[1]], "lr": entry.test_lr / 2}]


def drive(opt, params, problem, steps, start=0) -> np.ndarray:
    """``steps`` steps; the trajectory of the concatenated parameters, shape (steps, dim)."""
    traj = []
    for t in range(start, start + steps):
        def closure():
            opt.zero_grad()
            loss = problem.objective(params, t)
            loss.backward()
            return loss

        if problem.closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
        traj.append(np.concatenate([p.detach().reshape(-1).numpy() for p in params]))
    return np.array(traj)


def build(entry, variant, params, use_torch=False):
    make = entry.build_torch if use_torch else entry.build
    return make(_groups(entry, params), lr=entry.test_lr, **variant)


CASES = [pytest.param(e, v, p, id=f"{e.name}-{i}-{type(p).__name__}")
         for e in OWN_TORCH_ENTRIES for i, v in enumerate(e.variants) for p in problems_for(e, v)]
ENTRY_PARAMS = [pytest.param(e, id=e.name) for e in OWN_TORCH_ENTRIES]


def test_the_table_holds_both_torch_classes():
    assert {e.torch_cls for e in OWN_TORCH_ENTRIES} >= {torch.optim.SparseAdam, torch.optim.LBFGS}


# ----------------------------------------------------------------------------- parity
def _state_close(ours, theirs, where):
    """Same structure, types and (to TOL) values: tensors, numbers, lists, None."""
    if torch.is_tensor(theirs):
        assert torch.is_tensor(ours), where
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
        if theirs.numel():
            scale = theirs.abs().max().item() or 1.0
            assert (ours - theirs).abs().max().item() <= 10 * TOL * scale, where
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _state_close(a, b, f"{where}[{i}]")
    elif theirs is None:
        assert ours is None, where
    else:
        assert type(ours) is type(theirs), where
        assert ours == pytest.approx(theirs, rel=10 * TOL), where


@pytest.mark.parametrize("entry, variant, problem", CASES)
def test_trajectory_and_state_match_torch(entry, variant, problem):
    ours, theirs = problem.params(), problem.params()
    opt, ref = build(entry, variant, ours), build(entry, variant, theirs, use_torch=True)
    a, b = drive(opt, ours, problem, STEPS), drive(ref, theirs, problem, STEPS)
    # the run is meaningful: it descends and moves, over many of its steps
    assert problem.distance(theirs) < problem.distance(problem.params())
    assert np.abs(b[-1] - b[0]).max() > 1e-3
    assert (np.abs(np.diff(b, axis=0)).max(axis=1) > 0).sum() >= 5
    assert rel_err(a, b) <= TOL
    s_ours, s_theirs = opt.state_dict()["state"], ref.state_dict()["state"]
    assert s_ours.keys() == s_theirs.keys()
    for i in s_theirs:
        assert list(s_ours[i]) == list(s_theirs[i])
        for key in s_theirs[i]:
            _state_close(s_ours[i][key], s_theirs[i][key], f"state[{i}][{key!r}]")


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_param_groups_match_torch(entry):
    for variant in entry.variants:
        for problem in problems_for(entry, variant):
            opt = build(entry, variant, problem.params())
            ref = build(entry, variant, problem.params(), use_torch=True)
            ahead = _ahead_of_torch(entry)
            assert {k: v for k, v in opt.defaults.items() if k not in ahead} == ref.defaults
            for ours, theirs in zip(opt.param_groups, ref.param_groups, strict=True):
                assert {k: v for k, v in ours.items() if k != "params" and k not in ahead} == \
                    {k: v for k, v in theirs.items() if k != "params"}


def _ahead_of_torch(entry) -> set:
    """Arguments optimlab takes that the installed torch's class does not have yet (LBFGS's
    ``maximize`` before torch 2.14), with their defaults."""
    ours = inspect.signature(entry.cls).parameters
    return set(ours) - set(inspect.signature(entry.torch_cls).parameters)


# ------------------------------------------------------------------------- state_dict
BEFORE, AFTER = 30, 30


def _interrupted(entry, variant, problem, save_torch, load_torch, transform=lambda sd: sd):
    """BEFORE steps with one implementation, its state_dict (through ``transform``) into a
    fresh optimizer of the other, AFTER more steps. Returns (resumed, uninterrupted run of
    the loading implementation)."""
    params = problem.params()
    first = build(entry, variant, params, save_torch)
    drive(first, params, problem, BEFORE)
    sd = transform(first.state_dict())
    resumed_params = problem.params(params)
    second = build(entry, variant, resumed_params, load_torch)
    second.load_state_dict(sd)
    resumed = drive(second, resumed_params, problem, AFTER, start=BEFORE)
    straight_params = problem.params()
    straight = build(entry, variant, straight_params, load_torch)
    return resumed, drive(straight, straight_params, problem, BEFORE + AFTER)[BEFORE:]


def _through_torch_save(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("entry, variant, problem", CASES)
def test_state_dict_round_trip(entry, variant, problem):
    for transform in (copy.deepcopy, _through_torch_save):
        resumed, uninterrupted = _interrupted(entry, variant, problem, False, False, transform)
        np.testing.assert_array_equal(resumed, uninterrupted)


@pytest.mark.parametrize("direction", ["torch->optimlab", "optimlab->torch"])
@pytest.mark.parametrize("entry, variant, problem", CASES)
def test_state_dict_loads_across(entry, variant, problem, direction):
    save_torch = direction.startswith("torch")
    resumed, _ = _interrupted(entry, variant, problem, save_torch, not save_torch)
    _, same_side = _interrupted(entry, variant, problem, save_torch, save_torch)
    assert rel_err(resumed, same_side) <= TOL


def _layout(value):
    if torch.is_tensor(value):
        return ("tensor", value.dtype, tuple(value.shape))
    if isinstance(value, list):
        return ("list", [_layout(v) for v in value])
    return type(value).__name__


@pytest.mark.parametrize("entry, variant, problem", CASES)
def test_state_keys_and_types_match_torch(entry, variant, problem):
    ours, theirs = problem.params(), problem.params()
    opt, ref = build(entry, variant, ours), build(entry, variant, theirs, use_torch=True)
    for steps in (0, 1, 2):
        drive(opt, ours, problem, steps)
        drive(ref, theirs, problem, steps)
        layout = [{i: {k: _layout(v) for k, v in st.items()} for i, st in o.state_dict()["state"].items()}
                  for o in (opt, ref)]
        assert layout[0] == layout[1], f"after {steps} more step(s)"


# -------------------------------------------------------------------------- bad input
#: argument -> bad values (torch rejects each); the range our message must name
BAD = {"lr": ([-1.0, -1e-3], r"[>]=?\s*0"), "eps": ([-1.0], r">=?\s*0"),
       "betas": ([(-0.1, 0.999), (1.0, 0.999), (0.9, 1.0)], r"\[0, 1\)")}
BAD_CASES = [pytest.param(e, arg, v, rng, id=f"{e.name}-{arg}={v}") for e in OWN_TORCH_ENTRIES
             for arg, (values, rng) in BAD.items() if accepts(e.cls, arg) for v in values]


def _message(make, exc=ValueError, **kwargs):
    with pytest.raises(exc) as info:
        make([torch.zeros(3, requires_grad=True)], **kwargs)
    return str(info.value)


@pytest.mark.parametrize("entry, arg, value, valid_range", BAD_CASES)
def test_bad_hyperparameter_raises_like_torch(entry, arg, value, valid_range):
    ours, theirs = _message(entry.build, **{arg: value}), _message(entry.build_torch, **{arg: value})
    assert ours.startswith(theirs), (ours, theirs)
    assert re.search(valid_range, ours), ours


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_unknown_keyword_and_create_by_name(entry):
    with pytest.raises(TypeError, match="not_a_hyperparameter"):
        optimlab.create(entry.name, [torch.zeros(3, requires_grad=True)], not_a_hyperparameter=1)
    for name in (entry.name, entry.name.upper(), *entry.aliases):
        opt = optimlab.create(name, [torch.zeros(3, requires_grad=True)], lr=0.5)
        assert type(opt) is entry.cls and opt.param_groups[0]["lr"] == 0.5
    assert entry.name in optimlab.names() and entry.name in optimlab.sets()["torch"]
    assert entry.cls is getattr(optimlab, entry.torch_cls.__name__)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_tensor_lr_like_torch(entry):
    assert _message(entry.build, lr=torch.tensor([0.1, 0.2])) == \
        _message(entry.build_torch, lr=torch.tensor([0.1, 0.2]))
    problem = problems_for(entry, {})[0]
    ours, theirs = problem.params(), problem.params()
    opt = entry.build(_groups(entry, ours), lr=torch.tensor(entry.test_lr))
    ref = entry.build_torch(_groups(entry, theirs), lr=torch.tensor(entry.test_lr))
    assert rel_err(drive(opt, ours, problem, 20), drive(ref, theirs, problem, 20)) <= TOL


# ------------------------------------------------------------------ LBFGS: NumPy reference
LBFGS_CASES = [p for p in CASES if p.values[0].torch_cls is torch.optim.LBFGS]


@pytest.mark.parametrize("entry, variant, problem", LBFGS_CASES)
def test_lbfgs_matches_the_numpy_reference(entry, variant, problem):
    """tests/numpy_reference.py's L-BFGS, written from Nocedal & Wright (Algorithms 7.4,
    7.5, 3.5, 3.6) with minFunc's choices, gives the same trajectory, over a horizon of
    iterations: NumPy's and torch's summation orders differ by 1e-16, and L-BFGS amplifies
    such differences (on the 20-D noisy quadratic tenfold every ~25 iterations), so 60
    iterations are compared on the 20-D quadratic, 100 on the 100-D one and 40 on Rosenbrock
    (worst errors measured: 4e-12, 2.5e-10). (torch itself matches bit for bit over 100 steps
    of any length: test_trajectory_and_state_match_torch.)"""
    from numpy_reference import lbfgs_step

    iterations = {Rosenbrock: 40, NoisyQuadratic100: 100}.get(type(problem), 60)
    steps = max(1, iterations // variant.get("max_iter", 20))
    params = problem.params()
    opt = build(entry, variant, params)
    ours = drive(opt, params, problem, steps)
    x, state, ref = problem.flat(problem.x0).numpy(), {}, []
    for t in range(steps):
        # maximize on -f is minimising f, the function numpy_fg gives
        x = lbfgs_step(problem.numpy_fg(t), x, state, lr=entry.test_lr,
                       **{k: v for k, v in variant.items() if k != "maximize"})
        ref.append(x)
    assert np.abs(ref[-1] - problem.flat(problem.x0).numpy()).max() > 1e-2
    assert rel_err(ours, np.array(ref)) <= TOL


def test_lbfgs_strong_wolfe_solves_rosenbrock():
    problem = Rosenbrock()
    params = problem.params()
    opt = optimlab.LBFGS(params, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                         tolerance_change=1e-14)
    drive(opt, params, problem, 10)
    np.testing.assert_allclose(problem.flat(params).detach().numpy(), np.ones(20), atol=1e-6)


def test_lbfgs_one_group_closure_and_bad_arguments():
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    groups = [{"params": [params[0]]}, {"params": [params[1]]}]
    assert _message(lambda p, **kw: optimlab.LBFGS(groups)) == \
        _message(lambda p, **kw: torch.optim.LBFGS(groups))
    opt = optimlab.LBFGS(params)
    with pytest.raises(TypeError):
        opt.step()  # a closure is required, as in torch
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = ((params[0] - 1) ** 2).sum() + ((params[1] + 2) ** 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        opt.step(closure)
    assert seen and all(seen)  # the closure always runs with grad enabled
    assert list(opt.state) == [params[0]]  # the global state lives under the first parameter
    for bad, name in ((dict(max_iter=0), "max_iter"), (dict(history_size=0), "history_size"),
                      (dict(tolerance_grad=-1.0), "tolerance_grad"),
                      (dict(line_search_fn="backtracking"), "strong_wolfe")):
        assert name in _message(optimlab.LBFGS, **bad)


@pytest.mark.parametrize("variant", [{"max_iter": 3}, {"max_iter": 4, "line_search_fn": "strong_wolfe"}],
                         ids=["fixed-step", "strong-wolfe"])
@pytest.mark.parametrize("problem_cls", [NoisyQuadratic, Rosenbrock])
def test_lbfgs_maximize_runs_the_search_on_the_negated_loss(variant, problem_cls):
    """``maximize=True`` (keyword-only, as torch >= 2.14; taken on any torch) on -f is L-BFGS
    minimising f, bit for bit: the search sees -(-f) and -(-grad f), which negation keeps
    exact. ``step`` still returns the closure's own loss. (Against torch.optim.LBFGS itself:
    the registry's maximize variants, where the installed torch has the argument.)"""
    maximizing, minimizing = problem_cls(maximize=True), problem_cls()
    up, down = maximizing.params(), minimizing.params()
    opt_up = optimlab.LBFGS(up, lr=0.5, maximize=True, **variant)
    opt_down = optimlab.LBFGS(down, lr=0.5, **variant)
    a, b = drive(opt_up, up, maximizing, 30), drive(opt_down, down, minimizing, 30)
    assert np.abs(b[-1] - b[0]).max() > 1e-2  # it moved, downhill on f
    assert minimizing.distance(down) < minimizing.distance(minimizing.params())
    assert np.array_equal(a, b)
    s_up, s_down = opt_up.state[up[0]], opt_down.state[down[0]]
    assert torch.equal(s_up["prev_flat_grad"], s_down["prev_flat_grad"])
    assert s_up["prev_loss"] == s_down["prev_loss"] and s_up["n_iter"] == s_down["n_iter"]

    def closure(problem, opt, params):
        opt.zero_grad()
        loss = problem.objective(params, 0)
        loss.backward()
        return loss

    returned = opt_up.step(lambda: closure(maximizing, opt_up, up))
    assert returned.item() == -opt_down.step(lambda: closure(minimizing, opt_down, down)).item()
    assert returned.item() < 0  # the closure's -f, not the search's f

    # written where torch writes it: always from torch 2.14 on, before that only when True
    saved = opt_up.state_dict()
    assert saved["param_groups"][0]["maximize"] is True
    torch_keys = set(torch.optim.LBFGS(down, **variant).state_dict()["param_groups"][0])
    assert set(opt_down.state_dict()["param_groups"][0]) == torch_keys
    fresh = optimlab.LBFGS(minimizing.params(), **variant)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["maximize"] is True
    fresh.load_state_dict(opt_down.state_dict())
    assert fresh.param_groups[0]["maximize"] is False


def test_lbfgs_with_no_parameters_returns_the_loss():
    """An empty group (torch 2.14: the step is skipped, the closure still runs once)."""
    calls = []
    opt = optimlab.LBFGS([{"params": []}])
    assert opt.step(lambda: calls.append(1) or torch.tensor(3.0)).item() == 3.0
    assert calls == [1] and not opt.state


# ---------------------------------------------------------------------- SparseAdam: errors
def test_sparse_adam_rejects_dense_gradients_and_bad_params_like_torch():
    for cls in (optimlab.SparseAdam, torch.optim.SparseAdam):
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.ones(3)
        with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
            cls([p]).step()
    for bad in (torch.zeros(2, 2).to_sparse().requires_grad_(), torch.zeros(2, dtype=torch.complex128)):
        params = [torch.zeros(2), bad]
        assert _message(lambda _, **kw: optimlab.SparseAdam(params)).startswith(
            _message(lambda _, **kw: torch.optim.SparseAdam(params)))


def test_sparse_adam_refuses_state_of_another_shape_like_torch():
    """A checkpoint of a (3, 3) param loaded for a (2, 2) one: torch's step raises, and so
    does optimlab's (it used to step the param and keep (3, 3) moments)."""
    def step_after_loading(cls):
        a, b = torch.zeros(3, 3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)
        saved = cls([a], lr=0.01)
        a.grad = torch.ones(3, 3).to_sparse()
        saved.step()
        opt = cls([b], lr=0.01)
        opt.load_state_dict(saved.state_dict())
        b.grad = torch.ones(2, 2).to_sparse()
        return _message(lambda _, **kw: opt.step(), RuntimeError), b

    (ours, b), (theirs, _) = step_after_loading(optimlab.SparseAdam), step_after_loading(torch.optim.SparseAdam)
    assert ours == theirs and "incompatible sizes" in ours
    assert not b.detach().any()


def test_sparse_adam_leaves_untouched_rows_and_counts_empty_steps():
    """Rows a gradient never touches keep their value and zero moments; a step whose sparse
    gradient is empty only counts the step, as in torch."""
    ours, theirs = torch.randn(6, 2, dtype=torch.float64), None
    theirs = ours.clone()
    ours.requires_grad_(), theirs.requires_grad_()
    start = ours.detach().clone()
    opts = [optimlab.SparseAdam([ours], lr=0.1), torch.optim.SparseAdam([theirs], lr=0.1)]
    for idx in ([[1, 3]], [[3, 3]], []):
        for w, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            if idx:
                F.embedding(torch.tensor(idx), w, sparse=True).sum().backward()
            else:
                w.grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long),
                                                 torch.zeros(0, 2, dtype=torch.float64), (6, 2))
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    assert torch.equal(ours[[0, 2, 4, 5]], start[[0, 2, 4, 5]])
    assert not torch.equal(ours[[1, 3]], start[[1, 3]])
    state = opts[0].state[ours]
    assert state["step"] == opts[1].state[theirs]["step"] == 3
    assert not state["exp_avg"][[0, 2, 4, 5]].any() and state["exp_avg_sq"][[1, 3]].all()
