"""Under ``torch.compile``, the reference path itself: :func:`optimlab.rules.update` traced by Dynamo.

A group neither the C kernel op nor the printed graph takes (:mod:`.compiled`), rules with
reductions (Adafactor, LARS), rules with group-level state (Prodigy, schedule-free) and, where
the printed graph runs, Rprop's, ASGD's and Lion's masks and signs, is stepped by the engine's
reference path with ``traced=True``: one param at a time, the scalar state (``step``), the
group-level state (``Rule.group_state``) and ``lr``/``betas`` as 0-dim tensors, so nothing
calls ``item()`` and a schedule never recompiles. Dynamo traces it into the caller's graph and
Inductor fuses it. A two-phase rule's partial sums are added up as float64 tensors, the
doubles its eager step adds, and where its eager step would stop after phase 1 (Prodigy before
any gradient), a ``where`` keeps the params and the group's values.

Adafactor's and LARS's traced step is faster than their eager one, so
``torch.compile(opt.step)`` traces it as well (:func:`traces_whole_step`); the rules in
:data:`TRACED_SLOWER` keep their eager step, called in the graph as one op
(:mod:`.group_op`), except LAMB on small tensors.

Everything the traced step writes (params, state, group-level state) is written by a foreach
copy (:func:`optimlab.rules.base.write_back`): Dynamo (torch 2.13) silently drops
``copy_``/``fill_`` into a 0-dim float64 CPU tensor under AOTAutograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rules.base import estimate, hyperparameters, update, write_back, write_group
from .compiled_groups import STEP_METHODS, eligible, own_hooks, tensorize, tensorize_group_state, torch_types


@dataclass(eq=False)
class ReferencePlan:
    """A rule neither the C kernel nor the printed graph takes (reductions: Adafactor, LARS;
    group-level state: Prodigy, schedule-free; Rprop's, ASGD's, Lion's masks and signs where
    the printed graph runs): :func:`optimlab.rules.update` itself, the reference path, traced
    by Dynamo one param at a time (``reference_step(traced=True)``), with ``lr``, ``betas``, the
    scalar and the group-level state as tensors. ``index``: the params with grads."""

    index: tuple


#: rules whose traced reference step is slower than the eager step it would replace, and the
#: mean elements per param up to which it is traced all the same. Inductor's CPU code recomputes
#: their bias corrections (``beta ** step``, a ``std::pow`` per vector) inside every element
#: loop, a cost per element; above the limit they keep their eager step, one op in the graph
#: (:mod:`.group_op`), which costs per tensor (guards and wrapper checks of each param, grad and
#: state tensor). LAMB traced / as the op: 136 / 436 us on 10 x 32^2, 711 / 1002 on 40 x 64^2,
#: 2225 / 1575 on 40 x 128^2, 4979 / 2252 on 20 x 256^2; RAdam (printed mode) at best even
#: (177 / 179 on 10 x 32^2), 618 / 351 on 40 x 64^2 (``benchmarks/compile_slower_rules.py``).
TRACED_SLOWER = {"lamb": 8192, "radam": 0}


def _traceable(optimizer, group, grad_scale) -> list | None:
    """The group's params with grads, where the reference path traces ``group`` without a
    break: torch's own tensor types, no ``differentiable`` group, no GradScaler scale, the
    engine's own step (a class may add to ``estimate_step`` where the rule has no per-param
    phase 1: schedule-free's train-mode check), not a rule in :data:`TRACED_SLOWER` above its
    limit; else None."""
    rule = optimizer.rule
    methods = STEP_METHODS if rule.estimate is not None else STEP_METHODS[1:]
    if group.get("differentiable") or grad_scale is not None or own_hooks(optimizer, methods):
        return None
    params = [p for p in group["params"] if p.grad is not None]
    limit = TRACED_SLOWER.get(rule.name)
    if limit is not None and sum(p.numel() for p in params) > limit * len(params):
        return None
    return params if all(map(eligible, params)) and all(map(torch_types, params)) else None


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
    (:func:`_traceable`). The state is made here, eagerly, except what the rule creates on its
    first step (schedule-free's ``z``: a second graph, as SGD's momentum buffer). The
    group-level state a step writes (``Rule.group_state``: Prodigy's ``d``, schedule-free's
    ``k`` and sums) becomes 0-dim float64 tensors, updated in place by the traced step
    (Prodigy's ``d_denom`` and ``d_hat``, written from the first step on, start at 0)."""
    params = _traceable(optimizer, group, grad_scale)
    if params is None:
        return None
    h = hyperparameters(group, optimizer.defaults)
    h.grad_scale = None
    for p in params:
        optimizer.init_state(p, h)
    tensorize(group, "lr", None, optimizer)
    for index in range(len(group.get("betas", ())) if optimizer.rule.estimate is None else 0):
        tensorize(group, "betas", index, optimizer)  # Prodigy's stay numbers: whether it keeps m is beta1 > 0
    tensorize_group_state(optimizer, group)
    position = {id(p): i for i, p in enumerate(group["params"])}
    return ReferencePlan(tuple(position[id(p)] for p in params))


def run(optimizer, group, plan: ReferencePlan) -> None:
    """The group's traced step: the reference path as the engine runs it (:meth:`step_groups`),
    with a two-phase rule's partial sums added up as float64 tensors, not Python floats."""
    rule = optimizer.rule
    h = _traced_hyperparameters(group, optimizer.defaults)
    if rule.combine is not None and rule.estimate is None:  # group-level state alone
        optimizer.estimate_step(group, h)  # in place; as the eager step, also with no grads
        h = _traced_hyperparameters(group, optimizer.defaults)
    if not plan.index:
        return
    params = [group["params"][i] for i in plan.index]
    if rule.estimate is None:
        for p in params:
            optimizer.reference_step(p, h, traced=True)
        return
    totals = None
    for p in params:
        parts = optimizer._on_tensors(p, h, lambda q, g, s: estimate(rule, q, g, s, h), traced=True)
        parts = [torch.as_tensor(x).to(torch.float64) for x in parts]  # the double a float() is
        totals = parts if totals is None else [a + b for a, b in zip(totals, parts)]
    after = rule.combine(totals, h)
    stop = after.pop("stop")  # the eager step would stop after phase 1: params kept
    for key in rule.estimate_keys:
        h.__dict__.pop(key, None)
    for p in params:
        new = optimizer._on_tensors(p, h, lambda q, g, s: torch.where(stop, q, update(rule, q, g, s, h)), traced=True)
        write_back(torch.view_as_real(p) if p.is_complex() else p, new, traced=True)
    write_group(group, after)


def _traced_hyperparameters(group, defaults):
    h = hyperparameters(group, defaults, traced=True)
    h.grad_scale = None
    return h
