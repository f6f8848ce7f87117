"""torch's own fused CPU kernels as one more backend, where optimlab's C kernel is missing.

Without a C compiler (a ``python:slim`` image) the multi-tensor path of :mod:`.foreach`
runs one ``torch._foreach_*`` call per node of the traced graph: several passes over
memory where torch.optim's fused Adam, AdamW, SGD and Adagrad make one. For exactly
those update rules, torch ships the same step as one kernel (``torch._fused_adam_``,
``_fused_adamw_``, ``_fused_sgd_``, ``_fused_adagrad_``), so a group whose rule and flags
are one of them is handed to it. This is a choice of backend, not a copy of the math: the
rule is still written once (:mod:`optimlab.rules`), and ``tests/test_torch_kernels.py``
checks, for every registry entry and variant that matches, that the result equals the
reference path at the fused tests' tolerances.

The matching is by rule and flags, listed in :data:`MATCHES`:

* :data:`~optimlab.rules.ADAM` with ``bias_correction=True`` -> ``torch._fused_adam_``, or
  ``torch._fused_adamw_`` with ``decoupled_weight_decay=True`` (any ``amsgrad``, ``maximize``);
* :data:`~optimlab.rules.SGD` with momentum -> ``torch._fused_sgd_`` (dampening, Nesterov; the
  first step, which creates the momentum buffers, as torch's ``is_first_step``), not for
  float16/bfloat16 params, which it rounds otherwise than the reference path;
* :data:`~optimlab.rules.ADAGRAD` -> ``torch._fused_adagrad_``.

Taken only with ``fused=None`` and ``foreach=None`` (the defaults: the user chose no
implementation), for contiguous CPU params of at least :data:`MIN_NUMEL` elements whose
grads and state share their dtype and layout, without GradScaler's ``grad_scale`` (those
take the multi-tensor path). Complex params are stepped as real views, as everywhere in
optimlab.

Why a size threshold, and why it is 0: torch's fused CPU kernels pay a fixed cost per tensor
(a parallel region, per-tensor scalar setup). On a heavily loaded machine that cost made
the multi-tensor path faster on 1,000 tensors of 1k elements, but on an idle one torch's
kernel is 1.3-2.9x faster there too (mix C of ``benchmarks/no_compiler.py``, 2026-12-03:
Adam 8.7 vs 25.3 ms, SGD with momentum 5.3 vs 7.5 ms), so every size takes the kernel.
The threshold stays a knob for machines where that is not so.

Which params a group hands to the kernel is decided once and cached per group (the
*partition*), and decided again when the params with grads, their storage, dtype or
device, ``optimizer.state`` or the hyperparameters' flag/zero pattern change; a step then
only checks, for the params the kernel takes, that their grads are still dense,
contiguous and of the param's dtype.
"""

from __future__ import annotations

import itertools
import operator
import weakref

import torch

from .. import rules
from .plan import hkey
from .state_snapshot import StateSnapshot

#: params with fewer elements take the multi-tensor path (see the module docstring)
MIN_NUMEL = 0
_partitions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_data_ptr = torch.Tensor.data_ptr
_contiguous = torch.Tensor.is_contiguous
_grad = operator.attrgetter("grad")
_dtype = operator.attrgetter("dtype")
_version = operator.attrgetter("_version")

_LOW = (torch.float16, torch.bfloat16)
_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16,
          torch.complex64, torch.complex128)


def _adam(h):
    if not h.bias_correction or not hasattr(torch, "_fused_adam_"):
        return None
    fn = torch._fused_adamw_ if h.decoupled_weight_decay else torch._fused_adam_
    buffers = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h.amsgrad else ())
    kw = dict(lr=float(h.lr), beta1=float(h.betas[0]), beta2=float(h.betas[1]),
              weight_decay=float(h.weight_decay), eps=float(h.eps), amsgrad=bool(h.amsgrad),
              maximize=bool(h.maximize))
    return fn, buffers, kw


def _adagrad(h):
    if not hasattr(torch, "_fused_adagrad_"):
        return None
    kw = dict(lr=float(h.lr), lr_decay=float(h.lr_decay), weight_decay=float(h.weight_decay),
              eps=float(h.eps), maximize=bool(h.maximize))
    return torch._fused_adagrad_, ("sum",), kw


def _sgd(h):
    # without momentum the multi-tensor program is one ``_foreach_add_`` pass, as fast as
    # the kernel (torch's fused SGD was 2x slower than its foreach SGD on mix A)
    if not hasattr(torch, "_fused_sgd_") or h.momentum == 0:
        return None
    kw = dict(weight_decay=float(h.weight_decay), momentum=float(h.momentum), lr=float(h.lr),
              dampening=float(h.dampening), nesterov=bool(h.nesterov), maximize=bool(h.maximize))
    return torch._fused_sgd_, ("momentum_buffer",), kw


#: rule function -> ``match(h)``: ``(kernel, state buffers in kernel order, keyword arguments)`` or None
MATCHES = {rules.ADAM.fn: _adam, rules.ADAGRAD.fn: _adagrad, rules.SGD.fn: _sgd}


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _takes(p, state, keys) -> bool:
    """Whether the kernel takes ``p`` with its state as it is (the grad is checked per step)."""
    return (p.device.type == "cpu" and p.layout == torch.strided and p.dtype in _TYPES
            and p.numel() >= MIN_NUMEL and p.is_contiguous()  # the kernels index flat memory
            and all(k not in state or (state[k].dtype == p.dtype and state[k].shape == p.shape
                                       and state[k].is_contiguous()) for k in keys)
            and ("step" not in state or state["step"].dtype == torch.float32))


def _grad_ok(p) -> bool:
    g = p.grad
    return (g.layout == torch.strided and g.dtype == p.dtype and g.device == p.device
            and g.is_contiguous())


def invalidate(optimizer) -> None:
    """Forget ``optimizer``'s cached partitions (after replacing state tensors by hand)."""
    _partitions.pop(optimizer, None)


class _Run:
    """One call of the kernel: a bucket's params with their state, the lists the kernel
    takes built once (real views), and what the step counters were left at."""

    def __init__(self, lazy, members, buffers, scalar):
        self.lazy = lazy
        self.params = [p for p, _ in members]
        self.states = [st for _, st in members]
        self.dtype = self.params[0].dtype
        self.complex = self.params[0].is_complex()
        self.ps = [_real(p) for p in self.params]
        self.lists = None if lazy else [[_real(st[k]) for st in self.states] for k in buffers]
        self.steps = [st["step"] for st in self.states] if scalar and not lazy else None
        self.known = None  # (version counters, value) of the steps after this path's last write

    def grads(self):
        """The params' grads as the kernel takes them, or None where one is not dense,
        contiguous and of the param's dtype this step (then :func:`_grad_ok` sorts them).
        ``p.grad = g`` already checks device and shape; ``.data`` assignments are caught
        by the dtype check."""
        grads = list(map(_grad, self.params))
        try:
            if not all(map(_contiguous, grads)):  # also false for other layouts, which raise
                return None
        except RuntimeError:
            return None
        if any(map(operator.is_not, map(_dtype, grads), itertools.repeat(self.dtype))):
            return None
        return list(map(torch.view_as_real, grads)) if self.complex else grads

    def bump(self, steps) -> None:
        """``step += 1`` for every param, as torch's fused optimizers do before the kernel.
        Per tensor, ``_foreach_add_`` costs ~2 us on 0-dim tensors, a copy from one tensor
        ~0.5 us: when the counters are known to hold one value (this path wrote them and
        their version counters have not moved since, or read once), that value + 1 is
        copied in; the result is the same float32 (counts below 2**24 are exact)."""
        known = self.known
        if known is not None and known[0] == list(map(_version, steps)):
            value = known[1]
        else:
            values = torch.stack(steps).tolist()
            value = values[0] if values.count(values[0]) == len(values) else None
        if value is None:
            torch._foreach_add_(steps, 1)
            self.known = None
            return
        value = float(torch.tensor(value + 1.0, dtype=steps[0].dtype))
        torch._foreach_copy_(steps, [torch.tensor(value, dtype=steps[0].dtype)] * len(steps))
        self.known = (list(map(_version, steps)), value)


class _Partition:
    """One group's split of its params with grads: ``runs`` (one :class:`_Run` per dtype
    and lazily created state) for the kernel, ``rest`` for the other paths."""

    def __init__(self, optimizer, group, params, h, key, vouch, buffers):
        self.group, self.key, self.state, self.vouch = group, key, optimizer.state, vouch
        self.given = params  # the C path's own list (see holds)
        self.params = list(params)
        self.pptrs = list(map(_data_ptr, params))
        rule = optimizer.rule
        fills = rule.tensors(h)
        keys = list(fills)
        buckets, self.rest = {}, []
        self.lazy = False
        for p in params:
            state = optimizer.init_state(p, h)
            # torch's fused SGD rounds low-precision params otherwise than the reference path
            if _takes(p, state, keys) and not (rule.fn is rules.SGD.fn and p.dtype in _LOW):
                lazy = tuple(k for k, f in fills.items() if f is None and k not in state)
                self.lazy = self.lazy or bool(lazy)
                buckets.setdefault((p.dtype, lazy), []).append((p, state))
            else:
                self.rest.append(p)
        self.snapshot = StateSnapshot(optimizer.state, self.params)
        scalar = "step" in rule.scalars
        self.runs = [_Run(lazy, members, buffers, scalar) for (_, lazy), members in buckets.items()]
        self.taken = [p for run in self.runs for p in run.params]

    def holds(self, optimizer, group, params, key, vouch) -> bool:
        """Still valid; the params' identity and storage need no check when the C path's
        plan that was current when this was built vouches for them."""
        if not (self.group is group and self.key == key and self.state is optimizer.state):
            return False
        if vouch is not None and vouch is self.vouch and params is self.given:
            return True  # the C path's plan checked them and the state
        return (len(self.params) == len(params) and all(map(operator.is_, self.params, params))
                and self.pptrs == list(map(_data_ptr, params)) and self.snapshot.holds(optimizer.state))


def _partition(optimizer, group, params, h, vouch, buffers) -> _Partition:
    key = hkey(h)
    parts = _partitions.get(optimizer)
    if parts is None:
        parts = _partitions[optimizer] = {}
    part = parts.get(id(group))
    if part is None or not part.holds(optimizer, group, params, key, vouch):
        part = parts[id(group)] = _Partition(optimizer, group, params, h, key, vouch, buffers)
    return part


def step(optimizer, group, params: list, h, vouch=None) -> list:
    """Step the params of ``group`` (all with grads) that a torch fused kernel takes; returns
    the others, for the multi-tensor or reference path. ``vouch``: see
    :meth:`optimlab.RuleOptimizer.unfused_step`."""
    if (group.get("fused") is not None or group.get("foreach") is not None or h.differentiable
            or h.grad_scale is not None or not params):
        return params
    match = MATCHES.get(optimizer.rule.fn)
    found = match(h) if match is not None else None
    if found is None:
        return params
    fn, buffers, kw = found
    part = _partition(optimizer, group, params, h, vouch, buffers)
    rest = part.rest
    work = []
    for run in part.runs:
        grads = run.grads()
        if grads is not None:
            work.append((run, run.params, run.ps, grads, run.states))
            continue
        # a grad laid out otherwise this step: not taken
        members = [(p, st) for p, st in zip(run.params, run.states) if _grad_ok(p)]
        rest = rest + [p for p in run.params if not _grad_ok(p)]
        if members:
            work.append((run, [p for p, _ in members], [_real(p) for p, _ in members],
                         [_real(p.grad) for p, _ in members], [st for _, st in members]))
    sgd = optimizer.rule.fn is rules.SGD.fn
    for run, taken, ps, grads, states in work:
        whole = taken is run.params
        if sgd:
            first = bool(run.lazy)
            if kw["momentum"] != 0:
                if first:
                    for p, state in zip(taken, states):
                        state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
                bufs = run.lists[0] if whole and not first else [_real(st["momentum_buffer"]) for st in states]
            else:
                bufs = []
            fn(ps, grads, bufs, is_first_step=first, **kw)
            continue
        lists = run.lists if whole else [[_real(st[k]) for st in states] for k in buffers]
        if len(lists) == 2 and fn is not torch._fused_adagrad_:  # Adam without AMSGrad
            lists = lists + [[]]
        if whole:
            run.bump(run.steps)
            steps = run.steps
        else:
            steps = [st["step"] for st in states]
            torch._foreach_add_(steps, 1)
            run.known = None
        fn(ps, grads, *lists, steps, **kw)
    if part.lazy:
        _partitions[optimizer].pop(id(group), None)  # lazily created state: decide again
    return rest
