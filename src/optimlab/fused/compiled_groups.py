"""What the compiled step (:mod:`.compiled`, :mod:`.traced_reference`) reads off a group.

Which params it may trace, whether the class replaces the engine's step, and hyperparameters
stored as 0-dim float64 tensors (graph inputs a schedule updates in place; see
:mod:`.compiled`).
"""

from __future__ import annotations

import math

import torch

from ..checkpoint import as_tensor


def eligible(p) -> bool:
    """A strided floating-point or complex param with a strided grad."""
    g = p.grad
    return (p.layout == torch.strided and g.layout == torch.strided
            and (p.is_floating_point() or p.is_complex()))


def torch_types(p) -> bool:
    """A param and grad of torch's own tensor types: no subclass (DTensor shards keep their
    eager step, which steps the local shards)."""
    return type(p) in (torch.Tensor, torch.nn.Parameter) and type(p.grad) is torch.Tensor


def tensorize(group: dict, key: str, index, optimizer=None) -> None:
    """Store a float hyperparameter as a 0-dim float64 tensor (see :mod:`.compiled`), which
    ``state_dict`` writes back as the number (:func:`optimlab.checkpoint.for_torch`).

    With ``optimizer`` given, a hyperparameter the user has written back as a number after it
    was made a tensor (``group["lr"] = base * warmup(i)`` each step, OneCycleLR's ``betas``)
    stays a number from then on: made a tensor again, the next number written would fail the
    frame's type guard at every step, to ``recompile_limit`` (a crash under
    ``fullgraph=True``). Left a number, Dynamo recompiles once more and then treats it as a
    symbolic float, as it does for torch.optim's float ``lr``."""
    value = group[key]
    leaf = value[index] if index is not None and isinstance(value, tuple) else value
    if optimizer is not None and isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
        at = next(i for i, g in enumerate(optimizer.param_groups) if g is group)
        made = optimizer.__dict__.setdefault("_made_tensors", set())
        numbers = optimizer.__dict__.setdefault("_user_numbers", set())
        if (at, key, index) in made:
            numbers.add((at, key, index))
        if (at, key, index) in numbers:
            return
        made.add((at, key, index))
    if index is not None:
        if not isinstance(value, tuple) or isinstance(value[index], (bool, torch.Tensor)):
            return
        v = value[index]
        if isinstance(v, (int, float)) and math.isfinite(v):
            group[key] = tuple(as_tensor(x) if i == index else x
                               for i, x in enumerate(value))
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        group[key] = as_tensor(value)


def tensorize_group_state(optimizer, group: dict) -> None:
    """The group-level state the step writes (``Rule.group_state``: Prodigy's ``d``,
    schedule-free's ``k`` and sums) as 0-dim float64 tensors, updated in place by the step
    (Prodigy's ``d_denom`` and ``d_hat``, written from the first step on, start at 0): a float
    there would be guarded, and recompile at every step."""
    for key in optimizer.rule.group_state:
        group.setdefault(key, 0.0)
        tensorize(group, key, None)


STEP_METHODS = ("estimate_step", "unfused_step", "reference_step", "step_groups", "init_state")


def own_hooks(optimizer, methods=STEP_METHODS) -> bool:
    """The class changes the engine's step (schedule-free's train-mode check in its
    ``estimate_step``) in one of ``methods``."""
    from ..engine import RuleOptimizer

    cls = type(optimizer)
    return any(getattr(cls, name, None) is not getattr(RuleOptimizer, name, None) for name in methods)
