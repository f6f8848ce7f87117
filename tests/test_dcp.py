"""Distributed checkpoints with torch.optim, both ways: DCP (``dcp.save`` of
``get_optimizer_state_dict``, plain ``dcp.load`` + ``set_optimizer_state_dict``) and
ZeroRedundancyOptimizer's consolidated state_dict. Every registry entry; a checkpoint of one
library continues in the other on torch.optim's uninterrupted trajectory, and loading keeps
the implementation flags the user set (optimlab.checkpoint).

Single-process DCP cases run by default; the 2-process gloo cases (DDP, FSDP2, ZeRO) are
``slow``: one process group per test module part runs every entry (checkpoint_workers)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

import checkpoint_workers as W
from conftest import ENTRY_PARAMS, accepts, rel_err, tolerance
from dist_harness import run_group
from optimlab.registry import TORCH_ENTRIES as ENTRIES

DIRECTIONS = ("torch_to_optimlab", "optimlab_to_torch")
BIAS_CORRECTION = [p for p in ENTRY_PARAMS if accepts(p.values[0].cls, "bias_correction")]


def _reference(entry) -> torch.Tensor:
    m = W.model(0, "plain")
    return W.train(m, W.build(entry, m.parameters(), True), 0, W.BEFORE + W.AFTER)[W.BEFORE:]


def _check(entry, result, reference, optimlab_loads: bool, flags_kept: bool = True):
    assert rel_err(result["resumed"].numpy(), reference.numpy()) <= tolerance(entry)
    if optimlab_loads:
        for group in result["flags_before"]:
            assert W.user_flags(entry.cls).items() <= group.items()
        if flags_kept:
            assert result["flags_after"] == result["flags_before"]


# ------------------------------------------------------------------ one process, no group
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_dcp_both_ways(entry, direction, tmp_path):
    save_torch = direction == "torch_to_optimlab"
    result = W.dcp_case(entry, "plain", save_torch, str(tmp_path))
    _check(entry, result, _reference(entry), optimlab_loads=save_torch)


@pytest.mark.parametrize("entry", BIAS_CORRECTION)
def test_bias_correction_written_only_when_false(entry):
    p = torch.nn.Parameter(torch.ones(2))
    assert "bias_correction" not in entry.build([p]).state_dict()["param_groups"][0]
    assert entry.build([p], bias_correction=False).state_dict()["param_groups"][0]["bias_correction"] is False


@pytest.mark.parametrize("entry", BIAS_CORRECTION)
def test_bias_correction_false_survives_dcp(entry, tmp_path):
    def run(start, steps, m, opt):
        return W.train(m, opt, start, steps)

    m = W.model(0, "plain")
    straight = run(0, W.BEFORE + W.AFTER, m, entry.build(m.parameters(), lr=entry.test_lr,
                                                         bias_correction=False))[W.BEFORE:]
    m = W.model(0, "plain")
    saver = entry.build(m.parameters(), lr=entry.test_lr, bias_correction=False)
    run(0, W.BEFORE, m, saver)
    dcp.save({"optim": get_optimizer_state_dict(m, saver)}, checkpoint_id=str(tmp_path))
    loader = entry.build(m.parameters(), lr=entry.test_lr, bias_correction=False)
    state = {"optim": get_optimizer_state_dict(m, loader)}
    dcp.load(state, checkpoint_id=str(tmp_path))
    set_optimizer_state_dict(m, loader, state["optim"])
    assert loader.param_groups[0]["bias_correction"] is False
    torch.testing.assert_close(run(W.BEFORE, W.AFTER, m, loader), straight, rtol=0, atol=0)


@pytest.mark.parametrize("entry", BIAS_CORRECTION)
def test_checkpoint_without_bias_correction_loads_as_true(entry):
    """A torch.optim checkpoint was written with bias correction: it continues with it."""
    params = [torch.nn.Parameter(torch.ones(2))]
    theirs = entry.build_torch(params, lr=0.1).state_dict()
    ours = entry.build(params, lr=0.1, bias_correction=False)
    ours.load_state_dict(theirs)
    assert ours.param_groups[0]["bias_correction"] is True


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_load_state_dict_keeps_implementation_flags(entry):
    """torch's load_state_dict would take fused/foreach/capturable/differentiable from the
    checkpoint; optimlab keeps the constructed ones and takes the hyperparameters."""
    params = [torch.nn.Parameter(torch.ones(2))]
    ours = entry.build(params, lr=0.1, **W.user_flags(entry.cls))
    constructed = W.flags(ours)
    theirs = copy.deepcopy(entry.build_torch(params, lr=0.5).state_dict())
    for group in theirs["param_groups"]:
        for key in W.FLAGS:
            group[key] = True  # unlike anything a user of this test constructed with
    ours.load_state_dict(theirs)
    assert W.flags(ours) == constructed
    assert any(value is False for value in constructed[0].values())
    assert ours.param_groups[0]["lr"] == 0.5


# ------------------------------------------------------------------- 2 processes over gloo
def _results(worker, tmp_path_factory):
    out = tmp_path_factory.mktemp(worker.__name__)
    run_group(worker, out)
    return torch.load(out / "results.pt", weights_only=True)


@pytest.fixture(scope="module")
def dcp_results(tmp_path_factory):
    return _results(W.dcp_worker, tmp_path_factory)


@pytest.fixture(scope="module")
def zero_results(tmp_path_factory):
    return _results(W.zero_worker, tmp_path_factory)


DCP_CASES = [pytest.param(e, f"{wrap}-{d}", id=f"{e.name}-{wrap}-{d}") for e in ENTRIES
             for wrap in W.wraps(e) for d in DIRECTIONS]
ZERO_CASES = [pytest.param(e, f"{d}-{target}", id=f"{e.name}-{d}-{target}") for e in ENTRIES
              for d in DIRECTIONS for target in ("zero", "plain")]


@pytest.mark.slow
@pytest.mark.parametrize("entry, case", DCP_CASES)
def test_dcp_two_ranks(entry, case, dcp_results):
    results = dcp_results[entry.name]
    assert "error" not in results, results.get("error")
    wrap = case.split("-")[0]
    _check(entry, results[case], results[f"{wrap}-reference"],
           optimlab_loads=case.endswith("torch_to_optimlab"))


@pytest.mark.slow
@pytest.mark.parametrize("entry, case", ZERO_CASES)
def test_zero_redundancy_optimizer(entry, case, zero_results):
    """ZeRO's own load_state_dict copies every group key into the wrapped optimizer
    (``_sync_param_groups``); the user's flags are back by the end of the resumed run."""
    results = zero_results[entry.name]
    assert "error" not in results, results.get("error")
    _check(entry, results[case], results["reference"],
           optimlab_loads=case.startswith("torch_to_optimlab"), flags_kept=True)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_flags_written_over_without_load_state_dict_are_put_back(entry):
    """What ZeRO's ``_sync_param_groups`` does to the wrapped optimizer: a torch checkpoint's
    ``None`` flags copied straight in. The next step restores the flags the group was built
    with; a value set by hand (not None) stays."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = entry.build([p], lr=entry.test_lr, **W.user_flags(entry.cls))
    built = {k: opt.param_groups[0][k] for k in W.user_flags(entry.cls)}
    for key in built:
        opt.param_groups[0][key] = None
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert {k: opt.param_groups[0][k] for k in built} == built
    opt.param_groups[0]["foreach" if "foreach" in built else "fused"] = True
    opt.step()
    assert opt.param_groups[0]["foreach" if "foreach" in built else "fused"] is True
