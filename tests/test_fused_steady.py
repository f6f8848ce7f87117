"""The fused path's steady state: the C++ helper (``gather.cpp``) that does a step's per-param
bookkeeping in one call, against the same bookkeeping in Python.

Both run the same kernels, so every trajectory here must be *bitwise* equal between the two,
through every event that has to leave the steady state: a grad missing or laid out
differently, a param's storage replaced, the group's list edited, a new state_dict, a
param's state cleared or a buffer rebound by hand, a new flag pattern.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import optimlab
from optimlab import fused
from optimlab.fused import build
from optimlab.fused import plan as plan_mod
from optimlab.registry import ELEMENTWISE_ENTRIES as ENTRIES  # the rules with a kernel

pytestmark = pytest.mark.skipif(
    shutil.which(build.cxx_compiler()[0]) is None or shutil.which(build.compiler()[0]) is None,
    reason="no C/C++ compiler for the fused kernel and its helper")


@pytest.fixture(scope="module")
def helper():
    fn = build.gatherer(compile=True)
    assert fn is not None, "gather.cpp did not build or failed its self-check"
    return fn


def _params(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7 * i + 1, 3, generator=gen, dtype=torch.float64))
            for i in range(n)]


def _grads(ps, gen):
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps]


def _plan(opt, group=0):
    return fused._plans[opt][id(opt.param_groups[group])]


class Twins:
    """The same optimizer twice on equal params: with the helper (``a``) and without (``b``)."""

    def __init__(self, make, monkeypatch):
        self.pa = _params()
        self.pb = [torch.nn.Parameter(p.detach().clone()) for p in self.pa]
        self.a, self.b = make(self.pa), make(self.pb)
        self.monkeypatch = monkeypatch
        self.gen = torch.Generator().manual_seed(1)

    def step(self, grads=None, edit=None) -> bool:
        """One step of both; True if ``a``'s left the steady state (took the Python path)."""
        grads = _grads(self.pa, self.gen) if grads is None else grads
        for p, q, g in zip(self.pa, self.pb, grads):
            p.grad = g
            q.grad = None if g is None else g.clone(memory_format=torch.preserve_format)
        if edit:
            edit(self.a, self.pa)
            edit(self.b, self.pb)
        calls = []
        slow = fused.try_step
        with self.monkeypatch.context() as m:
            m.setattr(fused, "try_step", lambda *a: calls.append(1) or slow(*a))
            self.a.step()
        with self.monkeypatch.context() as m:
            m.setattr(plan_mod, "gatherer", lambda compile: None)
            self.b.step()
        return bool(calls)

    def assert_equal(self):
        pa = [p for g in self.a.param_groups for p in g["params"]]
        pb = [p for g in self.b.param_groups for p in g["params"]]
        assert len(pa) == len(pb)
        for p, q in zip(pa, pb):
            assert torch.equal(p, q)
            sa, sb = self.a.state.get(p, {}), self.b.state.get(q, {})
            assert list(sa) == list(sb)
            for k in sa:
                assert torch.equal(sa[k], sb[k]), k
        for group in self.b.param_groups:
            plan = fused._plans[self.b].get(id(group))
            assert plan is None or plan.gather is None


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in ENTRIES])
def test_steady_state_equals_python_bookkeeping(entry, helper, monkeypatch):
    twins = Twins(lambda ps: entry.build(ps, **entry.variants[-1]), monkeypatch)
    slow = [twins.step() for _ in range(30)]
    twins.assert_equal()
    assert _plan(twins.a).gather is not None
    # step 1 builds the plan (SGD's lazily created momentum buffer: steps 1 and 2);
    # every later step is one helper call
    assert not any(slow[2:]) and slow[0], slow


def _events(twins):
    """(name, grads or None for fresh ones, edit of optimizer and params or None)."""
    grads = _grads(twins.pa, twins.gen)

    def swap(i, g):
        return grads[:i] + [g] + grads[i + 1:]

    def new_data(opt, ps):
        ps[1].data = ps[1].data.clone()

    def append(opt, ps):
        extra = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
        extra.grad = torch.full((5,), 0.5, dtype=torch.float64)
        opt.param_groups[0]["params"].append(extra)

    def new_lr(opt, ps):
        opt.param_groups[0]["lr"] = 0.003

    def no_weight_decay(opt, ps):
        opt.param_groups[0]["weight_decay"] = 0.0

    def reload(opt, ps):
        opt.load_state_dict(opt.state_dict())

    def clear_state(opt, ps):
        opt.state[ps[3]].clear()

    def rebind_buffer(opt, ps):
        opt.state[ps[2]]["exp_avg"] = opt.state[ps[2]]["exp_avg"] * 0.5

    return [
        ("a grad is missing", swap(0, None), None),
        ("a grad in another layout", swap(2, grads[2].t().contiguous().t()), None),
        ("an expanded grad (stride 0)", swap(4, torch.ones(3, dtype=torch.float64).expand(29, 3)), None),
        ("a param's storage replaced", None, new_data),
        ("a param appended to the group", None, append),
        ("a new zero pattern (another kernel)", None, no_weight_decay),
        ("load_state_dict", None, reload),
        ("a param's state cleared", None, clear_state),
        ("a state buffer rebound", None, rebind_buffer),
        ("a new lr (the same kernel)", None, new_lr),
    ]


def test_every_way_out_of_the_steady_state(helper, monkeypatch):
    twins = Twins(lambda ps: optimlab.Adam(ps, lr=0.01, weight_decay=0.1), monkeypatch)
    assert [twins.step() for _ in range(3)] == [True, False, False]
    for name, grads, edit in _events(twins):
        left = twins.step(grads, edit)
        assert left == ("same kernel" not in name), name
        twins.step()  # a plan built without a grad-less param is rebuilt here
        assert not twins.step(), f"not steady again after: {name}"
        twins.assert_equal()
    assert _plan(twins.a).gather is not None


def test_helper_bumps_versions_once_per_step(helper):
    ps = _params()
    opt = optimlab.Adam(ps)
    for step in range(4):
        for p in ps:
            p.grad = torch.ones_like(p)
        before = [p._version for p in ps]
        opt.step()
        assert [p._version - v for p, v in zip(ps, before)] == [1] * len(ps), step
    assert _plan(opt).gather is not None


def test_helper_refuses_what_python_must_handle(helper):
    """Sparse grads and Tensor subclasses are never read by the helper."""
    ps = _params(2)
    opt = optimlab.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    ps[0].grad = torch.ones_like(ps[0]).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()

    class Marked(torch.Tensor):
        pass

    q = torch.zeros(3, dtype=torch.float64).as_subclass(Marked).requires_grad_()
    q.grad = torch.ones(3, dtype=torch.float64)
    opt = optimlab.SGD([q], lr=0.5)
    opt.step()
    assert _plan(opt).gather is None
    assert torch.equal(q.detach().as_subclass(torch.Tensor), torch.full((3,), -0.5, dtype=torch.float64))


def test_step_hooks_and_profiler_still_see_every_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.Adam([p])
    seen = []
    handle = register_optimizer_step_pre_hook(lambda o, a, k: seen.append(o))
    try:
        p.grad = torch.ones(3)
        opt.step()
    finally:
        handle.remove()
    assert seen == [opt]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        p.grad = torch.ones(3)
        opt.step()
    assert "Optimizer.step#Adam.step" in {e.name for e in prof.events()}


def test_the_helper_is_compiled_for_large_groups_only(monkeypatch):
    asked = []
    monkeypatch.setattr(plan_mod, "gatherer", lambda compile: asked.append(compile) or None)
    for n in (3, plan_mod.GATHER_MIN_TENSORS):
        ps = [torch.nn.Parameter(torch.ones(2)) for _ in range(n)]
        for p in ps:
            p.grad = torch.ones(2)
        opt = optimlab.SGD(ps, lr=0.5)
        opt.step()
        assert _plan(opt).gather is None  # the Python bookkeeping, with the same result
        assert all(torch.equal(p, torch.full((2,), 0.5)) for p in ps)
    assert asked == [False, True]


def test_no_cxx_compiler_means_the_python_bookkeeping_without_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMLAB_CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("OPTIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_gather", {})
    monkeypatch.setattr(plan_mod, "_kernels", {})
    ps = _params(plan_mod.GATHER_MIN_TENSORS)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref_opt = optimlab.Adam(ps), optimlab.Adam(ref, fused=False, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            for p, q in zip(ps, ref):
                p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
            opt.step()
            ref_opt.step()
    assert _plan(opt).gather is None and build._gather == {"fn": None}
    assert all(torch.allclose(p, q, rtol=1e-12, atol=0) for p, q in zip(ps, ref))
