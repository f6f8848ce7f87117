"""torch's fused kernels as a backend (:mod:`optimlab.fused.torch_kernels`): every registry
entry and variant whose rule and flags match one is equal to the reference path, at the
multi-tensor tests' tolerances, and the kernel (not the multi-tensor path) took the step."""

from __future__ import annotations

import inspect

import pytest
import torch

from optimlab.fused import foreach, torch_kernels
from optimlab.registry import RULE_ENTRIES
from optimlab.rules.base import hyperparameters

from test_foreach import TOL
from test_fused import _assert_params_and_state

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.complex64]


def _cases():
    for entry in RULE_ENTRIES:
        variants = list(entry.variants)
        if "bias_correction" in inspect.signature(entry.cls).parameters:
            variants.append({"bias_correction": False})
        for i, variant in enumerate(variants):
            yield pytest.param(entry, variant, id=f"{entry.name}-{i}")


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(37, 5), (1000,), (3,), (0,)]
    if dtype.is_complex:
        return [torch.randn(*s, dtype=dtype, generator=gen).requires_grad_() for s in shapes]
    return [torch.randn(*s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def _matches(opt) -> bool:
    h = hyperparameters(opt.param_groups[0], opt.defaults)
    h.grad_scale = None
    match = torch_kernels.MATCHES.get(opt.rule.fn)
    return match is not None and match(h) is not None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("entry, variant", _cases())
def test_equal_to_reference_path(entry, variant, dtype, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_DISABLE_FUSED", "1")  # as without a compiler
    monkeypatch.setattr(torch_kernels, "MIN_NUMEL", 0)  # small tensors here: the kernel takes all
    ps, qs = _params(dtype), _params(dtype)
    ours = entry.build(ps, lr=entry.test_lr, **variant)
    ref = entry.build(qs, lr=entry.test_lr, foreach=False, **variant)
    if not _matches(ours):
        pytest.skip("no torch kernel for this rule and these flags")
    low_sgd = ours.rule.fn is torch_kernels.rules.SGD.fn and dtype in (torch.float16, torch.bfloat16)
    real_step = foreach.step
    took = []
    monkeypatch.setattr(foreach, "step", lambda o, g, params, h, vouch=None: (o is ours and took.extend(params)) or real_step(o, g, params, h, vouch))
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, dtype=dtype, generator=gen)
            p.grad, q.grad = g, g.clone()
        ours.step()
        ref.step()
    assert bool(took) == low_sgd  # the torch kernel took every param, except where excluded
    _assert_params_and_state(ours, ref, TOL[dtype])


def test_explicit_flags_keep_their_path(monkeypatch):
    """``fused=False`` / ``foreach=True`` are the user's choice: the torch kernel is not used."""
    monkeypatch.setenv("OPTIMLAB_DISABLE_FUSED", "1")
    calls = []
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(1))
    from optimlab import Adam
    for flags in ({"fused": False}, {"foreach": True}):
        ps = _params(torch.float32)
        for p in ps:
            p.grad = torch.ones_like(p)
        Adam(ps, **flags).step()
    assert not calls


def test_small_params_take_the_multi_tensor_path(monkeypatch):
    """Below MIN_NUMEL elements the multi-tensor path steps the param (torch's kernel costs
    more per tensor); from MIN_NUMEL on, torch's kernel. The split is cached per group, and
    decided again when a param's storage changes; a grad laid out otherwise is left out."""
    monkeypatch.setenv("OPTIMLAB_DISABLE_FUSED", "1")
    monkeypatch.setattr(torch_kernels, "MIN_NUMEL", 64)  # the default, 0, sends every size
    from optimlab import Adam
    n = torch_kernels.MIN_NUMEL
    ps = [torch.zeros(n, requires_grad=True), torch.zeros(n - 1, requires_grad=True)]
    took = []
    real = foreach.step
    monkeypatch.setattr(foreach, "step", lambda o, g, params, h, vouch=None: took.append(list(params)) or real(o, g, params, h, vouch))
    opt = Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.step()
    assert [[t is ps[1] for t in params] for params in took] == [[True], [True]]
    assert opt.state[ps[0]]["step"].item() == 2
    part = torch_kernels._partitions[opt][id(opt.param_groups[0])]
    ps[0].data = torch.zeros(n - 1)  # smaller now, new storage: decided again
    ps[0].grad = torch.ones_like(ps[0])
    opt.state[ps[0]].clear()
    opt.step()
    assert torch_kernels._partitions[opt][id(opt.param_groups[0])] is not part
    assert [t is ps[0] for t in took[-1]] == [True, False]
    ps[0].data, ps[0].grad = torch.zeros(n), torch.ones(2 * n)[::2]  # a strided grad: not taken
    opt.state[ps[0]].clear()
    opt.step()
    assert any(t is ps[0] for t in took[-1])


def test_step_counters_written_by_hand_or_apart(monkeypatch):
    """The step counters are bumped from the value this path last wrote while their version
    counters hold; one written by hand, or a param that stepped apart from the others,
    is read again: every counter and trajectory stays torch's."""
    monkeypatch.setenv("OPTIMLAB_DISABLE_FUSED", "1")  # as without a compiler
    from optimlab import Adam
    ps, qs = _params(torch.float64), _params(torch.float64)
    ours, ref = Adam(ps, lr=0.01), torch.optim.Adam(qs, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for step in range(8):
        for i, (p, q) in enumerate(zip(ps, qs)):
            skip = i == 1 and step in (2, 3)  # steps apart: the counters differ from now on
            p.grad = None if skip else torch.randn(p.shape, generator=gen, dtype=p.dtype)
            q.grad = None if skip else p.grad.clone()
        if step == 5:
            for opt, p in ((ours, ps[0]), (ref, qs[0])):
                opt.state[p]["step"].fill_(40.0)  # by hand
        ours.step()
        ref.step()
    assert torch_kernels._partitions.get(ours), "torch's kernel did not take the step"
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        assert ours.state[p]["step"].item() == ref.state[q]["step"].item()
    assert ours.state[ps[0]]["step"].item() == 43.0 and ours.state[ps[1]]["step"].item() == 6.0
