"""The multi-tensor (``torch._foreach_*``) path against the reference path, over the whole
registry, and the choice between the C kernel, the multi-tensor path and the reference path.

The multi-tensor path is printed from the same traced graph as the C kernel; these tests
compare it with the per-tensor reference path at the fused tests' tolerances, and with
torch.optim in a process where no C compiler can run.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import optimlab
from optimlab import fused
from optimlab.fused.foreach_codegen import _ALLOCATES
from optimlab.fused import foreach
from optimlab._math import abs_, maximum
from optimlab.registry import ELEMENTWISE_ENTRIES as ENTRIES  # the rules with a kernel
from optimlab.registry import TORCH_ENTRIES
from test_fused import _assert_params_and_state, _clone, _rel, group_sums  # the C path's test helpers

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64]
# as tests/test_fused.py: float64 / float32 bounds, a few storage ulps for bf16 / fp16
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.complex64: 1e-5,
       torch.bfloat16: 4 * 2**-8, torch.float16: 4 * 2**-10}


def _cases():
    for entry in ENTRIES:
        variants = list(entry.variants)
        if "bias_correction" in inspect.signature(entry.cls).parameters:
            variants.append({"bias_correction": False})
        for i, variant in enumerate(variants):
            yield pytest.param(entry, variant, id=f"{entry.name}-{i}")


def _params(dtype):
    """Odd sizes, an empty tensor, a transposed one, a strided view, one without a grad."""
    gen = torch.Generator().manual_seed(0)

    def r(*shape):
        real = torch.randn(*shape, 2, generator=gen) if dtype.is_complex else torch.randn(*shape, generator=gen)
        return torch.view_as_complex(real).to(dtype) if dtype.is_complex else real.to(dtype)

    ps = [r(37, 5), r(9, 8).t(), r(0), r(1000), r(3), r(12, 10)[:, ::3]]
    return [p.detach().requires_grad_() for p in ps]


def _forbid_reference(opt):
    def fail(p, h):
        raise AssertionError("the reference path was taken")
    opt.reference_step = fail
    return opt


def _run_pair(make_a, make_b, ps, steps, no_grad=(4,), late=()):
    """``steps`` steps of two optimizers on equal params and gradients; params in ``late``
    get their first gradient halfway (lazy state and step counts differ inside a group)."""
    a, b = ps, _clone(ps)
    oa, ob = make_a(a), make_b(b)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for i, (p, q) in enumerate(zip(a, b)):
            if i in no_grad or (i in late and step < steps // 2):
                p.grad = q.grad = None
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.is_complex():
                g = torch.complex(g, torch.randn(p.shape, generator=gen, dtype=torch.float64))
            g = g.to(p.dtype)
            if step % 2 and p.dim() == 2:
                g = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype).copy_(g)
            p.grad, q.grad = g, g.clone()
        oa.step()
        ob.step()
    return oa, ob


def _assert_same(oa, ob, tol):
    _assert_params_and_state(oa, ob, tol, strides=True)


def _reference(entry_or_cls, **kw):
    def make(ps):
        opt = entry_or_cls.build(ps, **kw) if hasattr(entry_or_cls, "build") else entry_or_cls(ps, **kw)
        for g in opt.param_groups:
            g["fused"], g["foreach"] = False, False
        return opt
    return make


def _foreach(entry_or_cls, **kw):
    def make(ps):
        opt = entry_or_cls.build(ps, **kw) if hasattr(entry_or_cls, "build") else entry_or_cls(ps, **kw)
        for g in opt.param_groups:
            g["fused"], g["foreach"] = None, True
        return _forbid_reference(opt)
    return make


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("entry,variant", list(_cases()))
def test_registry_parity(entry, variant, dtype):
    group_sums(entry, dtype)  # Prodigy: float16 skipped, 10x tolerance (see test_fused)
    kw = {"lr": entry.test_lr, **variant}
    oa, ob = _run_pair(_foreach(entry, **kw), _reference(entry, **kw), _params(dtype), 100, late=(1,))
    assert not fused._plans.get(oa), "foreach=True must not use the C kernel"
    _assert_same(oa, ob, TOL[dtype] * (10 if entry.cls.rule.estimate is not None else 1))


def test_generated_program_is_the_traced_graph_as_foreach_calls():
    """Adam prints as torch's own foreach chain: lerp, mul, addcmul, sqrt, div, add, addcdiv."""
    adam = optimlab.Adam([torch.zeros(1)])
    h = optimlab.engine.hyperparameters(adam.param_groups[0], adam.defaults)
    prog = foreach.program(optimlab.rules.ADAM, h, fused.plan.hkey(h), frozenset(), frozenset())
    calls = [line.split("F._foreach_")[1].split("(")[0] for line in prog.source.splitlines() if "F._foreach_" in line]
    assert calls == ["lerp_", "mul_", "addcmul_", "sqrt", "div_", "add_", "addcdiv_"]
    again = foreach.program(optimlab.rules.ADAM, h, fused.plan.hkey(h), frozenset(), frozenset())
    assert again is prog  # cached per pattern


def test_default_sends_what_the_kernel_refuses_to_foreach():
    """A param with gaps (the kernel needs dense memory) takes the multi-tensor path by
    default and with fused=False; foreach=False gives the reference path."""
    base = torch.randn(10, 10, dtype=torch.float64)
    ps = [base[:, ::2].detach().requires_grad_(), torch.randn(7, dtype=torch.float64, requires_grad=True)]
    for kw in ({}, {"fused": False}):
        oa, ob = _run_pair(lambda p: _forbid_reference(optimlab.Adam(p, lr=0.01, **kw)),
                           _reference(optimlab.Adam, lr=0.01), _clone(ps), 5, no_grad=())
        _assert_same(oa, ob, 1e-12)
    opt = optimlab.Adam(_clone(ps), lr=0.01, foreach=False)
    seen = []
    real = opt.reference_step
    opt.reference_step = lambda p, h: (seen.append(p.shape), real(p, h))
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert (10, 5) in seen


def test_foreach_false_on_the_unfused_path_is_the_reference_path(monkeypatch):
    called = []
    monkeypatch.setattr(foreach, "_Bucket", lambda *a: called.append(a))
    p = torch.randn(4, requires_grad=True)
    p.grad = torch.ones(4)
    optimlab.Adam([p], fused=False, foreach=False).step()
    assert not called


def test_foreach_true_where_impossible_raises():
    p = torch.randn(6, 4).to_sparse().requires_grad_()
    p.grad = torch.randn(6, 4).to_sparse()
    with pytest.raises(RuntimeError, match="foreach=True"):
        optimlab.SGD([p], lr=0.1, foreach=True).step()
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        optimlab.Adam([torch.zeros(2, requires_grad=True)], fused=True, foreach=True)


def test_sparse_grads_are_densified_like_the_reference():
    for cls, kw in [(optimlab.SGD, {"momentum": 0.9}), (optimlab.Adagrad, {})]:
        a = [torch.randn(10, 4, dtype=torch.float64).requires_grad_()]
        b = _clone(a)
        oa, ob = _foreach(cls, lr=0.1, **kw)(a), _reference(cls, lr=0.1, **kw)(b)
        for _ in range(3):
            g = torch.sparse_coo_tensor([[1, 7]], torch.ones(2, 4, dtype=torch.float64), (10, 4),
                                        check_invariants=True)
            a[0].grad, b[0].grad = g, g.clone()
            oa.step()
            ob.step()
        _assert_same(oa, ob, 1e-12)


def test_groups_dtypes_and_devices_are_bucketed():
    """One group with float64, bfloat16 and complex params, and a second group."""
    ps = _params(torch.float64)[:3] + _params(torch.bfloat16)[:3] + _params(torch.complex64)[:2]

    def groups(p):
        return [{"params": p[:5]}, {"params": p[5:], "lr": 0.05, "betas": (0.5, 0.9), "weight_decay": 0.1}]

    oa, ob = _run_pair(lambda p: _foreach(optimlab.AdamW, lr=0.01)(groups(p)),
                       lambda p: _reference(optimlab.AdamW, lr=0.01)(groups(p)), ps, 30, no_grad=())
    for ga, gb in zip(oa.param_groups, ob.param_groups):
        for p, q in zip(ga["params"], gb["params"]):
            real = torch.view_as_real(p).dtype if p.is_complex() else p.dtype
            assert _rel(p, q) <= TOL[real]


def test_hyperparameter_changes_between_steps():
    ps = _params(torch.float64)
    a, b = ps, _clone(ps)
    oa, ob = _foreach(optimlab.SGD, lr=0.1)(a), _reference(optimlab.SGD, lr=0.1)(b)
    for i, change in enumerate([{}, {"weight_decay": 0.1}, {"momentum": 0.9}, {"nesterov": True},
                                {"maximize": True}, {"lr": torch.tensor(0.01)}, {"weight_decay": 0.0}]):
        for o in (oa, ob):
            o.param_groups[0].update(change)
        for p, q in zip(a, b):
            p.grad = torch.full_like(p, 0.5 + i)
            q.grad = p.grad.clone()
        oa.step()
        ob.step()
    _assert_same(oa, ob, 1e-12)


_NO_COMPILER = textwrap.dedent("""
    import json, warnings, torch, optimlab
    from optimlab import fused
    from optimlab.registry import ELEMENTWISE_ENTRIES, TORCH_ENTRIES
    ENTRIES = [e for e in TORCH_ENTRIES if e in ELEMENTWISE_ENTRIES]
    warnings.simplefilter("always")
    out = []
    for entry in ENTRIES:
        for variant in entry.variants:
            gen = torch.Generator().manual_seed(0)
            ps = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in [(17, 3), (40,), (2,)]]
            qs = [p.detach().clone().requires_grad_() for p in ps]
            ours, ref = entry.build(ps, lr=entry.test_lr, **variant), entry.build_torch(qs, lr=entry.test_lr, **variant)
            def forbid(p, h):
                raise AssertionError("reference path")
            ours.reference_step = forbid
            worst = 0.0
            with warnings.catch_warnings(record=True) as caught:
                for step in range(100):
                    for p, q in zip(ps, qs):
                        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                        q.grad = p.grad.clone()
                    ours.step()
                    ref.step()
                    for p, q in zip(ps, qs):
                        worst = max(worst, ((p - q).abs().max() / q.abs().max()).item())
            plans = fused._plans.get(ours, {})
            kernel_errors = [e for plan in plans.values() for e in plan.kernel_errors]
            out.append([entry.name, variant, worst, bool(kernel_errors) or not plans,
                        [str(w.message) for w in caught]])
    print(json.dumps(out, default=str))
""")


@pytest.mark.slow
def test_no_compiler_takes_foreach_and_equals_torch(tmp_path):
    """With OPTIMLAB_CC pointing nowhere, every registry entry and variant steps on the
    multi-tensor path (never the reference path) and follows torch.optim for 100 steps."""
    env = {**os.environ, "OPTIMLAB_CC": str(tmp_path / "no-such-cc"), "OPTIMLAB_CACHE": str(tmp_path / "cache"),
           "OPTIMLAB_CXX": str(tmp_path / "no-such-cxx")}
    r = subprocess.run([sys.executable, "-c", _NO_COMPILER], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    assert len(rows) == sum(len(e.variants) for e in TORCH_ENTRIES if e.cls.rule.elementwise)
    for name, variant, worst, no_kernel, warned in rows:
        assert no_kernel, (name, variant)
        assert worst <= 1e-9, (name, variant, worst)
    # one warning for the process (it names the failure and the paths taken), not one per
    # class, variant or kernel
    shown = [w for row in rows for w in row[4] if w.startswith("optimlab")]
    assert len(shown) == 1 and "no C kernels" in shown[0] and "could not run" in shown[0], shown
    assert "torch's fused kernels" in shown[0] and "multi-tensor path" in shown[0], shown
    assert not os.path.exists(tmp_path / "cache") or not any(f.endswith(".so") for f in os.listdir(tmp_path / "cache"))


def _odd(g, s, h):
    """Exercises every printed form: scalar / x, scalar ** x, scalar - x, max with a scalar,
    and two state buffers that swap (a copy cycle at the end of the program)."""
    s.step = s.step + 1
    a = 2.0 / (abs_(g) + 1.0)
    b = 0.5 ** abs_(g)
    c = 1.0 - g
    s.x, s.y = s.y, s.x + a / s.step
    return maximum(a, b) * c + maximum(g, 0.1)


class _Odd(optimlab.engine.RuleOptimizer):
    rule = optimlab.rules.Rule(_odd, lambda h: {"x": 0.5, "y": -0.25}, {"step": 0.0})

    def __init__(self, params, lr=0.01, foreach=None, fused=None):
        super().__init__(params, dict(lr=lr, weight_decay=0.0, maximize=False, foreach=foreach, fused=fused))


def test_every_printed_form_and_a_copy_cycle():
    ps = _params(torch.float64)
    oa, ob = _run_pair(lambda p: _forbid_reference(_Odd(p, foreach=True)),
                       lambda p: _Odd(p, foreach=False, fused=False), ps, 7)
    _assert_same(oa, ob, 1e-12)
    h = optimlab.engine.hyperparameters(oa.param_groups[0], oa.defaults)
    source = foreach.program(_Odd.rule, h, fused.plan.hkey(h), frozenset(), frozenset()).source
    assert "_full(" in source and "_foreach_clone(" in source and "F._foreach_pow(c[" in source


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_chunked_equals_unchunked(entry, dtype, monkeypatch):
    """The program run chunk by chunk (tensors cut into flat slices, small ones gathered)
    gives the same values as one run over the whole group: every op is element-wise."""
    def make(chunk):
        monkeypatch.setattr(foreach, "CHUNK", chunk)
        gen = torch.Generator().manual_seed(0)
        shapes = [(2500,), (50, 60), (7,), (300,), (40, 70)]
        ps = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        ps[4] = ps[4].t()  # not contiguous: never cut
        return [p.detach().requires_grad_() for p in ps]

    runs = []
    real = foreach._Bucket._elements
    for chunk in (1000, 2**30):
        ps = make(chunk)
        calls = []
        monkeypatch.setattr(foreach._Bucket, "_elements", lambda self, *a: calls.append(1) or real(self, *a))
        opt = _foreach(entry, lr=entry.test_lr)(ps)
        gen = torch.Generator().manual_seed(1)
        for step in range(10):
            for i, p in enumerate(ps):
                late = i == 3 and step < 5  # a different step count: the group splits
                p.grad = None if late else torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
        runs.append((ps, opt, len(calls)))
    (a, oa, ca), (b, ob, cb) = runs
    # the small CHUNK really cut the group, unless the program writes only in place (plain
    # SGD, momentum in float32, ASGD before averaging: nothing to keep in cache, runs whole)
    buckets = [b for plan in foreach._plans[oa].values() for b in plan.buckets]
    one_op = [not b.copied and all(not _ALLOCATES.search(src) and src.count("\n    ") == 2
                                   for _, src in b.prog.variants.values()) for b in buckets]
    assert ca == cb if all(one_op) else ca > cb
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for k, v in oa.state[p].items():
            if torch.is_tensor(v):
                assert torch.equal(v, ob.state[q][k]), k


def test_step_counts_written_by_hand_are_read():
    """The path remembers the step counts it wrote; one written since (in place) is read again."""
    ps = [torch.randn(10).requires_grad_() for _ in range(3)]
    qs = _clone(ps)
    oa, ob = _foreach(optimlab.Adam)(ps), _reference(optimlab.Adam)(qs)
    for step in range(6):
        for p, q in zip(ps, qs):
            p.grad = torch.full_like(p, 0.1 * step + 0.5)
            q.grad = p.grad.clone()
        if step == 3:
            for o, t in ((oa, ps[1]), (ob, qs[1])):
                o.state[t]["step"].fill_(40.0)
        oa.step()
        ob.step()
    assert oa.state[ps[1]]["step"].item() == 43.0
    _assert_same(oa, ob, 1e-6)


@pytest.mark.parametrize("name", ["RAdam", "ASGD"])
def test_scalar_where_prints_only_the_branch_it_takes(name):
    """A ``where`` on a scalar condition (RAdam's rectification, ASGD's averaging) is decided
    before the per-element program runs: each pattern's program has the other branch's
    operations dead and copies nothing for the select."""
    opt = getattr(optimlab, name)([torch.zeros(1)])
    h = optimlab.engine.hyperparameters(opt.param_groups[0], opt.defaults)
    prog = foreach.program(opt.rule, h, fused.plan.hkey(h), frozenset(), frozenset())
    assert len(prog.conditions) == 1 and set(prog.variants) == {(True,), (False,)}
    taken, other = (src.count("F._foreach_") for _, src in (prog.variants[(True,)], prog.variants[(False,)]))
    assert taken > other and "_select" not in prog.source and "_clone" not in prog.source
    if name == "RAdam":  # unrectified: no second-moment root at all
        assert "sqrt" not in prog.variants[(False,)][1] and "sqrt" in prog.variants[(True,)][1]
