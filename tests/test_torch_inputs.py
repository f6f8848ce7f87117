"""torch's own optimizer test inputs against optimlab: the error inputs of
``torch.testing._internal.common_optimizers.optim_db`` (same exception type and message),
complex Adagrad with an initial accumulator, and the ``fused=True`` refusal on meta params."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import optimlab
from conftest import ENTRY_PARAMS, accepts, rel_err, tolerance
from optimlab.registry import REGISTRY
from optimlab.registry import TORCH_ENTRIES as ENTRIES

#: optim_db's entries for which optimlab has a class of the same name
SHARED = [pytest.param(info, getattr(optimlab, info.name), id=info.name)
          for info in optim_db if hasattr(optimlab, info.name)]


def test_every_torch_twin_has_its_error_inputs_checked():
    covered = {p.values[0].name for p in SHARED}
    assert {e.torch_cls.__name__ for e in ENTRIES} <= covered


@pytest.mark.parametrize("info, cls", SHARED)
def test_error_inputs_raise_like_torch(info, cls):
    """torch's test_optim.test_errors, on CPU, with the optimlab class in torch's place."""
    inputs = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)
    assert inputs
    for error in inputs:
        given = error.optimizer_error_input
        if issubclass(error.error_type, Warning):
            expect = pytest.warns(error.error_type, match=error.error_regex)
        else:
            expect = pytest.raises(error.error_type, match=error.error_regex)
        if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            with expect:
                cls(given.params, **given.kwargs)
        else:
            opt = cls(given.params, **given.kwargs)
            with expect:
                opt.step()


@pytest.mark.parametrize("modes", [{}, {"fused": False}], ids=["default", "reference"])
@pytest.mark.parametrize("init", [0.1, 2.0])
def test_complex_adagrad_initial_accumulator(init, modes):
    """torch starts ``sum`` of a complex parameter at ``v + vj``: both real halves at v."""
    entry = REGISTRY["adagrad"]
    g = torch.Generator().manual_seed(5)
    a = torch.randn(5, 5, generator=g, dtype=torch.complex128) * 0.3 + 2 * torch.eye(5)
    b = torch.randn(5, generator=g, dtype=torch.complex128)
    p0 = torch.randn(5, generator=g, dtype=torch.complex128)
    runs = []
    for build in (entry.build, entry.build_torch):
        p = p0.clone().requires_grad_(True)
        opt = build([p], lr=entry.test_lr, initial_accumulator_value=init, **modes)
        torch.testing.assert_close(opt.state[p]["sum"], torch.full_like(p0, complex(init, init)),
                                   rtol=0, atol=0)
        trajectory = []
        for _ in range(100):
            opt.zero_grad()
            (a @ p - b).abs().pow(2).sum().backward()
            opt.step()
            trajectory.append(torch.view_as_real(p.detach()).reshape(-1).numpy().copy())
        runs.append((np.array(trajectory), opt.state_dict()))
    (ours, our_sd), (theirs, their_sd) = runs
    assert rel_err(ours, theirs) <= tolerance(entry)
    assert our_sd["param_groups"] == their_sd["param_groups"]
    for key, value in their_sd["state"][0].items():
        torch.testing.assert_close(our_sd["state"][0][key], value, rtol=1e-9, atol=0)


def _step_error(build, **kwargs) -> Exception:
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    p.grad = torch.zeros(3, device="meta")
    opt = build([p], lr=0.1, fused=True, **kwargs)
    with pytest.raises(RuntimeError) as info:
        opt.step()
    return info.value


@pytest.mark.parametrize("entry", [p for p in ENTRY_PARAMS if accepts(p.values[0].cls, "fused")])
def test_fused_on_meta_is_refused_in_torch_words(entry):
    """torch: "`fused=True` requires all the params to be floating point Tensors of supported
    devices: [...] but torch.float32 and meta"; optimlab names its own devices."""
    theirs = str(_step_error(entry.build_torch))
    devices = re.search(r"supported devices: (\[.*?\])", theirs).group(1)
    pattern = re.escape(theirs).replace(re.escape(devices), r"\[[^]]*\]")
    assert re.search(pattern, str(_step_error(entry.build)))
