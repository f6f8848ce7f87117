"""The element-wise rule language: ``sign``, ``minimum``, ``clamp``, comparisons and
``where`` (per element, and on a scalar condition such as RAdam's ``rho_t > 5``).

Each function equals torch on NaN, infinities and signed zeros: on Python floats (the
reference path's scalars) against torch on 0-dim tensors, and inside a rule on all five
dtypes on each of the three paths (the generated C kernel, the generated multi-tensor
program, the per-tensor reference path) against torch's own ops applied by the test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import optimlab
from optimlab import _math, fused
from optimlab._math import as_default_dtype, clamp, maximum, minimum, sign, sqrt, where
from optimlab.engine import RuleOptimizer
from optimlab.fused.trace import TraceError, trace
from optimlab.rules import Rule

NAN, INF = math.nan, math.inf
EDGES = [0.0, -0.0, NAN, INF, -INF, 1.5, -2.0, 0.25, -0.25, 3.0, -1.0, 1e-40]
LO, HI, BOUND = -1.0, 3.0, 0.25
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64]
CMP = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b,
       "le": lambda a, b: a <= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}


def _same(a, b, signed_zeros=True) -> bool:
    """Equal values, NaN where NaN; with ``signed_zeros`` also the sign of zeros."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if not torch.equal(a.isnan(), b.isnan()):
        return False
    keep = ~a.isnan()
    if not torch.equal(a[keep], b[keep]):
        return False
    return not signed_zeros or torch.equal(torch.signbit(a[keep]), torch.signbit(b[keep]))


@pytest.mark.parametrize("x", EDGES, ids=repr)
def test_float_functions_equal_torch(x):
    t = torch.tensor(x, dtype=torch.float64)
    assert _same(sign(x), torch.sign(t))
    for lo, hi in [(LO, HI), (0.0, -0.0), (-0.0, 0.0), (1.0, -1.0), (None, HI), (LO, None)]:
        assert _same(clamp(x, lo, hi), torch.clamp(t, lo, hi)), (lo, hi)
    for y in EDGES:
        u = torch.tensor(y, dtype=torch.float64)
        assert _same(minimum(x, y), torch.minimum(t, u), signed_zeros=False), y
        assert _same(maximum(x, y), torch.maximum(t, u), signed_zeros=False), y
        for op, f in CMP.items():
            assert f(x, y) == bool(f(t, u)), (op, y)
            assert where(f(x, y), x, y) is (x if bool(f(t, u)) else y)
    # sqrt of a negative number is NaN (as torch and C), not an exception: a where's
    # other branch may compute it
    assert math.isnan(sqrt(-1.0)) and _same(sqrt(x) if x == x and x >= 0 else NAN, torch.sqrt(t))


def test_where_on_tensors_needs_a_tensor_branch():
    g = torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert torch.where(g > 0, g, 0.5).dtype == where(g > 0, g, 0.5).dtype == torch.float64
    with pytest.raises(TypeError, match="tensor branch"):
        where(g > 0, 1.2, 0.5)


# ---------------------------------------------------------------- inside a rule, three paths
OUTPUTS = ["sign", "minimum", "maximum", "minimum_number", "clamp", "clamp_min", "clamp_max",
           "clamp_zeros", "clamp_zeros_swapped",
           *[f"where_{op}" for op in CMP], "where_scalar_hp", "select", "select_number",
           "scalar_where", "rounded"]
SIGNED_ZEROS_UNDEFINED = {"minimum", "maximum", "minimum_number"}  # torch's own differ by loop


def _probe(p, g, s, h):
    """Writes each function of the language applied to (g, p) into a state buffer; p stays."""
    s.step = s.step + 1
    s.sign = sign(g)
    s.minimum = minimum(g, p)
    s.maximum = maximum(g, p)
    s.minimum_number = minimum(g, h.bound)
    s.clamp = clamp(g, h.lo, h.hi)
    s.clamp_min = clamp(g, h.lo)
    s.clamp_max = clamp(g, None, h.hi)
    s.clamp_zeros = clamp(g, -0.0, 0.0)  # ties at signed zeros keep g
    s.clamp_zeros_swapped = clamp(g, 0.0, -0.0)
    s.where_gt = where(g > p, g, 0.5)
    s.where_ge = where(g >= p, p, g)
    s.where_lt = where(g < p, -0.0, g)
    s.where_le = where(p <= g, g, p)  # reflected
    s.where_eq = where(g == p, 7.0, p)
    s.where_ne = where(g != 0.25, g, -1.0)
    s.where_scalar_hp = where(g < h.bound, g, h.hi)
    late = s.step > 2  # a scalar condition: one branch for the whole tensor
    s.select = where(late, g, p)
    s.select_number = where(late, g, 7.0)
    # scalar-only select; the branch it does not take is NaN (sqrt of a negative number)
    s.scalar_where = g * where(s.step <= 2, sqrt(2 - s.step), 3.0)
    s.rounded = as_default_dtype(g) * as_default_dtype(1 / (2 + s.step))  # per element, scalar
    return p


class Probe(RuleOptimizer):
    rule = Rule(_probe, lambda h: dict.fromkeys(OUTPUTS, 0.0), {"step": 0.0}, whole_step=True)

    def __init__(self, params, lo=LO, hi=HI, bound=BOUND, foreach=None, fused=None):
        super().__init__(params, dict(lr=0.0, lo=lo, hi=hi, bound=bound, maximize=False,
                                      foreach=foreach, fused=fused))


def _expected(p, g, step) -> dict:
    """torch's own ops on the compute-type values (float32 for the half types)."""
    late = step > 2
    return {
        "sign": torch.sign(g), "minimum": torch.minimum(g, p), "maximum": torch.maximum(g, p),
        "minimum_number": torch.minimum(g, torch.tensor(BOUND, dtype=g.dtype)),
        "clamp": torch.clamp(g, LO, HI), "clamp_min": torch.clamp(g, min=LO), "clamp_max": torch.clamp(g, max=HI),
        "clamp_zeros": torch.clamp(g, -0.0, 0.0), "clamp_zeros_swapped": torch.clamp(g, 0.0, -0.0),
        "where_gt": torch.where(g > p, g, 0.5), "where_ge": torch.where(g >= p, p, g),
        "where_lt": torch.where(g < p, -0.0, g), "where_le": torch.where(p <= g, g, p),
        "where_eq": torch.where(g == p, 7.0, p), "where_ne": torch.where(g != 0.25, g, -1.0),
        "where_scalar_hp": torch.where(g < BOUND, g, HI),
        "select": g if late else p, "select_number": g if late else torch.full_like(g, 7.0),
        "scalar_where": g * (3.0 if late else math.sqrt(2 - step)),
        "rounded": g.to(torch.get_default_dtype()).to(g.dtype) * torch.tensor(1 / (2 + step)).item(),
    }


def _inputs(dtype):
    """Every pair of edge values (tiled: vectorised loops and their tails), and a short tensor."""
    pairs = list(itertools.product(EDGES, EDGES)) * 3
    g = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    p = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    short_g, short_p = g[7:13].clone(), p[7:13].clone()
    out = []
    for gg, pp in [(g, p), (short_g, short_p)]:
        if dtype.is_complex:
            gg, pp = torch.view_as_complex(gg.reshape(-1, 2)), torch.view_as_complex(pp.reshape(-1, 2))
        out.append((pp.to(dtype), gg.to(dtype)))
    return out


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


PATHS = {"kernel": dict(fused=None), "foreach": dict(fused=False, foreach=True),
         "reference": dict(fused=False, foreach=False)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_function_in_a_rule_equals_torch(dtype, path):
    inputs = _inputs(dtype)
    params = [p.clone().requires_grad_() for p, _ in inputs]
    opt = Probe(params, **PATHS[path])
    if path != "reference":
        opt.reference_step = lambda p, h: pytest.fail("the reference path was taken")
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16, torch.complex32) else None
    for step in (1, 2, 3):
        for q, (_, g) in zip(params, inputs):
            q.grad = g.clone()
        opt.step()
        for q, (p0, g) in zip(params, inputs):
            pr, gr = _real(p0), _real(g)
            if compute is not None:
                pr, gr = pr.to(compute), gr.to(compute)
            expected = _expected(pr, gr, step)
            state = opt.state[q]
            assert _same(_real(q.detach()), _real(p0))
            for key in OUTPUTS:
                want = expected[key].to(_real(p0).dtype)
                assert _same(_real(state[key]), want, key not in SIGNED_ZEROS_UNDEFINED), (key, step)
    if path == "kernel":
        plans = fused._plans.get(opt, {})
        assert plans and all(pl.buckets and not pl.reference for pl in plans.values())


def test_masks_only_select():
    """A comparison is a mask for where(); arithmetic on it, a where without one, or an
    ``if`` on it cannot be traced (the reference path would silently use a bool)."""
    probe = Probe([torch.zeros(1)])
    h = optimlab.engine.hyperparameters(probe.param_groups[0], probe.defaults)

    def arithmetic(p, g, s, h):
        return p + (g > 0) * g

    def no_mask(p, g, s, h):
        return where(g, p, g)

    def branch(p, g, s, h):
        return p if s.step > 2 else g

    for fn in (arithmetic, no_mask, branch):
        with pytest.raises(TraceError):
            trace(Rule(fn, lambda h: {}, {"step": 0.0}, whole_step=True), h, frozenset())
    # a hyperparameter against the literal 0 is still a Python guard (in the kernel's cache key)
    assert (trace(Rule(lambda p, g, s, h: p if h.bound > 0 else g, lambda h: {}, whole_step=True),
                  h, frozenset()).elem_outputs["param"].op == "ein")


def test_math_module_exports():
    assert {"sign", "minimum", "clamp", "where", "maximum", "sqrt", "abs_"} <= set(vars(_math))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_sign_programs_on_the_multi_tensor_path_round_as_the_reference_path(dtype):
    """Lion's sign(beta1 m + (1 - beta1) g): a fused lerp there would be an ulp off, enough to
    flip a sign near 0, so the multi-tensor program is printed op by op: bit-equal params."""
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(257, generator=gen).to(dtype).requires_grad_() for _ in range(3)]
    b = [p.detach().clone().requires_grad_() for p in a]
    oa = optimlab.Lion(a, lr=1e-2, betas=(0.95, 0.98), foreach=True, fused=False)
    ob = optimlab.Lion(b, lr=1e-2, betas=(0.95, 0.98), foreach=False, fused=False)
    oa.reference_step = lambda p, h: pytest.fail("the reference path was taken")
    for _ in range(100):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            q.grad = p.grad.clone()
        oa.step()
        ob.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q) and torch.equal(oa.state[p]["exp_avg"], ob.state[q]["exp_avg"])
