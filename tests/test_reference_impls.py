"""optimlab against the implementations the authors published on PyPI, over the registry.

Every registry entry with a ``reference`` (``Entry.build_reference(params, **hyperparameters)``
builds the authors' optimizer from optimlab's hyperparameter names, renaming where the
reference spells them differently), every variant it declares, every execution path:
float64, 150 steps of the parity problem (tests/numpy_reference.py's noisy ill-conditioned
quadratic over two param groups, the second at half the learning rate), the whole
trajectory within 1e-6 relative.

Differences from the papers are switched off here, and only here:

* ``maximize``: not every reference has it (``schedulefree`` does not), and
  ``pytorch_optimizer``'s Adan stores its first "previous gradient" before negating it, so
  its first step is wrong under ``maximize``. The reference therefore always minimises f,
  while optimlab maximises -f with ``maximize=True``: the same trajectory if the flag is
  right.
* Entry-specific differences are in the entry's ``reference`` builder and its docstring
  (a renamed argument, or the reference's class that implements the paper's variant).

Optimizers with a ``train()``/``eval()`` switch (Schedule-Free) are put in train mode
before the first step, and their evaluation-mode parameters are compared too, after every
step (``eval()``, read, ``train()``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import flat, fused_modes, make_params, rel_err, two_groups
from numpy_reference import Quadratic
from optimlab.registry import ENTRIES

STEPS = 150
TOL = 1e-6

REFERENCE_CASES = [
    pytest.param(e, v, mode, id=f"{e.name}-{i}-{'default' if not mode else 'fused_off' if len(mode) == 1 else 'reference_path'}")
    for e in ENTRIES if e.reference is not None
    for i, v in enumerate(e.variants)
    for mode in fused_modes(e)
]


def _build_reference(entry, params, **hyperparameters):
    try:
        return entry.build_reference(params, **hyperparameters)
    except ImportError as exc:  # a test-only dependency (pip install -e ".[test]")
        if os.environ.get("CI") == "true":  # required in CI, as Chromium and Ray
            pytest.fail(f"{entry.name}'s reference implementation is required in CI: {exc}")
        pytest.skip(f"{entry.name}'s reference implementation is not installed: {exc}")


def _run(opt, params, problem, steps=STEPS):
    """Train-mode trajectory and, for optimizers with ``eval()``, evaluation-mode trajectory."""
    switches = hasattr(opt, "eval") and hasattr(opt, "train")
    if switches:
        opt.train()
    train, evaluation = [], []
    for t in range(steps):
        for p, g in zip(params, problem.split(problem.grad(flat(params), t))):
            p.grad = torch.tensor(g, dtype=p.dtype)
        opt.step()
        train.append(flat(params))
        if switches:
            opt.eval()
            evaluation.append(flat(params))
            opt.train()
    return np.array(train), np.array(evaluation) if switches else None


@pytest.mark.parametrize("entry, variant, mode", REFERENCE_CASES)
def test_trajectory_matches_published_reference(entry, variant, mode):
    variant = dict(variant)
    maximize = variant.pop("maximize", False)
    lr = entry.test_lr
    objective, f = Quadratic(maximize=maximize), Quadratic()
    ours, theirs = make_params(objective), make_params(f)
    opt = entry.build(two_groups(ours, lr), lr=lr, **variant, **mode,
                      **({"maximize": True} if maximize else {}))
    ref = _build_reference(entry, two_groups(theirs, lr), lr=lr, **variant)
    a, a_eval = _run(opt, ours, objective)
    b, b_eval = _run(ref, theirs, f)
    # the reference descends on f at test_lr and moves far from x0: parity is meaningful
    assert f.loss(b[-1]) < f.loss(f.x0)
    assert np.abs(b[-1] - f.x0).max() > 1e-3
    err = rel_err(a, b)
    assert err <= TOL, f"relative trajectory error {err:.3g}"
    assert (a_eval is None) == (b_eval is None)
    if b_eval is not None:
        assert np.abs(b_eval - b).max() > 1e-6  # the two points differ: the switch is exercised
        err = rel_err(a_eval, b_eval)
        assert err <= TOL, f"relative evaluation-mode trajectory error {err:.3g}"


def test_every_reference_builder_renames_only_known_arguments():
    """A rename in a builder names an argument the optimlab class really has (a typo would
    otherwise pass the argument through unrenamed and fail only in some variants)."""
    import inspect

    for entry in ENTRIES:
        renames = getattr(entry.reference, "renames", {})
        params = inspect.signature(entry.cls).parameters
        assert set(renames) <= set(params), (entry.name, set(renames) - set(params))
