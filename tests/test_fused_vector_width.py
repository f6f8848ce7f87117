"""The element loop's vector width (``codegen.narrow_vectors``): which kernels ask for
256-bit vectors, and that the width changes no result (every op is element-wise)."""

from __future__ import annotations

import pytest
import torch

import optimlab
from optimlab import fused
from optimlab.fused import codegen
from optimlab.fused import plan as plan_mod
from optimlab.fused.trace import trace

from test_fused import _compiler_works


def _trace(cls, state=frozenset(), **kw):
    opt = cls([torch.zeros(1)], **kw)
    return trace(opt.rule, optimlab.engine.hyperparameters(opt.param_groups[0], opt.defaults), state)


def test_streaming_kernels_are_narrow_and_dense_ones_wide():
    sgd = _trace(optimlab.SGD, lr=0.1)
    momentum = _trace(optimlab.SGD, frozenset({"momentum_buffer"}), lr=0.1, momentum=0.9)
    adam = _trace(optimlab.Adam)
    amsgrad = _trace(optimlab.Adam, amsgrad=True)
    for tr in (sgd, momentum, amsgrad):  # 0, 0, 4 slow ops; 3, 5, 9 streams
        assert codegen.narrow_vectors(tr, "float32") and codegen.narrow_vectors(tr, "float64")
    assert not codegen.narrow_vectors(adam, "float32")  # 4 slow ops, 7 streams
    lion = _trace(optimlab.Lion, frozenset({"exp_avg"}))
    assert not codegen.narrow_vectors(lion, "float32")  # no slow op, but 9 others per 5 streams
    for dtype in ("bfloat16", "float16"):  # conversions are compute: always the native width
        assert not codegen.narrow_vectors(sgd, dtype)
    assert "prefer-vector-width=256" in codegen.generate(sgd, "float32", {})[0]
    assert "prefer-vector-width" not in codegen.generate(adam, "float32", {"step": "float32"})[0]


def _train(make, width, monkeypatch, dtype):
    """Five steps on odd sizes (vector tails) with kernels built narrow or wide."""
    monkeypatch.setattr(codegen, "narrow_vectors", lambda tr, dt: width == 256)
    plan_mod._kernels.clear()
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(n, generator=gen, dtype=dtype).requires_grad_() for n in (1, 37, 1000, 40_003)]
    opt = make(ps)
    for _ in range(5):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
    assert all(plan.buckets and not plan.reference for plan in fused._plans[opt].values())
    plan_mod._kernels.clear()
    return ps, opt


@pytest.mark.skipif(not _compiler_works(), reason="no working C compiler for the fused kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("make", [
    lambda ps: optimlab.SGD(ps, lr=0.1, weight_decay=0.01),
    lambda ps: optimlab.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: optimlab.Adam(ps, lr=0.01, amsgrad=True),
    lambda ps: optimlab.AdamW(ps, lr=0.01),
], ids=["sgd", "nesterov", "amsgrad", "adamw"])
def test_the_width_changes_no_bit(make, dtype, monkeypatch):
    narrow, on = _train(make, 256, monkeypatch, dtype)
    wide, ow = _train(make, 512, monkeypatch, dtype)
    for p, q in zip(narrow, wide):
        assert torch.equal(p, q)
        for k, v in on.state[p].items():
            assert torch.equal(v, ow.state[q][k]), k
