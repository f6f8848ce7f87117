"""Workers for tests/test_dcp.py's 2-process checkpoint tests (started by dist_harness).

Every case trains a small float64 MLP on data that depends on the rank and the step, stops
after ``BEFORE`` steps, checkpoints, builds a *fresh* model (other initial weights) and
optimizer of the other library, loads, and trains ``AFTER`` more steps. Rank 0 saves the
resumed trajectories next to the uninterrupted torch.optim trajectory, per registry entry:

    results[name][case] = {"resumed": (AFTER, dim) tensor, "flags_before": ..., ...}
    results[name]["reference"] = torch.optim's trajectory, steps BEFORE..BEFORE+AFTER
    results[name]["error"] = traceback text, if the entry failed
"""

from __future__ import annotations

import copy
import inspect
import os
import traceback

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from dist_harness import full

from optimlab.registry import TORCH_ENTRIES as ENTRIES

BEFORE, AFTER = 10, 25
FLAGS = ("fused", "foreach", "capturable", "differentiable")


def user_flags(cls) -> dict:
    """Implementation flags a user might set, each away from torch's saved default, where
    ``cls`` takes them: the load must keep them."""
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in (("fused", False), ("foreach", False)) if k in accepted}


#: torch 2.13's own optimizer cannot step FSDP2's DTensor shards, so there is no torch
#: trajectory to continue: Rprop (``sign[sign.gt(0)] = etaplus``: index_put_ on a Shard) and
#: Adafactor (``pow_`` on a _NormPartial row mean) raise inside torch.optim
TORCH_FAILS_ON_SHARDS = {"rprop", "adafactor"}


def wraps(entry) -> list[str]:
    """How the model is distributed: DDP, and FSDP2's ``fully_shard`` (DTensor shards)."""
    return ["ddp"] if entry.name in TORCH_FAILS_ON_SHARDS else ["ddp", "fsdp2"]


def flags(opt) -> list[dict]:
    return [{k: g[k] for k in FLAGS if k in g} for g in opt.param_groups]


def build(entry, params, use_torch: bool, user: bool = True):
    """The entry's torch.optim twin with torch's defaults, or its optimlab class with
    :func:`user_flags` (``user=True``) or its defaults."""
    if use_torch:
        return entry.build_torch(params, lr=entry.test_lr)
    return entry.build(params, lr=entry.test_lr, **(user_flags(entry.cls) if user else {}))


def zero(entry, params, use_torch: bool):
    """ZeroRedundancyOptimizer over the entry's torch.optim class or optimlab class."""
    if use_torch:
        return ZeroRedundancyOptimizer(params, optimizer_class=entry.build_torch, lr=entry.test_lr)
    return ZeroRedundancyOptimizer(params, optimizer_class=entry.cls, lr=entry.test_lr,
                                   **entry.preset, **user_flags(entry.cls))


def model(seed: int, wrap: str) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    if wrap == "ddp":
        return DistributedDataParallel(m)
    if wrap == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in (m[0], m[2]):
            fully_shard(layer)
        return fully_shard(m)
    return m


def train(m: nn.Module, opt, start: int, steps: int) -> torch.Tensor:
    """``steps`` steps on rank- and step-dependent data; the full parameters after each."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    trajectory = []
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 * t + rank)
        x = torch.randn(8, 6, generator=g, dtype=torch.float64)
        y = torch.randn(8, 3, generator=g, dtype=torch.float64)
        ((m(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        trajectory.append(torch.cat([
            full(p).reshape(-1)
            for p in m.parameters()]))
    return torch.stack(trajectory)


def dcp_case(entry, wrap, save_torch, directory):
    """Train with one library (default flags), ``dcp.save``; plain ``dcp.load`` into the
    other (optimlab with :func:`user_flags`); continue."""
    m = model(0, wrap)
    saver = build(entry, m.parameters(), save_torch, user=False)
    train(m, saver, 0, BEFORE)
    dcp.save({"model": get_model_state_dict(m), "optim": get_optimizer_state_dict(m, saver)},
             checkpoint_id=directory)

    m = model(1, wrap)
    loader = build(entry, m.parameters(), not save_torch)
    before = flags(loader)
    state = {"model": get_model_state_dict(m), "optim": get_optimizer_state_dict(m, loader)}
    dcp.load(state, checkpoint_id=directory)
    set_model_state_dict(m, state["model"])
    set_optimizer_state_dict(m, loader, state["optim"])
    return {"resumed": train(m, loader, BEFORE, AFTER), "flags_before": before,
            "flags_after": flags(loader)}


def _per_entry(rank, out_dir, cases):
    """Run ``cases(entry) -> {case: result}`` for every registry entry; rank 0 saves."""
    results = {}
    for entry in ENTRIES:
        try:
            results[entry.name] = cases(entry)
        except Exception:  # recorded per entry so that each test reports its own failure
            results[entry.name] = {"error": traceback.format_exc()}
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))


def dcp_worker(rank, world_size, out_dir):
    """DCP both ways, with a DDP-wrapped and an FSDP2-sharded model."""

    def cases(entry):
        out = {}
        for wrap in wraps(entry):
            m = model(0, wrap)
            reference = train(m, build(entry, m.parameters(), True), 0, BEFORE + AFTER)
            out[f"{wrap}-reference"] = reference[BEFORE:]
            for save_torch in (True, False):
                case = f"{wrap}-{'torch_to_optimlab' if save_torch else 'optimlab_to_torch'}"
                out[case] = dcp_case(entry, wrap, save_torch, os.path.join(out_dir, entry.name, case))
        return out

    _per_entry(rank, out_dir, cases)


def zero_worker(rank, world_size, out_dir):
    """ZeroRedundancyOptimizer over optimlab and over torch.optim: rank 0's consolidated
    state_dict loads into ZeRO of the other library and into the other library's plain
    optimizer (DDP model), and continues."""

    def cases(entry):
        m = model(0, "ddp")
        reference = train(m, zero(entry, m.parameters(), True), 0, BEFORE + AFTER)
        out = {"reference": reference[BEFORE:]}
        for save_torch in (True, False):
            m = model(0, "ddp")
            saver = zero(entry, m.parameters(), save_torch)
            train(m, saver, 0, BEFORE)
            saver.consolidate_state_dict(to=0)
            path = os.path.join(out_dir, f"{entry.name}-{save_torch}.pt")
            if rank == 0:
                torch.save({"model": m.module.state_dict(), "optim": saver.state_dict()}, path)
            dist.barrier()
            checkpoint = torch.load(path, weights_only=True)
            for target in ("zero", "plain"):
                m = model(1, "ddp")
                m.module.load_state_dict(checkpoint["model"])
                make = zero if target == "zero" else build
                loader = make(entry, m.parameters(), not save_torch)
                local = loader.optim if target == "zero" else loader
                before = flags(local)
                loader.load_state_dict(copy.deepcopy(checkpoint["optim"]))
                direction = "torch_to_optimlab" if save_torch else "optimlab_to_torch"
                out[f"{direction}-{target}"] = {
                    "resumed": train(m, loader, BEFORE, AFTER), "flags_before": before,
                    "flags_after": flags(local)}
        return out

    _per_entry(rank, out_dir, cases)
