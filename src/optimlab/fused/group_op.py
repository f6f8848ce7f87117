"""A group's eager step as one op in the compiled graph, ``optimlab::group_step``, instead of a graph break.

Under Dynamo (:mod:`.compiled`) a group that neither the C kernel op, the printed graph nor the
traced reference path takes, or whose traced step Inductor makes slower than its eager one
(:data:`.traced_reference.TRACED_SLOWER`: LAMB except on small tensors, RAdam where the printed
graph would run), is
stepped by its eager step (the C kernel's generated passes, the multi-tensor path) called from
inside the caller's graph::

    group_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state, Tensor[] hps, int group) -> ()

``state`` is every tensor of the params' state (param by param, the 0-dim ``step`` too), ``hps``
the group's hyperparameters stored as 0-dim tensors (``lr``, ``betas``...: read by the eager
step when the op runs, graph inputs so the op is ordered after any write to them), ``group``
an index into :data:`_GROUPS`, a constant of the graph. The op declares what the step writes
(params, state), so the caller's reads and writes of them are ordered around it as around
torch's own in-place ops; nothing of the step is traced, so it costs its eager time plus one
op call, and the caller's graph stays whole.

Where Inductor re-inplaces the op (the default backend, the step alone in its graph) it
receives the caller's own tensors and the eager step runs on them. Where it does not
(``aot_eager``; Inductor too where the graph writes a param or the lr before the step), it
receives copies: the step then runs on the optimizer's tensors with the copies' values written
in first, and writes its results back into the copies, which the graph copies out at its end.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass

import torch

from .compiled_groups import eligible, own_hooks, tensorize_group_state, torch_types

#: index -> (weak reference to the optimizer, the group's position in its param_groups, GroupOpPlan.hps)
_GROUPS: list = []
_ids: dict = {}

_lib = torch.library.Library("optimlab", "FRAGMENT")
_lib.define("group_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state, Tensor[] hps, int group) -> ()")


@dataclass(eq=False)
class GroupOpPlan:
    """A group stepped by ``optimlab::group_step``: the params with grads (positions in
    ``group["params"]``)."""

    index: tuple
    hps: tuple  # (key, index) of the group's 0-dim tensor hyperparameters
    group: int  # index into _GROUPS


def _register(optimizer, position: int, hps: tuple) -> int:
    key = (id(optimizer), position, hps)
    found = _ids.get(key)
    if found is not None and _GROUPS[found][0]() is optimizer:
        return found
    _ids[key] = len(_GROUPS)
    _GROUPS.append((weakref.ref(optimizer), position, hps))
    return _ids[key]


def group_plan(optimizer, group) -> GroupOpPlan | None:
    """The plan where the group's eager step can run as an op: params and grads of torch's own
    dense types (no DTensor, no sparse grads), no ``differentiable`` group (autograd does not
    see through the op), the engine's own step (no class override, whose code could read
    tensors the op does not declare); else None (the eager step behind a graph break)."""
    if group.get("differentiable") or own_hooks(optimizer):
        return None
    params = [p for p in group["params"] if p.grad is not None]
    if not (all(map(eligible, params)) and all(map(torch_types, params))):
        return None
    tensorize_group_state(optimizer, group)
    position = {id(p): i for i, p in enumerate(group["params"])}
    at = next(i for i, g in enumerate(optimizer.param_groups) if g is group)
    hps = _tensor_hps(group, optimizer.rule.group_state)
    return GroupOpPlan(tuple(position[id(p)] for p in params), hps, _register(optimizer, at, hps))


def _tensor_hps(group, written) -> tuple:
    """Where the group holds 0-dim tensors the step reads (``lr``, ``betas``...; not the
    group-level state it ``written``), found once, eagerly: the traced step reads only those (a
    float it read would be guarded, and recompile when a schedule changes it)."""
    out = []
    for key, v in group.items():
        if key in written:
            continue
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            out.append((key, None))
        elif isinstance(v, tuple):
            out.extend((key, i) for i, x in enumerate(v) if isinstance(x, torch.Tensor) and x.dim() == 0)
    return tuple(out)


def run(optimizer, group, plan: GroupOpPlan) -> None:
    """The group's step while Dynamo traces: one ``optimlab::group_step``."""
    params = [group["params"][i] for i in plan.index]
    state = _state(optimizer, group, params)
    torch.ops.optimlab.group_step(params, [p.grad for p in params], state, _hps(group, plan.hps), plan.group)


def _hps(group, keys) -> list:
    return [group[k] if i is None else group[k][i] for k, i in keys]


def _group_step(params, grads, state, hps, group: int) -> None:
    ref, position, keys = _GROUPS[group]
    opt = ref()
    g = opt.param_groups[position]
    real = [p for p in g["params"] if p.grad is not None]
    own_state, own_hps = _state(opt, g, real), _hps(g, keys)
    same = _same(params, grads, state, real, own_state) and all(map(operator.is_, hps, own_hps))
    grad_mode = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        if same:
            opt.step_groups([g])
            return
        # copies (no re-inplacing): their values in (hyperparameters the graph wrote too), the
        # step on the optimizer's tensors, its results back out
        kept = [p.grad for p in real]
        torch._foreach_copy_(real + own_state + own_hps, list(params) + list(state) + list(hps))
        for p, gr in zip(real, grads):
            p.grad = gr
        try:
            opt.step_groups([g])
        finally:
            for p, gr in zip(real, kept):
                p.grad = gr
        torch._foreach_copy_(list(params) + list(state), real + own_state)
    finally:
        torch._C._set_grad_enabled(grad_mode)


def _same(params, grads, state, real, own_state) -> bool:
    """Whether the op received the optimizer's own tensors (re-inplaced), not copies."""
    return (len(real) == len(params) and all(map(operator.is_, params, real))
            and all(a is p.grad for a, p in zip(grads, real)) and all(map(operator.is_, state, own_state)))


def _state(opt, group, params) -> list:
    """What the step writes besides the params: the tensors of the params' state, param by
    param, in each state's own order, then the group-level state (``Rule.group_state``)."""
    return ([v for p in params for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
            + [group[k] for k in opt.rule.group_state if isinstance(group.get(k), torch.Tensor)])


_lib.impl("group_step", _group_step, "CompositeExplicitAutograd")


@torch.library.register_fake("optimlab::group_step", lib=_lib)
def _(params, grads, state, hps, group):
    return None
