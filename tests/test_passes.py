"""Generated passes (optimlab.fused.passes) == the per-tensor reference path, for every rule
with reductions or matrix products (and Prodigy's group-level estimate), every registry
variant, float64/float32/bfloat16/float16, over many steps.

Both optimizers see the same gradients; the reference one runs with
``OPTIMLAB_DISABLE_FUSED=1`` (the reference path). The passes run the traced graph of the
same rule function, so the only differences are where sums are taken in double (the
reference takes norms in the tensor's dtype) and ``sqrt``'s last bit.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import optimlab
from optimlab.fused import passes, passes_eval, passes_torch
from optimlab.registry import ENTRIES

NAMES = ("lamb", "lars", "adafactor", "muon", "prodigy")
CASES = [pytest.param(e, v, id=f"{e.name}-{i}") for e in ENTRIES if e.name in NAMES
         for i, v in enumerate(e.variants)]
DTYPES = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
STEPS = 60


def _shapes(entry):
    if entry.matrices_only:
        return [(6, 4), (3, 5), (6, 4), (5, 5)]
    return [(6, 4), (7,), (3, 5), (2, 3, 4), (6, 4), (1,)]


class _Counter:
    """Counts the runs of the C passes' runner, or with ``backend="torch"`` (the C passes
    switched off, as without a compiler) of :mod:`optimlab.fused.passes_torch`'s."""

    def __init__(self, monkeypatch, backend="c"):
        self.runs = 0
        cls = passes_eval.Runner if backend == "c" else passes_torch.TorchRunner
        original = cls.run
        if backend == "torch":
            monkeypatch.setattr(passes, "compiled", False)

        def run(runner):
            self.runs += 1
            return original(runner)

        monkeypatch.setattr(cls, "run", run)


def _reference_step(optimizer):
    """One step of ``optimizer`` on the reference path."""
    os.environ["OPTIMLAB_DISABLE_FUSED"] = "1"
    try:
        optimizer.step()
    finally:
        del os.environ["OPTIMLAB_DISABLE_FUSED"]


def _pair(entry, variant, dtype, steps=STEPS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = _shapes(entry)
    ours = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    a = entry.build(ours, lr=entry.test_lr, **variant)
    b = entry.build(ref, lr=entry.test_lr, **variant)
    for t in range(steps):
        for p, q in zip(ours, ref):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad, q.grad = g, g.clone()
        a.step()
        _reference_step(b)
    return (a, ours), (b, ref)


def _rel(x, y):
    x, y = x.detach().double(), y.detach().double()
    return float((x - y).abs().max() / max(float(y.abs().max()), 1e-12))


@pytest.mark.parametrize("backend", ["c", "torch"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("entry,variant", CASES)
def test_passes_equal_reference_path(entry, variant, dtype, backend, monkeypatch):
    """The C passes and, without them, the same graph run by batched torch ops."""
    if entry.name == "prodigy" and dtype == torch.float16:
        pytest.skip("d0^2 g^2 (1e-12 g^2) underflows float16 state: NaN on both paths")
    counter = _Counter(monkeypatch, backend)
    (a, ours), (b, ref) = _pair(entry, variant, dtype)
    assert counter.runs >= STEPS, "the passes did not run"
    tol = DTYPES[dtype] * (20 if entry.name == "muon" else 1)  # bfloat16 Newton-Schulz
    for p, q in zip(ours, ref):
        assert p.dtype == dtype
        assert _rel(p, q) <= tol
        assert list(a.state[p]) == list(b.state[q])
        for key, v in a.state[p].items():
            assert v.dtype == b.state[q][key].dtype and v.shape == b.state[q][key].shape
            assert _rel(v, b.state[q][key]) <= max(tol, 1e-6 if v.dim() == 0 else 0)
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key in ("d", "d_max", "d_numerator", "k"):
            if key in ga:
                assert ga[key] == pytest.approx(gb[key], rel=max(tol, 1e-9))


def test_passes_change_the_parameters_and_fall_back_per_tensor():
    """A passes step moves the params like the reference; a non-contiguous param, and
    ``foreach=True``, take the reference path instead (and still give its result)."""
    base = torch.randn(8, 6, dtype=torch.float64)
    p, q = base.clone().requires_grad_(), base.t().contiguous().t().clone().requires_grad_()
    assert not q.is_contiguous()
    opt = optimlab.LAMB([p, q], lr=0.1, weight_decay=0.01)
    for _ in range(5):
        g = torch.randn(8, 6, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
    assert not torch.equal(p, base)
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_two_levels_of_reductions_make_two_passes():
    """LAMB: sums of r^2 and p^2 in pass 0, the step in pass 1; Adafactor's matrices: the
    row/column means by torch, then two passes (sum of u^2, the step) that compute the outer
    product R C^T themselves;
    Muon: momentum written for Newton-Schulz in pass 0, the step in pass 1."""
    from optimlab.rules.base import hyperparameters

    def cut(opt, shape, layout):
        h = hyperparameters(opt.param_groups[0], opt.defaults)
        h.grad_scale = None
        prog = passes.trace_program(opt.rule, "update", h, shape, torch.float32, layout)
        return [None if ps is None else (len(ps.reductions), [b[0] for b in ps.buffers]) for ps in prog.passes]

    w = torch.zeros(4, 3, requires_grad=True)
    assert cut(optimlab.LAMB([w]), (4, 3), {"exp_avg": "E", "exp_avg_sq": "E"}) == [
        (2, ["ein", "ein", "ein", "ein"]), (0, ["ein", "ein", "ein", "ein"])]
    ada = cut(optimlab.Adafactor([w]), (4, 3), {"row_var": "T", ("shape", "row_var"): (4, 1),
                                                "col_var": "T", ("shape", "col_var"): (1, 3), "variance": None})
    # R C^T is no full-size temporary: both passes multiply R[i] * C[j], read along rows, columns
    assert [x[0] for x in ada] == [2, 0] and all("tbuf" not in x[1] and {"rows", "cols"} <= set(x[1]) for x in ada)
    muon = cut(optimlab.Muon([w]), (4, 3), {"momentum_buffer": "E"})
    assert muon[0][1].count("tmp") == 1 and "tbuf" in muon[1][1]
    # the momentum is written in bfloat16 (it is only rounded there), and pass 1 reads the
    # bfloat16 O itself (O.to(float32) is a widening: no float32 copy)
    muon = optimlab.Muon([w])
    h = hyperparameters(muon.param_groups[0], muon.defaults)
    h.grad_scale = None
    prog = passes.trace_program(optimlab.Muon.rule,
                                "update", h, (4, 3), torch.float32, {"momentum_buffer": "E"})
    assert len(prog.aliases) == 1
    [tbuf] = [b[1] for b in prog.passes[1].buffers if b[0] == "tbuf"]
    assert tbuf.meta.dtype == torch.bfloat16
    assert prog.passes[0].traffic[-1] == 2 and prog.passes[1].traffic[3] == 2  # bytes per element


def test_prodigy_estimate_runs_as_one_pass(monkeypatch):
    counter = _Counter(monkeypatch)
    p = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    opt = optimlab.Prodigy([p])
    p.grad = torch.randn(5, 4, dtype=torch.float64)
    opt.step()
    assert counter.runs == 1  # the estimate; phase 2 is the element-wise fused kernel
    assert np.isfinite(opt.param_groups[0]["d"])


@pytest.mark.parametrize("flags", [{"foreach": True}, {"fused": False}], ids=["foreach", "unfused"])
def test_opting_out_takes_the_reference_path(flags, monkeypatch):
    """``foreach=True`` (torch's multi-tensor flag) and ``fused=False`` run the per-tensor
    reference path: no pass runs, and the result is the reference path's exactly."""
    counter = _Counter(monkeypatch)
    entry = next(e for e in ENTRIES if e.name == ("lamb" if "foreach" in flags else "prodigy"))
    p = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    a = entry.build([p], lr=entry.test_lr, **flags)
    b = entry.build([q], lr=entry.test_lr)
    for _ in range(3):
        g = torch.randn(5, 4, dtype=torch.float64)
        p.grad, q.grad = g, g.clone()
        a.step()
        _reference_step(b)
    assert counter.runs == 0
    assert torch.equal(p, q)


def test_bucket_sorting_kept_between_steps_is_redone_when_things_change(monkeypatch):
    """The sorting of params into buckets is kept between steps; a grad the passes cannot
    take (non-contiguous) sends the param to the reference path, a loaded state_dict's new
    state tensors are the ones the passes update."""
    counter = _Counter(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = w.detach().clone().requires_grad_()
    ours, ref = optimlab.LARS([w], lr=0.1, momentum=0.9), optimlab.LARS([v], lr=0.1, momentum=0.9)

    def step(g):
        w.grad, v.grad = g, g.clone()
        ours.step()
        _reference_step(ref)

    step(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    step(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    assert counter.runs == 2
    step(torch.randn(4, 6, generator=gen, dtype=torch.float64).T)  # not contiguous
    assert counter.runs == 2
    step(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    assert counter.runs == 3
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    buf = ours.state[w]["momentum_buffer"]
    step(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    assert counter.runs == 4
    torch.testing.assert_close(w, v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(buf, ref.state[v]["momentum_buffer"], rtol=1e-12, atol=1e-14)


def test_without_a_compiler_the_graph_runs_as_torch_operations(monkeypatch, tmp_path):
    """No C compiler (``OPTIMLAB_CC`` pointing nowhere, an empty kernel cache): one warning,
    then the same traced graph runs as batched torch operations, equal to the reference."""
    monkeypatch.setenv("OPTIMLAB_CC", str(tmp_path / "no-cc"))
    monkeypatch.setenv("OPTIMLAB_CACHE", str(tmp_path / "cache"))
    counter = _Counter(monkeypatch, "torch")
    monkeypatch.setattr(passes, "compiled", True)  # the build itself must fail
    shapes = [(13, 11), (13, 11), (17,)]  # shapes no other test compiles passes for
    gen = torch.Generator().manual_seed(3)
    ours = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    a, b = optimlab.Adafactor(ours), optimlab.Adafactor(ref)
    with pytest.warns(RuntimeWarning, match="no C kernels .*the rules with reductions run their generated passes as torch ops"):
        for _ in range(10):
            for p, q in zip(ours, ref):
                p.grad = torch.randn(p.shape, generator=gen)
                q.grad = p.grad.clone()
            a.step()
            _reference_step(b)
    assert counter.runs == 20  # a run per bucket and step: the two matrices, the vector
    for p, q in zip(ours, ref):
        assert _rel(p, q) <= DTYPES[torch.float32]
        for key, v in a.state[p].items():
            assert _rel(v, b.state[q][key]) <= DTYPES[torch.float32]
