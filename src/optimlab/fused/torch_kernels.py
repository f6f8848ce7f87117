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
* :data:`~optimlab.rules.SGD` -> ``torch._fused_sgd_`` (momentum, dampening, Nesterov; the
  first step, which creates the momentum buffers, as torch's ``is_first_step``), not for
  float16/bfloat16 params, which it rounds otherwise than the reference path;
* :data:`~optimlab.rules.ADAGRAD` -> ``torch._fused_adagrad_``.

Taken only with ``fused=None`` and ``foreach=None`` (the defaults: the user chose no
implementation), for contiguous CPU params whose grads and state share their dtype and
layout, without GradScaler's ``grad_scale`` (those take the multi-tensor path). Complex
params are stepped as real views, as everywhere in optimlab.
"""

from __future__ import annotations

import torch

from .. import rules

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
    if not hasattr(torch, "_fused_sgd_"):
        return None
    kw = dict(weight_decay=float(h.weight_decay), momentum=float(h.momentum), lr=float(h.lr),
              dampening=float(h.dampening), nesterov=bool(h.nesterov), maximize=bool(h.maximize))
    return torch._fused_sgd_, (), kw


#: rule function -> ``match(h)``: ``(kernel, state buffers in kernel order, keyword arguments)`` or None
MATCHES = {rules.ADAM.fn: _adam, rules.ADAGRAD.fn: _adagrad, rules.SGD.fn: _sgd}


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _takes(p, state, keys) -> bool:
    g = p.grad
    return (p.device.type == "cpu" and p.layout == torch.strided and g.layout == torch.strided
            and p.dtype in _TYPES and g.dtype == p.dtype and g.device == p.device
            and p.is_contiguous() and g.is_contiguous()  # the kernels index flat memory
            and all(k not in state or (state[k].dtype == p.dtype and state[k].is_contiguous()) for k in keys)
            and ("step" not in state or state["step"].dtype == torch.float32))


def step(optimizer, group, params: list, h) -> list:
    """Step the params of ``group`` (all with grads) that a torch fused kernel takes; returns
    the others, for the multi-tensor or reference path."""
    if (group.get("fused") is not None or group.get("foreach") is not None or h.differentiable
            or h.grad_scale is not None or not params):
        return params
    match = MATCHES.get(optimizer.rule.fn)
    found = match(h) if match is not None else None
    if found is None:
        return params
    fn, buffers, kw = found
    rule = optimizer.rule
    keys = list(rule.tensors(h))
    taken, rest = {}, []
    for p in params:
        state = optimizer.init_state(p, h)
        # torch's fused SGD rounds low-precision params otherwise than the reference path
        if _takes(p, state, keys) and not (rule.fn is rules.SGD.fn and p.dtype in _LOW):
            lazy = tuple(k for k, f in rule.tensors(h).items() if f is None and k not in state)
            taken.setdefault((p.dtype, lazy), []).append((p, state))
        else:
            rest.append(p)
    for (_, lazy), members in taken.items():
        ps = [_real(p) for p, _ in members]
        grads = [_real(p.grad) for p, _ in members]
        if rule.fn is rules.SGD.fn:
            first = bool(lazy)
            if kw["momentum"] != 0:
                for p, state in members:
                    if first:
                        state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
                bufs = [_real(state["momentum_buffer"]) for _, state in members]
            else:
                bufs = []
            fn(ps, grads, bufs, is_first_step=first, **kw)
            continue
        lists = [[_real(state[k]) for _, state in members] for k in buffers]
        if len(lists) == 2 and fn is not torch._fused_adagrad_:  # Adam without AMSGrad
            lists.append([])
        steps = [state["step"] for _, state in members]
        torch._foreach_add_(steps, 1)
        fn(ps, grads, *lists, steps, **kw)
    return rest
