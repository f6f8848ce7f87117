"""Optimizers whose rules read whole tensors: torch.optim's Adafactor and Muon.

Each class only validates its arguments (torch.optim's signatures, defaults and messages)
and names its rule (:mod:`optimlab.rules.factored`, :mod:`optimlab.rules.orthogonal`);
the engine runs the rule on tensors, one parameter at a time like torch's own default
(single-tensor) implementations of these two.
"""

from __future__ import annotations

import torch

from . import rules
from .engine import RuleOptimizer


class _WholeTensorChecks(RuleOptimizer):
    """torch's refusals of complex parameters and sparse gradients, in its words."""

    def _check_grads(self, params):
        name = type(self).__name__
        for p in params:
            if torch.is_complex(p):
                raise RuntimeError(f"{name} does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")


class Adafactor(_WholeTensorChecks):
    """Adafactor (Shazeer & Stern 2018): factored second moment, relative step size.

    Update rule: :func:`optimlab.rules.adafactor`. Arguments as ``torch.optim.Adafactor``:
    ``lr=1e-2`` (the cap of the relative step size rho_t and the decoupled weight decay's
    factor), ``beta2_decay=-0.8 <= 0``, ``eps=(None, 1e-3)`` (eps1: None = the dtype's
    machine epsilon; eps2: the floor of RMS(p)), ``d=1.0 >= 1`` (update clipping),
    ``weight_decay=0.0`` (decoupled), ``foreach``, ``maximize``. Matrices (dim >= 2) keep
    ``row_var`` and ``col_var`` (factored over the last two dimensions), other tensors
    ``variance``.

    >>> opt = optimlab.Adafactor(model.parameters(), lr=1e-2)
    """

    rule = rules.ADAFACTOR

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize)
        super().__init__(params, defaults)


#: torch.optim.Muon's defaults (Keller Jordan's quintic coefficients)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


class Muon(_WholeTensorChecks):
    """Muon (Jordan et al. 2024): momentum orthogonalised by Newton-Schulz, for 2-D params.

    Update rule: :func:`optimlab.rules.muon`. Arguments as ``torch.optim.Muon``:
    ``lr=1e-3``, ``weight_decay=0.1`` (decoupled), ``momentum=0.95``, ``nesterov=True``,
    ``ns_coefficients=(3.4445, -4.7750, 2.0315)``, ``eps=1e-7``, ``ns_steps=5`` (< 100),
    ``adjust_lr_fn`` (None/"original": sqrt(max(1, A/B)); "match_rms_adamw":
    0.2 sqrt(max(A, B))). Every parameter must be 2-D (a ``ValueError`` otherwise, as torch).

    Muon is for the 2-D weights of hidden layers; torch's documentation optimizes every
    other parameter (biases, norms, embeddings, and by common practice the first and last
    layers) with AdamW. :func:`split_for_muon` does the split:

    >>> matrices, rest = optimlab.split_for_muon(model.parameters())
    >>> opts = [optimlab.Muon(matrices, lr=0.02), optimlab.AdamW(rest, lr=3e-4, weight_decay=0.01)]
    """

    rule = rules.MUON

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=NS_COEFFICIENTS, eps=1e-7, ns_steps=5, adjust_lr_fn=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ["original", "match_rms_adamw"]:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError("Muon only supports 2D parameters whereas we found a "
                                     f"parameter with size: {p.size()}")


def split_for_muon(params) -> tuple[list, list]:
    """(2-D params for :class:`Muon`, every other param for AdamW), torch's convention.

    ``params``: tensors, or ``(name, tensor)`` pairs (``model.named_parameters()``), in which
    case embeddings and output heads (names containing "embed", "lm_head" or "head") also go
    to AdamW, as the Muon authors recommend. Params without ``requires_grad`` are dropped.
    """
    matrices, rest = [], []
    for item in params:
        name, p = item if isinstance(item, tuple) else ("", item)
        if not p.requires_grad:
            continue
        is_io = any(k in name for k in ("embed", "lm_head", "head"))
        (matrices if p.ndim == 2 and not is_io else rest).append(p)
    return matrices, rest
