"""The engine: everything an optimizer does besides its update rule.

:class:`RuleOptimizer` is a ``torch.optim.Optimizer`` whose subclasses name a
:class:`~optimlab.rules.Rule`. The engine owns param groups, lazy state with torch's
keys, the learning rate, ``maximize``, coupled/decoupled weight decay, dtypes, complex
parameters, and the choice between the fused kernel and the reference path.

The whole per-parameter step is :func:`optimlab.rules.update`, written once. The reference path runs it
on tensors; the fused path (:mod:`optimlab.fused`) traces it symbolically and compiles it.
``differentiable=True`` (autograd through the step, as torch.optim's) always takes the
reference path, with grad mode on.
"""

from __future__ import annotations

import functools
import operator
from typing import ClassVar

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

from . import checkpoint
from ._math import StateNumber
from .rules import Rule, update  # noqa: F401  (update: the step the reference path runs)
from .rules.base import estimate, write_back, write_group
from .rules.base import Namespace, hyperparameters  # noqa: F401  (the group as the rules read it)

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_grad = operator.attrgetter("grad")
_is_sparse = operator.attrgetter("is_sparse")
_is_none = functools.partial(operator.is_, None)

def _observed(optimizer) -> bool:
    """Whether anything watches a step: step hooks (global or the optimizer's) or a profiler.

    ``len``, not the dicts' truth: Dynamo guards ``bool(d)`` of these dicts on their type only,
    so a hook registered after a compilation was silently never called by the compiled step;
    ``len(d)`` is guarded on the length (a new hook recompiles)."""
    return bool(len(optimizer._optimizer_step_pre_hooks) or len(optimizer._optimizer_step_post_hooks)
                or len(getattr(_torch_optimizer, "_global_optimizer_pre_hooks", (None,)))
                or len(getattr(_torch_optimizer, "_global_optimizer_post_hooks", (None,)))
                or (not torch.compiler.is_compiling() and torch.autograd._profiler_enabled()))


def _hooked(step):
    """``step`` wrapped as torch.optim wraps every ``step`` (hooks, a profiler range), but
    run bare when nothing observes it: the wrapper costs ~25 us, as much as a small step.

    It also records the call for torch's LR schedulers (``_opt_called``, what their
    "scheduler stepped before the optimizer" warning reads) and says so
    (``_wrapped_by_lr_sched``), so that a scheduler does not wrap ``opt.step`` in a function
    of its own: that function lives in ``torch/optim/lr_scheduler.py``, a file Dynamo skips,
    so ``torch.compile(opt.step)`` would break the graph there and run the step as three
    frames (the break, ``_observed``, the step), each with its guards."""
    observed = Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        compiling = torch.compiler.is_compiling()
        if not compiling:  # Dynamo drops it: compiled.prepare sets it
            self._opt_called = True
        if _observed(self):
            return observed(self, *args, **kwargs)
        if compiling and not args and not kwargs:
            from .fused import step_op

            if step_op.frame_owner() == id(self):  # torch.compile(opt.step): no graph at all
                step_op.replayed_step(id(self))  # called by the frame's own bytecode
                return None
        return step(self, *args, **kwargs)

    wrapper.hooked = True  # torch.optim.Optimizer would wrap it again otherwise
    wrapper._wrapped_by_lr_sched = True  # an LR scheduler would wrap it otherwise
    return wrapper


def scalar_dtype() -> torch.dtype:
    """dtype of 0-dim state such as ``step``: torch.optim's ``_get_scalar_dtype()``."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def as_real(t: torch.Tensor) -> torch.Tensor:
    """Complex tensors are updated as real views (re, im) pairs, like torch.optim."""
    return torch.view_as_real(t) if t.is_complex() else t


def _use_grad_for_differentiable(step):
    """Run ``step`` with autograd on only for ``differentiable=True`` optimizers, as
    torch.optim's decorator of the same name does (even inside the caller's ``no_grad``)."""

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            return step(self, *args, **kwargs)

    return wrapper


class RuleOptimizer(Optimizer):
    """Base class: a subclass sets ``rule`` and validates its constructor arguments."""

    rule: ClassVar[Rule]
    #: GradScaler's fused protocol: it sets ``grad_scale`` and ``found_inf`` on the optimizer
    #: instead of unscaling the grads itself; the step unscales and skips on inf.
    _step_supports_amp_scaling: ClassVar[bool] = True
    #: the error for a sparse gradient where the rule takes none: torch.optim's words
    #: (``"<class> does not support sparse gradients"`` when None)
    sparse_refusal: ClassVar[str | None] = None

    def __setstate__(self, state):
        # torch's __setstate__ adds "differentiable" to the defaults; a class without that
        # argument (Adafactor, Muon) must not get it in its groups
        defaults = dict(state.get("defaults") or self.__dict__.get("defaults") or {})
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in (defaults or self.defaults).items():
                group.setdefault(key, value)
        for param_state in self.state.values():
            for key, value in list(param_state.items()):
                if key in self.rule.scalars and not torch.is_tensor(value):
                    param_state[key] = torch.tensor(float(value), dtype=scalar_dtype())

    def state_dict(self) -> dict:
        """torch.optim's ``state_dict``, without optimlab-only group keys at torch's value
        (see :mod:`optimlab.checkpoint`), so that torch and DCP load it as their own; the numbers a
        traced step keeps as tensors (``lr``, Prodigy's ``d``, ...) written as numbers."""
        return checkpoint.for_torch(super().state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim's ``load_state_dict``, except that ``fused``/``foreach``/``capturable``/
        ``differentiable`` stay as constructed (see :mod:`optimlab.checkpoint`)."""
        before = self.state, self.param_groups   # torch's load replaces both
        super().load_state_dict(checkpoint.for_loading(state_dict, self.param_groups, self.defaults))
        try:
            checkpoint.check_loaded_state(self)
            checkpoint.dense_state(self)
        except ValueError:
            self.state, self.param_groups = before
            raise
        self._flags_as_built = {id(g): checkpoint.implementation_flags(g) for g in self.param_groups}
        self.__dict__.pop("_made_tensors", None)  # new groups: compiled.tensorize starts afresh
        self.__dict__.pop("_user_numbers", None)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self.__dict__.setdefault("_flags_as_built", {})[id(group)] = checkpoint.implementation_flags(group)

    def _keep_flags(self, group: dict) -> None:
        """Put back an implementation flag the user chose at construction where a ``None``
        ("the saver did not choose") was written over it without ``load_state_dict``:
        ZeroRedundancyOptimizer's ``_sync_param_groups`` copies a checkpoint's group keys
        straight in. Any other value written by hand is the user's and stays."""
        built = self.__dict__.get("_flags_as_built", {}).get(id(group))
        if built:
            for key, value in built.items():
                if value is not None and group.get(key, value) is None:
                    group[key] = value

    def init_state(self, p: torch.Tensor, h: Namespace) -> dict:
        """Create ``self.state[p]`` with torch.optim's keys, in torch.optim's order.

        A rule without state (plain SGD) leaves ``self.state`` untouched, as torch does.
        """
        if p not in self.state and not self.rule.scalars and not self.rule.tensors(h):
            return {}
        state = self.state[p]
        if any(map(_is_none, state.values())):
            # a buffer saved as None (torch < 2.2 wrote SGD's momentum_buffer so): not made yet
            fills = self.rule.tensors(h)
            for key in [k for k, v in state.items() if v is None and k in fills]:
                del state[key]
        if not state:
            # a fill computed from a Tensor hyperparameter (differentiable=True: ASGD's eta and
            # Rprop's step size start at lr) keeps its graph
            dtype = torch.float32 if h.fused else scalar_dtype()  # torch's _get_scalar_dtype(is_fused)
            for key, value in self.rule.scalar_fills(h).items():
                state[key] = (value.to(dtype).clone() if torch.is_tensor(value)
                              else torch.tensor(value, dtype=dtype))
            for key, fill in self.rule.tensors(h).items():
                if callable(fill):  # a state whose shape is not the param's (Adafactor's row_var)
                    value = fill(p)
                    if value is not None:
                        state[key] = value
                elif torch.is_tensor(fill):
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format).add(fill)
                elif fill is not None:
                    # a complex parameter is stepped as (re, im) pairs: both halves start at
                    # the fill (torch's Adagrad: sum = v + vj)
                    fill = complex(fill, fill) if p.is_complex() else fill
                    state[key] = torch.full_like(p, fill, memory_format=torch.preserve_format)
        return state

    @_hooked
    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss, if given."""
        if torch.compiler.is_compiling():  # Dynamo traces: the graph printed for it to fuse
            # Imported here: the module imports Dynamo (~2 s), which only torch.compile needs.
            from .fused import compiled

            return compiled.step(self, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.step_groups(self.param_groups)
        return loss

    def _init_group(self) -> bool:
        """torch.compile's hook: Dynamo runs a method of this name eagerly, once per
        compilation, instead of tracing it (state, programs; see :mod:`optimlab.fused.compiled`)."""
        from .fused import compiled

        return compiled.prepare(self)

    def step_groups(self, groups: list) -> None:
        """The eager step of ``groups`` (the closure, if any, has run)."""
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) != 0:
            return  # GradScaler found inf/nan in the grads: skip, state untouched
        grad_scale = getattr(self, "grad_scale", None)
        grad_scale = None if grad_scale is None else float(grad_scale)
        for group in groups:
            self._keep_flags(group)
            h = hyperparameters(group, self.defaults)
            h.grad_scale = grad_scale
            if self.rule.combine is None:
                self._step_group(group, h)
                continue
            after = self.estimate_step(group, h)  # group-level values first (sums, or a schedule)
            if not after:
                continue
            if after is True:  # group-level scalar state, already written into the group
                h = hyperparameters(group, self.defaults)
                h.grad_scale = grad_scale
                self._step_group(group, h)
                continue
            for key in self.rule.estimate_keys:  # a two-phase rule: sums written after the step
                h.__dict__.pop(key, None)
            self._step_group(group, h)
            write_group(group, after)

    def _step_group(self, group: dict, h: Namespace) -> None:
        """One group's step: the steady or planned C kernel, FSDP2 shards, or the unfused paths."""
        use_fused = (group.get("fused") is not False and group.get("foreach") is not True
                     and not group.get("differentiable") and self.rule.elementwise)
        if use_fused:
            from . import fused
            from .fused import shards

            if fused.try_steady_step(self, group, h):
                return
            if shards.any_dtensor(group["params"]):  # FSDP2, tensor parallel
                shards.step(self, group, h)
                return
        params = group["params"]
        grads = list(map(_grad, params))
        if any(map(_is_none, grads)):  # not `None in grads`: that calls Tensor.__eq__
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        if not params:
            return
        if use_fused and fused.try_step(self, group, params, grads, h):  # checks grads when needed
            return
        self._check_grads(params)
        self.unfused_step(group, params, h)

    def unfused_step(self, group: dict, params: list, h: Namespace, vouch=None) -> None:
        """Params (with grads) the C kernel did not take: torch's own fused kernel where the
        rule is one torch ships (:mod:`optimlab.fused.torch_kernels`, default flags only), the
        multi-tensor path (:mod:`optimlab.fused.foreach`) unless ``foreach=False`` (a rule
        with reductions: its generated passes, :mod:`optimlab.fused.passes`, on DTensors their
        local shards, :mod:`optimlab.fused.passes_shards`), else the reference path.
        ``vouch``: the C path's plan when it has just checked that ``params`` are the objects,
        with the storage, it was built for (the backends' caches built under the same plan
        then skip that check)."""
        from .fused import foreach, torch_kernels

        params = torch_kernels.step(self, group, params, h, vouch)
        if self.rule.elementwise:
            rest = foreach.step(self, group, params, h, vouch)
        else:  # reductions, matrix products: generated passes (optimlab.fused.passes)
            from .fused import passes, passes_shards

            stepped = params
            params = passes_shards.step(self, group, params, h)  # DTensors: on their shards
            rest = passes.step(self, group, params, h)
            if h.grad_scale is not None:  # the passes leave the grads as they were
                left = set(map(id, rest))
                _unscale_grads([p for p in stepped if id(p) not in left], h.grad_scale)
        for p in rest:
            self.reference_step(p, h)

    def estimate_step(self, group: dict, h: Namespace) -> dict | None:
        """Phase 1 of a two-phase rule (see :class:`~optimlab.rules.Rule`): the per-parameter
        partial sums of ``rule.estimate`` over the group's params with grads, added up in
        double, handed to ``rule.combine``; returns the group values it gives (written into
        ``group`` after phase 2), or None when the step stops here. A rule with ``combine``
        but no ``estimate`` (group-level scalar state: Schedule-Free) gets
        ``combine((), group)``, which writes into ``group`` and returns True."""
        if self.rule.estimate is None:
            return self.rule.combine((), group)
        params = [p for p in group["params"] if p.grad is not None]
        self._check_grads(params)
        from .fused import passes, passes_shards

        params, totals = passes_shards.estimate(self, group, params, h)  # DTensors: on their shards
        params, more = passes.estimate(self, group, params, h)  # the generated pass first
        if more is not None:
            totals = more if totals is None else [a + b for a, b in zip(totals, more)]
        for p in params:
            parts = self._on_tensors(p, h, lambda q, g, s: estimate(self.rule, q, g, s, h))
            parts = [float(x) for x in parts]
            totals = parts if totals is None else [a + b for a, b in zip(totals, parts)]
        if totals is None:
            return None
        return self.rule.combine(totals, h)

    def _check_grads(self, params):
        if self.rule.sparse_ok or not any(map(_is_sparse, map(_grad, params))):
            return
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError(self.sparse_refusal or f"{type(self).__name__} does not support sparse gradients")

    def reference_step(self, p: torch.Tensor, h: Namespace, traced: bool = False) -> None:
        """The readable path: run :func:`update` on tensors for one parameter.

        With ``h.differentiable`` (under grad mode) autograd records the step, as in
        torch.optim: ``p`` and the state are read through clones and written back in
        place with ``copy_``, so the graph runs through them into the next step, and a
        scalar state that requires grad (NAdam's ``mu_product``) stays a tensor.
        """
        new_p = self._on_tensors(p, h, lambda q, g, s: update(self.rule, q, g, s, h), traced)
        write_back(as_real(p), _placed_like(new_p, p), traced)
        if h.grad_scale is not None:
            _unscale_grads([p], h.grad_scale)

    def _on_tensors(self, p: torch.Tensor, h: Namespace, run, traced: bool = False):
        """``run(p, g, s)`` on ``p``'s tensors and state (see :meth:`reference_step`); the
        state ``run`` rebinds in ``s`` is written back. Returns what ``run`` returns.
        ``traced`` (Dynamo traces the step, :mod:`optimlab.fused.compiled`): scalar state
        (``step``) is read as a float64 tensor, not with ``item()``, which would break the graph."""
        state = self.init_state(p, h)
        grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
        compute = torch.float32 if p.dtype in _LOW_PRECISION else None
        differentiable = h.differentiable
        if differentiable and "step" in state and state["step"].requires_grad:
            raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")

        def load(t, keep=False):
            t = as_real(t)
            t = t.to(compute) if compute is not None else t
            # the in-place write-back below would invalidate tensors autograd saved from t
            return t.clone() if keep else t

        keys = self.rule.tensors(h)
        s = Namespace()
        for key in self.rule.scalars:
            value = state[key]
            if traced:  # float64: the double a Python float would be
                setattr(s, key, value.to(torch.float64))
            else:
                setattr(s, key, value.clone() if differentiable and value.requires_grad
                        else StateNumber(value.item(), value.dtype))
        for key in keys:  # lazily created state (SGD's momentum buffer) is None at first
            setattr(s, key, load(state[key], differentiable) if key in state else None)
        old = dict(vars(s))

        result = run(load(p, differentiable), load(grad), s)

        for key in self.rule.scalars:
            value = getattr(s, key)
            if torch.is_tensor(value):
                write_back(state[key], value, traced)
            else:
                state[key].fill_(value)
        for key in keys:
            value = getattr(s, key)
            if value is old[key]:
                continue
            if key not in state:
                state[key] = torch.empty_like(p, memory_format=torch.preserve_format)
            write_back(as_real(state[key]), _placed_like(value, state[key]), traced)
        return result


def _placed_like(value, target):
    """``value`` laid out as ``target`` where both are DTensors with other placements: a
    DTensor ``copy_`` cannot change placements (Adafactor's col_var of a (1, m) FSDP2 weight
    is sharded like the weight, its new value replicated)."""
    placements = getattr(target, "placements", None)
    if placements is None or getattr(value, "placements", placements) == placements:
        return value
    return value.redistribute(target.device_mesh, placements)


def _unscale_grads(params: list, scale: float) -> None:
    """GradScaler's fused protocol: after the step ``p.grad`` holds ``grad / grad_scale``, as
    torch's fused kernels leave it (a grad-norm log after ``scaler.step`` sees the true
    gradient). The kernels printed from the traced graph write it themselves (its ``grad``
    output); this is for the paths that read the grad and do not (the reference path, the
    passes of rules with reductions). A step skipped on ``found_inf`` leaves them scaled, as
    torch's do."""
    for p in params:
        p.grad.div_(scale)
