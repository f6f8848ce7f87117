"""The bottom of the package: the per-parameter step and the shape of an update rule.

Every rule has the signature ``rule(g, s, h) -> u``:

* ``g`` is the gradient, already negated for ``maximize`` and with coupled (L2) weight
  decay added by the engine;
* ``s`` holds the rule's own state (``s.exp_avg``, ``s.step``, ...) under torch.optim's
  state keys. The rule *rebinds* attributes of ``s`` to their new values; it never
  mutates a tensor in place;
* ``h`` holds the param group's hyperparameters under torch.optim's names;
* ``u`` is the update direction. The engine applies ``p <- p - lr * u`` (and decoupled
  weight decay), so no rule touches the learning rate or the parameter.

A rule whose step is not ``lr`` times a direction (Rprop's per-element step sizes, ASGD's
own decaying ``eta``) is a *whole-step* rule (``Rule(..., whole_step=True)``): it is
called as ``rule(p, g, s, h)`` and returns the new parameter value; the engine still
applies ``maximize``, the grad scale and weight decay before it.

The same function runs on torch tensors (the reference path), on Python floats and on
the symbolic values from which the fused kernel is generated, so it may use only
arithmetic operators, comparisons and the functions of :mod:`optimlab._math`
(:func:`sqrt`, :func:`maximum`, :func:`minimum`, :func:`abs_`, :func:`sign`,
:func:`clamp`, :func:`where`). Python branches (``if``) may test boolean flags,
``x != 0`` / ``x > 0`` on hyperparameters, and ``is None`` on lazily created state; a
branch on a value computed from state or gradients is a ``where`` (RAdam's
``where(rho_t > 5, ...)``), which computes both sides.

A rule that reads whole tensors (norms, row/column means, matrix products: the functions
of :mod:`optimlab._reduce`) says so with ``Rule(..., elementwise=False)``; the reference
path runs it on tensors (its reductions are torch calls), the fast path cuts its traced
graph into generated element-wise passes around the reductions (:mod:`optimlab.fused.passes`),
never the one-pass element-wise kernel. A rule
whose step needs a quantity summed over the whole param group (Prodigy's ``d``) has two
phases: ``Rule.estimate`` returns per-parameter partial sums, the engine adds them up over
the group, ``Rule.combine`` turns the totals into group-level values, the per-parameter
rule steps, and the new values are stored in the param group (so in ``state_dict``),
where the next step's ``h`` reads them. A ``combine`` without an ``estimate`` is
group-level scalar state alone: ``combine((), group)`` writes into the group once per step,
before the per-parameter rule (Schedule-Free's schedule and running sum of weights).
See :func:`conventions` for rules that need the parameter itself or apply the learning
rate or weight decay themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .._math import number_tensor


@dataclass(frozen=True)
class Rule:
    """An update rule plus the state it keeps.

    ``tensors(h)`` maps each per-element state key to its initial fill value, or to
    ``None`` when the rule creates it on its first step (SGD's momentum buffer starts as
    a copy of the gradient). ``scalars`` maps each 0-dim state key (``step``,
    ``mu_product``) to its initial value, or to a function of ``h`` giving it (ASGD's
    ``eta`` starts at ``lr``). Keys are listed in torch.optim's order. ``whole_step``:
    the rule returns the new parameter (see the module docstring).
    """

    fn: Callable
    tensors: Callable[[object], dict]
    scalars: dict = field(default_factory=dict)
    sparse_ok: bool = False
    #: False: the rule reduces over tensors or multiplies matrices (runs on whole tensors)
    elementwise: bool = True
    #: phase 1 of a two-phase step: ``estimate(g, s, h, p) -> tuple`` of per-parameter partial
    #: sums (it may update per-element state too); ``combine(totals, h) -> dict | None``: the
    #: group-level values the totals give, written into the param group after phase 2 (so the
    #: step itself reads this step's values); None: the step stops after phase 1. Without
    #: ``estimate``, ``combine((), group) -> bool`` writes into the group before the rule runs
    estimate: Callable | None = None
    combine: Callable | None = None
    #: group keys only ``estimate`` and ``combine`` read (running sums, diagnostics): the
    #: per-parameter rule does not see them, so their changes never re-key its kernel
    estimate_keys: tuple = ()
    #: group keys the step writes (what ``combine`` gives): 0-dim tensors while Dynamo traces
    #: the step (:mod:`optimlab.fused.traced_reference`), numbers in ``state_dict``
    group_state: tuple = ()
    whole_step: bool = False

    def scalar_fills(self, h) -> dict:
        """The initial values of the 0-dim state for hyperparameters ``h``."""
        return {k: v(h) if callable(v) else v for k, v in self.scalars.items()}

    @property
    def name(self) -> str:
        return self.fn.__name__


@dataclass(frozen=True)
class Conventions:
    """What the engine does around a rule (see :func:`update`).

    ``reads_param``: the rule is called as ``rule(g, s, h, p)`` with the parameter as it was
    before weight decay (Adafactor's RMS(p), LAMB's and LARS's ||p||). ``scales_by_lr``:
    False when the rule returns the whole step (``p <- p - u``: Adafactor's relative step
    size). ``weight_decay``: "flag" (``h.decoupled_weight_decay`` chooses coupled or
    decoupled), "decoupled" (always ``p <- p (1 - lr wd)``), or "rule" (the rule applies
    ``h.weight_decay`` itself: LAMB and LARS put it inside the trust ratio). ``whole_step``:
    the rule is ``rule(p, g, s, h)`` and returns the new parameter (``Rule(..., whole_step=True)``
    says the same; see the module docstring).
    """

    reads_param: bool = False
    scales_by_lr: bool = True
    weight_decay: str = "flag"
    whole_step: bool = False


_PLAIN = Conventions()


def conventions(**kwargs):
    """Decorator: ``@conventions(reads_param=True, ...)`` attaches :class:`Conventions` to a rule."""
    conv = Conventions(**kwargs)

    def attach(fn):
        fn.conventions = conv
        return fn

    return attach


def gradient(conv: Conventions, p, g, h):
    """The gradient the rule sees and the parameter after decoupled weight decay:

        g <- -g                          if maximize
        g <- g / grad_scale              GradScaler's scale, unscaled in the step (torch's fused protocol)
        p <- p * (1 - lr * wd)           decoupled weight decay (AdamW, Loshchilov & Hutter 2019)
        g <- g + wd * p                  coupled (L2) weight decay otherwise
    """
    if h.maximize:
        g = -g
    if h.grad_scale is not None:
        g = unscaled(g, h)
    if h.weight_decay != 0 and conv.weight_decay != "rule":
        if conv.weight_decay == "decoupled" or h.decoupled_weight_decay:
            p = p * (1 - h.lr * h.weight_decay)
        else:
            g = g + h.weight_decay * p
    return p, g


def unscaled(g, h):
    """GradScaler's fused protocol: ``g / grad_scale``, what the step computes with and writes
    back into ``p.grad`` (as torch's fused kernels do)."""
    return g / h.grad_scale


def conventions_of(rule) -> Conventions:
    """The :class:`Conventions` of a :class:`Rule` (or of a bare rule function)."""
    conv = getattr(getattr(rule, "fn", rule), "conventions", _PLAIN)
    if getattr(rule, "whole_step", False) and not conv.whole_step:
        conv = replace(conv, whole_step=True)
    return conv


def estimate(rule: Rule, p, g, s, h) -> tuple:
    """Phase 1 of a two-phase rule for one parameter: its partial sums (see :class:`Rule`)."""
    conv = getattr(rule.estimate, "conventions", _PLAIN)
    _, g = gradient(conv, p, g, h)
    return rule.estimate(g, s, h, p)


def update(rule, p, g, s, h):
    """One step for one parameter with ``rule`` (a :class:`Rule`, or a bare rule function);
    returns the new parameter value.

        g <- -g                          if maximize
        g <- g / grad_scale              GradScaler's scale, unscaled in the step (torch's fused protocol)
        p <- p * (1 - lr * wd)           decoupled weight decay (AdamW, Loshchilov & Hutter 2019)
        g <- g + wd * p                  coupled (L2) weight decay otherwise
        p <- p - lr * rule(g, s, h)      or, for a whole-step rule, p <- rule(p, g, s, h)

    Everything above this module (the reference path in :mod:`optimlab.engine`, the traced
    graph in :mod:`optimlab.fused.trace` and the backends that print or run it) calls this
    one function; nothing here imports them. :class:`Conventions` attached to the rule's function
    (:func:`conventions`) pass it the parameter, choose the weight decay, or drop ``lr``.
    """
    fn = getattr(rule, "fn", rule)
    conv = conventions_of(rule)
    p0 = p
    p, g = gradient(conv, p, g, h)
    if conv.whole_step:
        return fn(p, g, s, h)
    if conv.reads_param:
        u = fn(g, s, h, p0)
    else:
        u = fn(g, s, h)
    return p - h.lr * u if conv.scales_by_lr else p - u


def write_back(target: torch.Tensor, value, traced: bool = False) -> None:
    """``target.copy_(value)``; a foreach copy where Dynamo traces the step (``traced``): Dynamo
    (torch 2.13) silently drops ``copy_``/``fill_`` into a 0-dim float64 CPU tensor under
    AOTAutograd (a 0-dim float64 param, its state, a float64 ``step``, group-level state)."""
    if traced:
        torch._foreach_copy_([target], [number_tensor(value, target.dtype, target.device)])
    else:
        target.copy_(value)


def write_group(group: dict, values: dict) -> None:
    """Group-level state into the param group: in place where the group holds a 0-dim tensor
    (a graph input of the traced step, :mod:`optimlab.fused.traced_reference`, which a
    replaced object would recompile; eager steps may run between traced ones), else as the
    new value; a value that requires grad (``differentiable=True``) replaces the old one, so
    the graph runs through every step's value."""
    for key, value in values.items():
        old = group.get(key)
        if isinstance(old, torch.Tensor) and not (isinstance(value, torch.Tensor) and value.requires_grad):
            write_back(old, value, traced=True)
        else:
            group[key] = value


# Group keys that older torch versions (or other optimizers) may not have written, or that
# a class lacks (Rprop has no weight decay), at their neutral values.
_LEGACY_DEFAULTS = {
    "weight_decay": 0,
    "maximize": False,
    "foreach": None,
    "fused": None,
    "capturable": False,
    "differentiable": False,
    "decoupled_weight_decay": False,
    "bias_correction": True,
}
#: the keys of _LEGACY_DEFAULTS that change the math; held neutral for a class without them
_NEUTRAL_UNLESS_TAKEN = ("weight_decay", "maximize", "decoupled_weight_decay", "bias_correction")


class Namespace:
    """Attributes given as keywords: ``types.SimpleNamespace``, in a form Dynamo can build
    while it traces a step (it cannot call ``SimpleNamespace``). The hyperparameters ``h``
    and the state ``s`` a rule reads and writes."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def hyperparameters(group: dict, defaults: dict, *, traced: bool = False) -> Namespace:
    """The group's hyperparameters as attributes, with a float ``lr``.

    ``defaults``: the optimizer's (its constructor's arguments). A key of
    :data:`_LEGACY_DEFAULTS` the class does not take stays at its neutral value whatever the
    group holds, as torch.optim ignores group keys its class does not read: a
    ``"weight_decay"`` written into every group by a generic builder does not decay Rprop's
    params, nor ``"decoupled_weight_decay": True`` change SGD's decay.

    A ``differentiable`` group keeps Tensor ``lr``/``weight_decay``/``betas`` as 0-dim
    tensors (torch.optim's ``_to_scalar``), so autograd records their use. ``traced``
    (the step traced by Dynamo, :mod:`optimlab.fused.compiled`) keeps Tensor ``lr`` and
    ``betas`` as tensors, graph inputs; ``weight_decay`` is branched on, so it stays a number.
    """
    h = {**_LEGACY_DEFAULTS, **{k: v for k, v in group.items() if k != "params"}}
    for key in _NEUTRAL_UNLESS_TAKEN:
        if key not in defaults:
            h[key] = _LEGACY_DEFAULTS[key]
    scalar = _squeezed if h["differentiable"] else _item
    h["lr"] = (_squeezed if traced else scalar)(h["lr"])
    h["weight_decay"] = scalar(h["weight_decay"])
    h["betas"] = tuple(map(_squeezed if traced else scalar, h.get("betas", ())))
    h.setdefault("grad_scale", None)
    return Namespace(**h)


def _item(x):
    return x.item() if isinstance(x, torch.Tensor) else x


def _squeezed(x):
    return x.squeeze() if isinstance(x, torch.Tensor) else x
