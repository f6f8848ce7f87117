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

from dataclasses import dataclass

import torch

from ..rules.base import hyperparameters
from .compiled_groups import eligible, own_hooks, tensorize


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


def _traceable(optimizer, group, grad_scale, slower=False) -> list | None:
    """The group's params with grads, where the reference path traces ``group`` without a
    break: torch's own tensor types, no ``differentiable`` group, no two-phase rule (its
    phase-1 sums are Python floats), no schedule-free step, no GradScaler scale, not in
    :data:`TRACED_SLOWER` unless ``slower``; else None."""
    rule = optimizer.rule
    if (group.get("differentiable") or rule.combine is not None or grad_scale is not None
            or (rule.name in TRACED_SLOWER and not slower) or own_hooks(optimizer)):
        return None
    params = [p for p in group["params"] if p.grad is not None]
    return params if all(map(eligible, params)) and all(map(_torch_types, params)) else None


def traces_whole_step(optimizer) -> bool:
    """Whether ``torch.compile(opt.step)`` traces the step as well, rather than calling the
    eager step from a frame with no graph (:mod:`.step_op`): a rule with reductions (no C
    kernel) whose every group the reference path traces. Compiled so, the step takes
    0.30-0.71x Adafactor's eager step's time and 0.44-1.12x LARS's, against 0.99-1.19x for the
    frame that calls the eager step (BENCHMARKS.md, "rules with reductions, traced")."""
    grad_scale = getattr(optimizer, "grad_scale", None)
    return (not optimizer.rule.elementwise
            and all(_traceable(optimizer, g, grad_scale) is not None for g in optimizer.param_groups))


def reference_plan(optimizer, group, grad_scale):
    """A :class:`ReferencePlan` where the reference path traces without a break
    (:func:`_traceable`) and the step creates no state (all of it is made here, eagerly).
    Where the frame refuses graph breaks (``fullgraph=True``) the rules in
    :data:`TRACED_SLOWER` are traced too: slower than their eager step, but not an error."""
    params = _traceable(optimizer, group, grad_scale, slower=_breaks_refused())
    if params is None:
        return None
    rule = optimizer.rule
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


def _torch_types(p) -> bool:
    """A param and grad of torch's own tensor types: no subclass (DTensor shards keep their
    eager step, which steps the local shards)."""
    return type(p) in (torch.Tensor, torch.nn.Parameter) and type(p.grad) is torch.Tensor


def run(optimizer, group, plan: ReferencePlan) -> None:
    h = hyperparameters(group, traced=True)
    h.grad_scale = None
    params = group["params"]
    for i in plan.index:
        optimizer.reference_step(params[i], h, traced=True)
