"""Shared helpers: the registry-driven test cases and a driver that feeds the parity problem's
gradients to any torch-style optimizer. Imported by the test modules (``from conftest import``)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from optimlab.registry import RULE_ENTRIES, TORCH_ENTRIES

#: (entry, variant) for every registry entry with a torch.optim twin and every variant it
#: declares: the tests that compare with torch.optim (trajectories, state_dict, errors)
CASES = [pytest.param(e, v, id=f"{e.name}-{i}") for e in TORCH_ENTRIES for i, v in enumerate(e.variants)]
ENTRY_PARAMS = [pytest.param(e, id=e.name) for e in TORCH_ENTRIES]
#: every entry run by the engine (with or without a torch twin): fused vs reference path
RULE_CASES = [pytest.param(e, v, id=f"{e.name}-{i}") for e in RULE_ENTRIES for i, v in enumerate(e.variants)]
RULE_PARAMS = [pytest.param(e, id=e.name) for e in RULE_ENTRIES]


def accepts(cls, name: str) -> bool:
    """Whether constructor ``cls`` takes the keyword ``name``."""
    return name in inspect.signature(cls).parameters


def fused_modes(entry):
    """Default arguments (whatever path is chosen), ``fused=False`` where the class has it
    (the multi-tensor path), and ``foreach=False`` with it (the per-tensor reference path)."""
    if accepts(entry.cls, "fused"):
        return [{}, {"fused": False}, {"fused": False, "foreach": False}]
    return [{}, {"foreach": False}]


def tolerance(entry, float32_mu_product: bool = True) -> float:
    """Trajectory tolerance. torch keeps NAdam's ``mu_product`` in float32 state and rounds
    ``mu_product *= mu`` to it; optimlab does the same (tests/test_parity.py checks it to
    1e-13), so only a float64 implementation (the NumPy reference) needs the looser 1e-4."""
    if not float32_mu_product and entry.torch_cls is torch.optim.NAdam:
        return 1e-4
    return 1e-6


def make_params(problem, dtype=torch.float64, x=None):
    x = problem.x0 if x is None else x
    return [torch.tensor(part, dtype=dtype, requires_grad=True) for part in problem.split(x)]


def two_groups(params, lr):
    """Two param groups; the second one runs at half the learning rate."""
    return [{"params": [params[0]]}, {"params": [params[1]], "lr": lr / 2}]


def flat(params) -> np.ndarray:
    return np.concatenate([p.detach().to(torch.float64).reshape(-1).numpy() for p in params])


def drive(opt, params, problem, steps, start=0) -> np.ndarray:
    """``steps`` optimizer steps on ``problem`` (gradient at step t is problem.grad(x, t));
    returns the trajectory of the concatenated parameters, shape (steps, dim)."""
    traj = []
    for t in range(start, start + steps):
        grads = problem.split(problem.grad(flat(params), t))
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=p.dtype)
        opt.step()
        traj.append(flat(params))
    return np.array(traj)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Worst per-step relative error of trajectory ``a`` against ``b`` (rows are steps)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    assert a.shape == b.shape
    assert np.isfinite(a).all() and np.isfinite(b).all()
    num = np.abs(a - b).max(axis=1)
    den = np.maximum(np.abs(b).max(axis=1), 1e-12)
    return float((num / den).max())


@pytest.fixture
def fresh_dynamo(request):
    """A fresh Dynamo (no cached frames, counters cleared) with ``optimlab.fused.compiled.MODE``
    set to the test module's ``COMPILED_MODE`` for the test, the default restored after."""
    from torch._dynamo.utils import counters

    from optimlab.fused import compiled

    torch._dynamo.reset()
    counters.clear()
    compiled.MODE = getattr(request.module, "COMPILED_MODE", compiled.MODES[0])
    yield
    torch._dynamo.reset()
    compiled.MODE = compiled.MODES[0]
