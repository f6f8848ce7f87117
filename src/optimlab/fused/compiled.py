"""The step under ``torch.compile``: the C kernel as an op in the graph, or the traced graph printed for Dynamo.

``torch.compile(opt.step)``, or a compiled function that calls ``opt.step()``, reaches
:func:`step` (the engine's ``step`` checks ``torch.compiler.is_compiling()``). Nothing
here builds or hashes anything or touches a file while Dynamo traces: all of that happens
in :func:`prepare`, which the engine exposes as the optimizer's ``_init_group``. Dynamo
runs a method of that name *eagerly*, once per compilation, and then guards on the
optimizer's params, grads, state and param groups (``torch/_dynamo/variables/optimizer.py``),
exactly as it does for torch.optim.

Four modes (:data:`MODE`), measured side by side by ``benchmarks/compile_step.py``:

* ``"step_op"`` (default): where the compiled frame is the step itself
  (``torch.compile(opt.step)``, no closure), no graph: the frame's bytecode calls the eager
  step (a call Dynamo replays), or where Dynamo would not replay it, the whole eager step as
  one op, ``optimlab::step``, with no tensor in the graph (:mod:`.step_op`); anywhere else
  (the step inside a larger compiled function), as ``"kernel"``.
* ``"kernel"``: a group the C kernel takes (dense CPU tensors it can address, a
  working compiler, ``fused`` not False) is stepped by the custom op
  ``optimlab::fused_step`` (:mod:`.kernel_op`), one call per bucket, *inside* the graph:
  no graph break, hyperparameters as graph inputs, re-inplaced by Inductor. Every
  element-wise rule the eager path fuses is covered, RAdam's, Rprop's, ASGD's and Lion's
  masks and signs included. Other groups (CUDA, no compiler, DTensor) take the printed graph.
* ``"printed"``: the rule's graph (:mod:`.trace`, the same DAG the C kernel and the
  multi-tensor path are printed from) printed as ``torch._foreach_*`` operations over the
  group's tensor lists (:mod:`.compiled_print`) for Inductor to fuse into one loop per tensor.
* ``"kept_out"``: the eager step (C kernel) behind one graph break.

No recompiles when hyperparameters change every step
----------------------------------------------------
In ``"step_op"``'s whole-frame case the graph reads no hyperparameter at all (the eager step
reads them when the op runs), so nothing below applies there. Elsewhere, Dynamo specializes a float it reads from a param group: with a per-step schedule a float
``lr`` recompiles at every step until ``recompile_limit``, as torch.optim does. So on
the first compilation :func:`prepare` stores every numeric hyperparameter the rule uses
but never branches on (``lr``, ``betas``, ``eps``, ``alpha``...) as a 0-dim float64
tensor in its group, torch's own recipe (``lr=torch.tensor(...)``): torch's and
optimlab's LR schedulers then update it in place (``fill_``), a graph input, and eager
steps read it as a number. Hyperparameters a rule branches on (``weight_decay != 0``,
``momentum != 0``) stay numbers: the traced graph depends on their sign. A change of
their value compiles once more, after which Dynamo treats them as symbolic with a guard
on the sign only. SGD with momentum compiles twice, as torch.optim's does: its first
step creates the momentum buffer.

Groups neither mode takes, rules with reductions (Adafactor, LARS), rules with group-level
state (Prodigy's two phases, schedule-free's schedule) and, in the printed mode, Rprop's,
ASGD's and Lion's masks and signs, are stepped by the reference path itself,
:func:`optimlab.rules.update` traced by Dynamo (:mod:`.traced_reference`), one param at a
time, scalar and group-level state and ``lr``/``betas`` as tensors. The rules whose traced
step is slower than their eager one (:data:`.traced_reference.TRACED_SLOWER`: LAMB except on
small tensors, RAdam where the printed graph would run), and any other group of dense plain
tensors none of these takes, run their eager step as one op in the graph,
``optimlab::group_step`` (:mod:`.group_op`). What remains (``differentiable=True``, sparse grads, other layouts, tensor
subclasses, a class that overrides the step, GradScaler's ``found_inf``) runs the eager step
for that group, behind one graph break; its ``lr`` is made a tensor all the same, so a schedule
does not recompile the frame around the break.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import group_op, kernel_op, step_op, traced_reference
from .compiled_groups import eligible, own_hooks, tensorize
from .traced_reference import ReferencePlan, reference_plan
from ..rules.base import hyperparameters
from .compiled_print import generate
from .trace import TraceError, trace

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}
_programs: dict = {}
#: How a group is stepped under Dynamo (see the module docstring): "step_op" (default),
#: "kernel", "printed" or "kept_out"; ``benchmarks/compile_step.py`` measures them side by side
MODE = "step_op"
MODES = ("step_op", "kernel", "printed", "kept_out")


@dataclass(eq=False)
class Bucket:
    """Params of one group sharing one program: same device, dtype, state dtypes, lazy state."""

    index: tuple  # positions in group["params"]
    trace: object
    run: object
    compute: torch.dtype
    complex: bool
    copied: frozenset  # buffers not in the compute dtype: computed on copies


@dataclass(eq=False)
class GroupPlan:
    buckets: list
    hps: list  # (key, index) leaves read by any bucket, in Bucket.trace.hps terms
    signs: list  # (key, index) of numbers a rule branched on: their sign is guarded


def _clear_stale_float_specializations(args) -> None:
    """At the start of a Dynamo frame compilation, forget the float names an earlier frame's
    restart specialized. torch 2.13 keeps ``TensorifyState.force_specializations`` after a
    successful compilation; a later frame's float of the same name (``zf98``: Adam's ``beta1``
    written every step, OneCycleLR's ``cycle_momentum``) is then specialized at every value,
    one graph each to ``recompile_limit``. The set is meant for the restarts of one frame:
    this runs once per frame, before its first attempt (``install_callbacks``), never between
    the attempts of a frame being compiled."""
    from torch._dynamo.callback import CallbackTrigger
    from torch._dynamo.symbolic_convert import TensorifyState

    if args.callback_trigger == CallbackTrigger.DYNAMO:
        TensorifyState.clear()


def _install_float_specialization_reset() -> bool:
    try:
        from torch._dynamo.callback import callback_handler
        from torch._dynamo.symbolic_convert import TensorifyState
    except ImportError:  # another torch: nothing of this to work around
        return False
    if not hasattr(TensorifyState, "clear"):
        return False
    if _clear_stale_float_specializations not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(_clear_stale_float_specializations)
    return True


def _program(rule, h, lazy: frozenset):
    from .plan import hkey

    key = (rule.fn, rule.tensors, tuple(rule.scalars.items()), hkey(h), lazy)
    found = _programs.get(key)
    if found is None:
        try:
            tr = trace(rule, h, lazy)
            found = (tr, generate(tr)[0])
        except TraceError as e:
            found = e
        _programs[key] = found
    if isinstance(found, Exception):
        raise found
    return found


def _group_plan(optimizer, group, grad_scale):
    rule = optimizer.rule
    if (group.get("differentiable") or not getattr(rule, "elementwise", True)
            or getattr(rule, "estimate", None) is not None or own_hooks(optimizer)):
        return None
    params = [p for p in group["params"] if p.grad is not None]
    if not all(map(eligible, params)):
        return None
    h = hyperparameters(group, optimizer.defaults)
    h.grad_scale = grad_scale
    rule = optimizer.rule
    fills = rule.tensors(h)
    members: dict = {}
    for p in params:
        st = optimizer.init_state(p, h)
        lazy = frozenset(k for k, f in fills.items() if f is None and k in st)
        sdtypes = tuple(st[k].dtype for k in fills if k in st) + tuple(st[k].dtype for k in rule.scalars)
        members.setdefault((p.device, p.dtype, lazy, sdtypes), []).append(p)
    position = {id(p): i for i, p in enumerate(group["params"])}
    buckets, hps, signs = [], [], []
    for (_, dtype, lazy, _), ps in members.items():
        try:
            tr, run = _program(rule, h, lazy)
        except TraceError:
            return None
        real = _REAL.get(dtype, dtype)
        compute = torch.float32 if real in _LOW_PRECISION else real
        st = optimizer.state[ps[0]] if ps[0] in optimizer.state else {}
        dtypes = {"param": dtype, "grad": ps[0].grad.dtype, **{b: st[b].dtype for b in tr.buffers if b in st}}
        copied = frozenset(b for b, d in dtypes.items() if _REAL.get(d, d) != compute)
        buckets.append(Bucket(tuple(position[id(p)] for p in ps), tr, run, compute, ps[0].is_complex(), copied))
        for name, key, index in tr.hps:
            if key != "grad_scale" and (key, index) not in hps:
                hps.append((key, index))
                (signs if name in tr.graph.compared else []).append((key, index))
    return GroupPlan(buckets, hps, signs)


def _init_state(optimizer, group) -> None:
    """The state of a group left to the eager step, made now: made by that step, after the
    frame's guards on the state, it would recompile the frame at the second step."""
    h = hyperparameters(group, optimizer.defaults)
    for p in group["params"]:
        if p.grad is not None:
            optimizer.init_state(p, h)


def _plan(optimizer, group, grad_scale):
    """The group's kernel plan (``MODE == "kernel"`` and the C kernel takes the group), else its
    printed plan, else its reference plan (the only one for group-level state: Prodigy,
    schedule-free), else its eager step as one op (:mod:`.group_op`), else None (the eager step
    behind a break); hyperparameters as tensors."""
    if MODE not in MODES:
        raise ValueError(f"optimlab.fused.compiled.MODE must be one of {MODES}, not {MODE!r}")
    if own_hooks(optimizer) or optimizer.rule.combine is not None:  # group-level state
        plan = reference_plan(optimizer, group, grad_scale)
    else:
        plan = kernel_op.group_plan(optimizer, group, grad_scale) if MODE in ("step_op", "kernel") else None
        plan = plan or _group_plan(optimizer, group, grad_scale) or reference_plan(optimizer, group, grad_scale)
    if plan is None:  # the eager step as an op, else behind a break: lr a tensor, no recompiles
        if group.get("differentiable"):
            return None
        tensorize(group, "lr", None, optimizer)
        _init_state(optimizer, group)
        return group_op.group_plan(optimizer, group)
    if isinstance(plan, ReferencePlan):
        return plan
    hps = plan.hps if ("lr", None) in plan.hps or "lr" not in group else [*plan.hps, ("lr", None)]
    for key, index in hps:  # lr too where only the state's first fill reads it (Rprop's step size)
        if (key, index) not in plan.signs:
            tensorize(group, key, index, optimizer)
    return plan


@torch._dynamo.disable
def prepare(optimizer) -> bool:
    """Eager work for one compilation (the optimizer's ``_init_group``): state, buckets,
    kernels or programs, tensor hyperparameters; the plan is kept on the optimizer."""
    optimizer._opt_called = True  # for LR schedulers (see engine._hooked): Dynamo drops the store
    _install_float_specialization_reset()  # here: once per compilation, after any torch._dynamo.reset()
    grad_scale = getattr(optimizer, "grad_scale", None)
    grad_scale = None if grad_scale is None else float(grad_scale)
    _break_if_written_in_frame(optimizer)
    plans, before = [], [dict(group) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        optimizer._keep_flags(group)
        plans.append(_plan(optimizer, group, grad_scale))
    optimizer._compiled_plans = tuple(plans)
    _restart_if_seen(optimizer.param_groups, before)
    return True


def _dynamo_tx():
    """The instruction translator of the frame Dynamo is tracing, or None (called eagerly)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        return InstructionTranslator.current_tx()
    except Exception:
        return None


def _break_if_written_in_frame(optimizer) -> None:
    """A graph break before the step where the frame wrote a param group ahead of it
    (``group["lr"] = base * warmup(t)`` and then ``opt.step()`` in one compiled function):
    the write is pending in Dynamo's trace, while :func:`prepare` reads the group as it
    stands (state that starts at ``lr``, Rprop's step size; the sign of ``weight_decay`` a
    program is traced for). The step then runs eagerly after the write, as torch.optim's
    step always does (it breaks the graph before and after every step)."""
    tx = _dynamo_tx()
    if tx is None:
        return
    try:
        effects = tx.output.side_effects
        written = [o for o in (optimizer.param_groups, *optimizer.param_groups)
                   if id(o) in effects.id_to_variable and effects.is_modified(effects.id_to_variable[id(o)])]
    except AttributeError:  # another torch's internals
        return
    if written:
        from torch._dynamo.exc import unimplemented

        unimplemented(
            gb_type="optimlab: param group written before the step in the same frame",
            context=f"{type(optimizer).__name__}.step()",
            explanation="The frame writes a param group (lr, betas, ...) and then steps: optimlab "
                        "steps eagerly after the write, as torch.optim's step does.",
            hints=["Write hyperparameters outside the compiled function (an LR scheduler's "
                   "step after it): no break."])


def _restart_if_seen(groups: list, before: list) -> None:
    """Restart Dynamo's analysis of the frame where :func:`prepare` rewrote a param group
    (a hyperparameter made a tensor, a flag put back) that the frame had already read before
    the step (``group["lr"] = ...`` ahead of ``opt.step()``): Dynamo's copy of that group
    holds the old values, and the analysis that follows a graph break further on would read
    the new ones (a diverged speculation log). The restart reads them from the start; the
    next :func:`prepare` rewrites nothing, so it restarts once. As Dynamo's own
    ``nn.Module`` unspecialization does."""
    changed = [g for g, b in zip(groups, before)
               if g.keys() != b.keys() or any(g[k] is not v for k, v in b.items())]
    if not changed:
        return
    tx = _dynamo_tx()
    if tx is None:  # called eagerly, not from Dynamo's trace
        return
    try:
        seen = tx.output.side_effects.id_to_variable
        if not any(id(g) in seen for g in changed):
            return
    except AttributeError:  # another torch's internals: restart to be safe
        pass
    raise torch._dynamo.exc.UnspecializeRestartAnalysis(
        restart_reason="optimlab: param group hyperparameters made tensors")


def _as_real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _hp(optimizer, group, key, index):
    v = getattr(optimizer, "grad_scale") if key == "grad_scale" else group[key]
    if index is not None:
        v = v[index]
    return v.to(torch.float64) if isinstance(v, torch.Tensor) else v


@torch._dynamo.disable
def _eager_group_list(optimizer, groups: list) -> None:
    """Groups on the eager step (the C kernel, multi-tensor or reference path): one graph
    break after the in-graph groups, outside any loop (Dynamo skips a whole frame whose loop
    breaks the graph)."""
    optimizer.step_groups(groups)


@torch._dynamo.disable
def _eager_groups(optimizer) -> None:
    optimizer._opt_called = True
    optimizer.step_groups(optimizer.param_groups)


def _run_bucket(optimizer, group, b: Bucket) -> None:
    params = group["params"]
    ps = [params[i] for i in b.index]
    tr, dt = b.trace, b.compute
    stateful = len(tr.buffers) > 2 or tr.scalar_inputs or tr.scalar_outputs
    states = [optimizer.state[p] for p in ps] if stateful else [{} for _ in ps]
    lists = []
    for name in tr.buffers:
        if name == "param":
            ts = ps
        elif name == "grad":
            ts = [p.grad for p in ps]
        elif name in states[0]:
            ts = [st[name] for st in states]
        else:  # lazily created state, only written
            lists.append(None)
            continue
        ts = [_as_real(t) for t in ts] if b.complex else ts
        lists.append([t.to(dt) for t in ts] if name in b.copied else ts)
    hp = [_hp(optimizer, group, key, index) for _, key, index in tr.hps]
    si = [torch.stack([st[k] for st in states]).to(torch.float64) for k in tr.scalar_inputs]
    sd = [states[0][k].dtype for k in tr.scalar_inputs]  # one dtype per key in a bucket
    new, snew = b.run(lists, hp, si, len(ps), dt, sd)
    for name, values in zip(tr.elem_outputs, new):
        if name == "param":
            dest = ps
        else:
            for p, st in zip(ps, states):
                if name not in st:
                    st[name] = torch.empty_like(p, memory_format=torch.preserve_format)
            dest = [st[name] for st in states]
        torch._foreach_copy_([_as_real(t) for t in dest] if b.complex else dest, values)
    for key, values in zip(tr.scalar_outputs, snew):
        dest = [st[key] for st in states]
        torch._foreach_copy_(dest, list(values.to(dest[0].dtype).unbind(0)))


def step(optimizer, closure=None):
    """The engine's ``step`` while Dynamo traces (see the module docstring)."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    if MODE == "step_op" and closure is None and step_op.whole_frame():
        step_op.run(optimizer)
        return loss
    if MODE == "kept_out" or getattr(optimizer, "found_inf", None) is not None:
        _eager_groups(optimizer)
        return loss
    optimizer._init_group()  # eager, once per compilation: Dynamo's optimizer hook
    plans = optimizer._compiled_plans
    for group, plan in zip(optimizer.param_groups, plans):
        if plan is None:
            continue
        if isinstance(plan, ReferencePlan):
            traced_reference.run(optimizer, group, plan)
            continue
        if isinstance(plan, group_op.GroupOpPlan):
            group_op.run(optimizer, group, plan)
            continue
        for key, index in plan.signs:  # guard the sign the program was traced for
            v = group[key] if index is None else group[key][index]
            if not isinstance(v, torch.Tensor) and (v > 0 or v < 0):
                pass
        if isinstance(plan, kernel_op.KernelPlan):
            kernel_op.run(optimizer, group, plan)
            continue
        for b in plan.buckets:
            _run_bucket(optimizer, group, b)
    if None in plans:
        _eager_group_list(optimizer, [g for g, plan in zip(optimizer.param_groups, plans) if plan is None])
    return loss
