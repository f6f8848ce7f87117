"""Under ``torch.compile``, the reference path itself: :func:`optimlab.rules.update` traced by Dynamo.

A group neither the C kernel op nor the printed graph takes (:mod:`.compiled`), rules with
reductions (Adafactor, LARS) and, where the printed graph runs, Rprop's, ASGD's and Lion's
masks and signs, is stepped by the engine's reference path with ``traced=True``: one param at
a time, the scalar state (``step``) and ``lr``/``betas`` as 0-dim tensors, so nothing calls
``item()`` and a schedule never recompiles. Dynamo traces it into the caller's graph and
Inductor fuses it. Adafactor's and LARS's traced step is faster than their eager one, so
``torch.compile(opt.step)`` traces it as well (:func:`traces_whole_step`); the rules in
:data:`TRACED_SLOWER` keep their eager step behind a break except where the frame refuses
breaks (``fullgraph=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..rules.base import hyperparameters


def eligible(p) -> bool:
    """A strided floating-point or complex param with a strided grad."""
    g = p.grad
    return (p.layout == torch.strided and g.layout == torch.strided
            and (p.is_floating_point() or p.is_complex()))


def tensorize(group: dict, key: str, index) -> None:
    """Store a float hyperparameter as a 0-dim float64 tensor (see :mod:`.compiled`)."""
    value = group[key]
    if index is not None:
        if not isinstance(value, tuple) or isinstance(value[index], (bool, torch.Tensor)):
            return
        v = value[index]
        if isinstance(v, (int, float)) and math.isfinite(v):
            group[key] = tuple(torch.tensor(float(x), dtype=torch.float64) if i == index else x
                               for i, x in enumerate(value))
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        group[key] = torch.tensor(float(value), dtype=torch.float64)


def own_hooks(optimizer) -> bool:
    """The class changes the engine's step (schedule-free's train/eval points): its eager step."""
    from ..engine import RuleOptimizer

    cls = type(optimizer)
    return any(getattr(cls, name, None) is not getattr(RuleOptimizer, name, None)
               for name in ("estimate_step", "unfused_step", "reference_step", "step_groups", "init_state"))


@dataclass(eq=False)
class ReferencePlan:
    """A rule neither the C kernel nor the printed graph takes (reductions: Adafactor, LARS;
    Rprop's, ASGD's, Lion's masks and signs where the printed graph runs):
    :func:`optimlab.rules.update` itself, the reference path, traced by Dynamo one param at a
    time (``reference_step(traced=True)``), with ``lr``, ``betas`` and the scalar state as
    tensors. ``index``: the params with grads."""

    index: tuple


#: rules whose traced reference step is slower than the eager step it would replace: Inductor's
#: CPU code recomputes their bias corrections (``beta ** step``, a ``std::pow`` per vector) inside
#: every element loop. LAMB 3.3-4.2x the eager step on 20 x 256^2 and 28M params, RAdam 1.5x the
#: multi-tensor path (no compiler) on 20 x 256^2 (benchmarks/compile_step.py, 2026-12-04). They
#: keep their eager step behind a break.
TRACED_SLOWER = frozenset({"lamb", "radam"})


def _traceable(optimizer, group, grad_scale, slower=False) -> bool:
    """Whether the reference path traces ``group`` without a break: plain tensors, no
    ``differentiable`` group, no two-phase rule (its phase-1 sums are Python floats), no
    schedule-free step, no GradScaler scale, not in :data:`TRACED_SLOWER` unless ``slower``."""
    rule = optimizer.rule
    if (group.get("differentiable") or rule.combine is not None or grad_scale is not None
            or (rule.name in TRACED_SLOWER and not slower) or own_hooks(optimizer)):
        return False
    params = [p for p in group["params"] if p.grad is not None]
    return all(map(eligible, params)) and all(map(_plain, params))


def traces_whole_step(optimizer) -> bool:
    """Whether ``torch.compile(opt.step)`` traces the step as well, rather than calling the
    eager step from a frame with no graph (:mod:`.step_op`): a rule with reductions (no C
    kernel) whose every group the reference path traces. Inductor's fused graph of it takes
    0.24-0.71x Adafactor's eager step and 0.36-1.11x LARS's (BENCHMARKS.md), against
    0.98-1.19x for the frame that calls the eager step."""
    grad_scale = getattr(optimizer, "grad_scale", None)
    return (not optimizer.rule.elementwise
            and all(_traceable(optimizer, g, grad_scale) for g in optimizer.param_groups))


def reference_plan(optimizer, group, grad_scale):
    """A :class:`ReferencePlan` where the reference path traces without a break
    (:func:`_traceable`) and the step creates no state (all of it is made here, eagerly).
    Where the frame refuses graph breaks (``fullgraph=True``) the rules in
    :data:`TRACED_SLOWER` are traced too: slower than their eager step, but not an error."""
    if not _traceable(optimizer, group, grad_scale, slower=_breaks_refused()):
        return None
    rule = optimizer.rule
    params = [p for p in group["params"] if p.grad is not None]
    h = hyperparameters(group)
    h.grad_scale = None
    fills = rule.tensors(h)
    for p in params:
        state = optimizer.init_state(p, h)
        if any(fill is None and key not in state for key, fill in fills.items()):
            return None
    tensorize(group, "lr", None)
    for index in range(len(group.get("betas", ()))):
        tensorize(group, "betas", index)
    position = {id(p): i for i, p in enumerate(group["params"])}
    return ReferencePlan(tuple(position[id(p)] for p in params))


def _breaks_refused() -> bool:
    from torch._dynamo.symbolic_convert import InstructionTranslator

    try:
        tx = InstructionTranslator.current_tx()
    except AttributeError:  # this thread has traced nothing yet
        return False
    return tx is not None and bool(getattr(tx, "one_graph", False) or getattr(tx, "error_on_graph_break", False))


def _plain(p) -> bool:
    """A param and grad of torch's own tensor types: no subclass (DTensor shards keep their
    eager step, which steps the local shards)."""
    return type(p) in (torch.Tensor, torch.nn.Parameter) and type(p.grad) is torch.Tensor


def run(optimizer, group, plan: ReferencePlan) -> None:
    h = hyperparameters(group, traced=True)
    h.grad_scale = None
    params = group["params"]
    for i in plan.index:
        optimizer.reference_step(params[i], h, traced=True)


def init_state(optimizer, group) -> None:
    """The state of a group left to the eager step, made now: made by that step, after the
    frame's guards on the state, it would recompile the frame at the second step."""
    h = hyperparameters(group)
    for p in group["params"]:
        if p.grad is not None:
            optimizer.init_state(p, h)
