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
applies ``maximize``, the grad scale and weight decay before it, unless the rule applies
weight decay itself (``own_weight_decay=True``: Adan's proximal step, Schedule-Free's
decay at ``y`` inside its normalised step).

The same function runs on torch tensors (the reference path), on Python floats and on
the symbolic values from which the fused kernel is generated, so it may use only
arithmetic operators, comparisons and the functions of :mod:`optimlab._math`
(:func:`sqrt`, :func:`maximum`, :func:`minimum`, :func:`abs_`, :func:`sign`,
:func:`clamp`, :func:`where`). Python branches (``if``) may test boolean flags,
``x != 0`` / ``x > 0`` on hyperparameters, and ``is None`` on lazily created state; a
branch on a value computed from state or gradients is a ``where`` (RAdam's
``where(rho_t > 5, ...)``), which computes both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch


@dataclass(frozen=True)
class Rule:
    """An update rule plus the state it keeps.

    ``tensors(h)`` maps each per-element state key to its initial fill value, or to
    ``None`` when the rule creates it on its first step (SGD's momentum buffer starts as
    a copy of the gradient). ``scalars`` maps each 0-dim state key (``step``,
    ``mu_product``) to its initial value, or to a function of ``h`` giving it (ASGD's
    ``eta`` starts at ``lr``). Keys are listed in torch.optim's order. ``whole_step``:
    the rule returns the new parameter (see the module docstring); ``own_weight_decay``:
    a whole-step rule that applies ``weight_decay`` itself.

    ``group_fn(h)``, where a rule has one, advances scalar state shared by the whole param
    group (Schedule-Free's running sum of weights): once per step, before any parameter's
    update, on Python numbers, it rebinds the ``group_scalars`` keys of ``h``, which the
    engine writes back to the param group (where the class's defaults put their initial
    values, and where ``state_dict`` saves them). The per-parameter rule then reads them
    as hyperparameters.
    """

    fn: Callable
    tensors: Callable[[object], dict]
    scalars: dict = field(default_factory=dict)
    sparse_ok: bool = False
    whole_step: bool = False
    own_weight_decay: bool = False
    group_fn: Callable | None = None
    group_scalars: tuple = ()

    def scalar_fills(self, h) -> dict:
        """The initial values of the 0-dim state for hyperparameters ``h``."""
        return {k: v(h) if callable(v) else v for k, v in self.scalars.items()}

    @property
    def name(self) -> str:
        return self.fn.__name__


def update(rule, p, g, s, h):
    """One step for one parameter with ``rule`` (a :class:`Rule`, or a bare rule function);
    returns the new parameter value.

        g <- -g                          if maximize
        g <- g / grad_scale              GradScaler's scale, unscaled in the step (torch's fused protocol)
        p <- p * (1 - lr * wd)           decoupled weight decay (AdamW, Loshchilov & Hutter 2019)
        g <- g + wd * p                  coupled (L2) weight decay otherwise
        p <- p - lr * rule(g, s, h)      or, for a whole-step rule, p <- rule(p, g, s, h)
                                         (which applies weight decay itself if own_weight_decay)

    Everything above this module (the reference path in :mod:`optimlab.engine`, the traced
    graph in :mod:`optimlab.fused.trace` and the backends that print or run it) calls this
    one function; nothing here imports them.
    """
    if h.maximize:
        g = -g
    if h.grad_scale is not None:
        g = g / h.grad_scale
    if h.weight_decay != 0 and not getattr(rule, "own_weight_decay", False):
        if h.decoupled_weight_decay:
            p = p * (1 - h.lr * h.weight_decay)
        else:
            g = g + h.weight_decay * p
    if getattr(rule, "whole_step", False):
        return rule.fn(p, g, s, h)
    return p - h.lr * getattr(rule, "fn", rule)(g, s, h)


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


def hyperparameters(group: dict) -> SimpleNamespace:
    """The group's hyperparameters as attributes, with a float ``lr``.

    A ``differentiable`` group keeps Tensor ``lr``/``weight_decay``/``betas`` as 0-dim
    tensors (torch.optim's ``_to_scalar``), so autograd records their use.
    """
    h = {**_LEGACY_DEFAULTS, **{k: v for k, v in group.items() if k != "params"}}
    scalar = _squeezed if h["differentiable"] else _item
    for key in ("lr", "weight_decay"):
        h[key] = scalar(h[key])
    h["betas"] = tuple(map(scalar, h.get("betas", ())))
    h.setdefault("grad_scale", None)
    return SimpleNamespace(**h)


def _item(x):
    return x.item() if isinstance(x, torch.Tensor) else x


def _squeezed(x):
    return x.squeeze() if isinstance(x, torch.Tensor) else x
