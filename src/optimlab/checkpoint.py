"""Checkpoints that load both ways with torch.optim, including distributed ones.

Two rules make an optimlab ``state_dict()`` and a ``torch.optim`` one interchangeable,
also through ``torch.distributed.checkpoint`` (DCP), whose ``dcp.load`` asks the checkpoint
for every key of the loading optimizer's own ``state_dict()`` and fails on a missing one:

1. **optimlab-only group keys are written only when they differ from what torch.optim
   implies.** ``bias_correction=True`` is what every torch Adam/AdamW/Adamax/NAdam does, so
   it is left out; ``False`` is written and loads back (optimlab to optimlab). A checkpoint
   that lacks the key (torch's, or optimlab's with the default) loads as ``True``.

2. **Implementation flags stay the user's.** ``fused``, ``foreach``, ``capturable`` and
   ``differentiable`` choose *how* a step runs here (which kernel, whether CUDA graphs or
   autograd may see it), never *what* it computes: the trajectory is the same either way.
   torch.optim's ``load_state_dict`` takes them from the checkpoint like any group value,
   so a checkpoint written on a GPU with ``fused=True`` or ``capturable=True`` re-arms them
   on a CPU that cannot run them, and DCP's round trip (``get_optimizer_state_dict`` then
   ``set_optimizer_state_dict``) silently replaces a user's ``fused=False`` by the saved
   ``fused=None``. optimlab keeps the values each group had before the load, and places
   state (``step`` on the parameter's device for fused/capturable, as torch does) by them.
   Hyperparameters (``lr``, ``betas``, ``weight_decay``, ...) still come from the
   checkpoint, as in torch.

``torch.distributed.optim.ZeroRedundancyOptimizer``'s own ``load_state_dict`` copies every
group key into the wrapped optimizer's ``param_groups`` (``_sync_param_groups``) without
calling the wrapped ``load_state_dict``; the engine remembers each group's flags as built
and, where such a copy wrote torch's ``None`` over a flag the user set, puts it back at the
next ``step`` (``RuleOptimizer._keep_flags``; a value written by hand stays).
"""

from __future__ import annotations

import torch

#: Group keys that only optimlab has, with the value a torch.optim checkpoint implies.
OPTIMLAB_ONLY = {"bias_correction": True}

#: Group keys that select an implementation, not the update: kept from construction on load.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def for_torch(state_dict: dict) -> dict:
    """``state_dict`` with optimlab-only group keys dropped where they hold torch's value, and
    the numbers optimlab made 0-dim tensors for a traced step (:func:`as_tensor`: ``lr``,
    ``betas``, Prodigy's ``d``, schedule-free's ``k``...) as the numbers they stand for: the
    checkpoint the eager optimizer writes, which a fresh optimizer (float ``lr``) loads, through
    DCP too. A Tensor ``lr`` the user gave stays a tensor, as in torch."""
    groups = [{k: _number(v) for k, v in group.items()
               if not (k in OPTIMLAB_ONLY and _same(v, OPTIMLAB_ONLY[k]))}
              for group in state_dict["param_groups"]]
    for group, saved in zip(groups, state_dict["param_groups"]):
        # an LR scheduler made after a compiled step copied the made lr (its clone is unmarked)
        if _made(saved.get("lr")) and isinstance(saved.get("initial_lr"), torch.Tensor):
            group["initial_lr"] = float(saved["initial_lr"].item())
    return {**state_dict, "param_groups": groups}


def _made(value) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, "_optimlab_number", None) is not None


def as_tensor(value) -> torch.Tensor:
    """A group's number as the 0-dim float64 tensor a traced step reads (a graph input that a
    schedule updates in place), marked so that :func:`for_torch` writes the number back."""
    t = torch.tensor(float(value), dtype=torch.float64)
    t._optimlab_number = type(value)
    return t


def _number(value):
    if isinstance(value, tuple):
        return tuple(map(_number, value))
    kind = getattr(value, "_optimlab_number", None) if isinstance(value, torch.Tensor) else None
    return value if kind is None else kind(value.item())


def for_loading(state_dict: dict, current_groups: list[dict], defaults: dict) -> dict:
    """The checkpoint ``state_dict`` as this optimizer should load it: omitted optimlab-only
    keys filled with the value the writer used, and ``current_groups``' implementation flags
    in place of the saved ones. A group count that differs is left for torch to reject."""
    saved = state_dict.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(current_groups):
        return state_dict
    groups = []
    for group, current in zip(saved, current_groups):
        group = dict(group)
        for key, implied in OPTIMLAB_ONLY.items():
            if key in defaults:
                group.setdefault(key, implied)
        for key in IMPLEMENTATION_FLAGS:
            if key in current:
                group[key] = current[key]
            else:  # a flag this class does not have
                group.pop(key, None)
        groups.append(group)
    return {**state_dict, "param_groups": groups}


def implementation_flags(group: dict) -> dict:
    """``group``'s implementation flags (those it has)."""
    return {key: group[key] for key in IMPLEMENTATION_FLAGS if key in group}


def _same(value, default) -> bool:
    return type(value) is type(default) and value == default


def dense_state(optimizer) -> None:
    """Loaded state buffers in sparse layout made dense: torch's SGD keeps the momentum buffer
    of a param with sparse grads sparse (``clone(grad)``, then sparse additions); the rule's
    state is dense, as optimlab's own SGD makes it. Same values, so the trajectory goes on."""
    for p, state in optimizer.state.items():
        if isinstance(p, torch.Tensor) and p.layout == torch.strided:
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.is_sparse:
                    state[key] = value.to_dense()


def check_loaded_state(optimizer) -> None:
    """Refuse, when it loads, a per-parameter state the rule cannot step: a key the rule reads
    is missing, a buffer is shaped unlike the one the rule makes, or a key is one no setting
    of the loaded group makes. That is another optimizer's checkpoint (the authors' Adan keeps
    ``step`` in the group, prodigyopt keeps ``p0`` flattened, Adam's ``exp_avg`` in SGD),
    which would otherwise load and fail at the first ``step()``, or step on silently. A state
    whose values are all ``None`` is made afresh by the step, as in torch."""
    from .rules.base import hyperparameters

    rule, index = optimizer.rule, -1
    for group in optimizer.param_groups:
        h = None
        for p in group["params"]:
            index += 1
            state = optimizer.state.get(p)
            present = {k for k, v in (state or {}).items() if v is not None}
            if not present:
                continue
            h = h or hyperparameters(group, optimizer.defaults)
            made = {k: (True, None) for k in rule.scalar_fills(h)}
            for key, fill in rule.tensors(h).items():
                made[key] = _made_like(fill, p)
            missing = [k for k, (required, _) in made.items() if required and k not in present]
            foreign = [k for k in state if k not in made]
            wrong = [k for k in present if k in made and made[k][1] is not None
                     and torch.is_tensor(state[k]) and state[k].shape != made[k][1].shape]
            if missing or foreign or wrong:
                problems = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + \
                    ([f"has {', '.join(map(repr, foreign))}, which {type(optimizer).__name__} "
                      f"does not keep"] if foreign else []) + \
                    [f"has {k!r} shaped {tuple(state[k].shape)}, not {tuple(made[k][1].shape)}"
                     for k in wrong]
                found = ", ".join(f"{k} {tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}"
                                  for k, v in state.items())
                raise ValueError(
                    f"{type(optimizer).__name__}.load_state_dict: the state of param {index} "
                    f"(shape {tuple(p.shape)}) {'; '.join(problems)} (found: {found}). Is it "
                    f"another optimizer's checkpoint?")


def _made_like(fill, p) -> tuple:
    """``(required, like)`` for a state key the rule fills with ``fill``: whether a stepped
    state must have it (a ``None`` fill is made by the rule's own first step, from the grad),
    and a meta tensor shaped as the rule makes it (None where that takes real data to know)."""
    meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
    if fill is None:
        return False, meta
    if not callable(fill):
        return True, meta
    try:
        made = fill(meta)
    except Exception:
        return True, None
    return made is not None, made if torch.is_tensor(made) else None
