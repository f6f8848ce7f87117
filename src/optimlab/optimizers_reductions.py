"""Optimizers whose rules read whole tensors: torch.optim's Adafactor and Muon, LARS, LAMB,
and the learning-rate-free Prodigy (a two-phase rule: group-level sums, then the step).

Each class only validates its arguments (torch.optim's signatures, defaults and messages)
and names its rule (:mod:`optimlab.rules.factored`, :mod:`optimlab.rules.orthogonal`);
the engine runs the rule on tensors, one parameter at a time like torch's own default
(single-tensor) implementations of these two.
"""

from __future__ import annotations

import operator

import torch

from . import rules
from .engine import RuleOptimizer
from .optimizers import _check, _check_betas, _check_eps, _check_lr, _check_weight_decay


_grad = operator.attrgetter("grad")
_is_sparse = operator.attrgetter("is_sparse")


class _WholeTensorChecks(RuleOptimizer):
    """torch's refusals of complex parameters and sparse gradients, in its words."""

    def _check_grads(self, params):
        if not any(map(torch.is_complex, params)) and not any(map(_is_sparse, map(_grad, params))):
            return  # each step: two passes in C over the list (a loop here costs ~10 us a param)
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
    0.2 sqrt(max(A, B)); "spectral_unclamped", as torch >= 2.14: sqrt(A/B)). Every parameter must be 2-D (a ``ValueError`` otherwise, as torch).

    Muon is for the 2-D weights of hidden layers; torch's documentation optimizes every
    other parameter (biases, norms, embeddings) with AdamW: :func:`optimlab.muon_param_groups`
    makes that split and :class:`optimlab.Combined` steps both as one optimizer.

    >>> opt = optimlab.with_adamw_for_the_rest(optimlab.Muon, model, lr=0.02)
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
        if adjust_lr_fn is not None and adjust_lr_fn not in ["original", "match_rms_adamw", "spectral_unclamped"]:
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


class LARS(RuleOptimizer):
    """LARS (You, Gitman & Ginsburg 2017): momentum SGD with a layer-wise trust ratio.

    Update rule: :func:`optimlab.rules.lars`. Arguments as ``pytorch_optimizer.LARS``:
    ``lr=1e-3``, ``weight_decay=0.0`` (beta, inside the trust ratio), ``momentum=0.9`` and
    ``dampening=0.0`` in [0, 1], ``trust_coefficient=1e-3`` (eta), ``nesterov``,
    ``maximize``; plus ``exclude_vectors=False``: the paper scales every tensor, True gives
    tensors of dimension < 2 plain momentum SGD without weight decay (pytorch_optimizer's
    behaviour, and the usual recipe for biases and norms). ``foreach`` is accepted as in
    pytorch_optimizer; the rule runs one tensor at a time (its norms are per tensor).

    >>> opt = optimlab.LARS(model.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-4)
    """

    rule = rules.LARS

    def __init__(self, params, lr=1e-3, weight_decay=0.0, momentum=0.9, dampening=0.0,
                 trust_coefficient=1e-3, nesterov=False, *, exclude_vectors=False, maximize=False,
                 foreach=None, differentiable=False):
        _check_lr(lr)
        _check_weight_decay(weight_decay)
        _check(0.0 <= momentum <= 1.0, f"Invalid momentum value: {momentum} (momentum must be in [0, 1])")
        _check(0.0 <= dampening <= 1.0, f"Invalid dampening value: {dampening} (dampening must be in [0, 1])")
        _check(0.0 <= trust_coefficient,
               f"Invalid trust_coefficient value: {trust_coefficient} (trust_coefficient must be >= 0)")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                        trust_coefficient=trust_coefficient, nesterov=nesterov,
                        exclude_vectors=exclude_vectors, maximize=maximize, foreach=foreach,
                        differentiable=differentiable)
        super().__init__(params, defaults)


class LAMB(RuleOptimizer):
    """LAMB (You et al. 2020, Algorithm 2): Adam's direction with a layer-wise trust ratio.

    Update rule: :func:`optimlab.rules.lamb`. Arguments as ``pytorch_optimizer.Lamb``:
    ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-6``, ``weight_decay=0.0`` (lambda, inside
    the trust ratio as in the paper), ``maximize``; plus ``clamp_value=10.0`` (phi(z) =
    min(z, clamp_value)) and ``bias_correction=True`` (the paper's m / (1 - beta1^t) and
    v / (1 - beta2^t)); ``foreach`` as in :class:`LARS`.

    Where pytorch_optimizer.Lamb differs from the paper: it applies weight decay decoupled,
    outside the trust ratio, unless ``weight_decouple=False`` (the paper's form, used here);
    it does not correct v and divides the whole step by (1 - beta1^t) unless
    ``adam_debias=True`` (then no correction: ``bias_correction=False`` here).

    >>> opt = optimlab.LAMB(model.parameters(), lr=1e-3, weight_decay=0.01)
    """

    rule = rules.LAMB

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *,
                 clamp_value=10.0, bias_correction=True, maximize=False, foreach=None,
                 differentiable=False):
        _check_lr(lr)
        _check_betas(betas)
        _check_eps(eps)
        _check_weight_decay(weight_decay)
        _check(0.0 < clamp_value, f"Invalid clamp_value: {clamp_value} (clamp_value must be > 0)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        clamp_value=clamp_value, bias_correction=bias_correction, maximize=maximize,
                        foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)


class Prodigy(RuleOptimizer):
    """Prodigy (Mishchenko & Defazio 2024): Adam whose step size d is estimated, not tuned.

    Update rule: :func:`optimlab.rules.prodigy` with its group-level phase
    :func:`~optimlab.rules.prodigy_estimate` / :func:`~optimlab.rules.prodigy_distance`.
    Arguments as the authors' ``prodigyopt.Prodigy``: ``lr=1.0`` (a multiplier on d; leave
    it at 1), ``betas=(0.9, 0.999)``, ``beta3=None`` (sqrt(beta2)), ``eps=1e-8``,
    ``weight_decay=0``, ``decouple=True`` (AdamW-style), ``use_bias_correction=False``,
    ``safeguard_warmup=False``, ``d0=1e-6``, ``d_coef=1.0``, ``growth_rate=inf``; plus
    ``maximize``, ``foreach``, ``fused``. The estimate (``d``, ``d_max``, ``d_numerator``,
    ``k``, ...) lives in each param group under prodigyopt's names.

    Differences from ``prodigyopt``: each param group has its own d (prodigyopt shares one
    across groups and refuses groups with different lrs); the eps term uses this step's d,
    as the paper (prodigyopt: the updated one); ``p0`` and ``s`` have the parameter's shape.

    >>> opt = optimlab.Prodigy(model.parameters(), lr=1.0, weight_decay=0.01)
    """

    rule = rules.PRODIGY

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0,
                 decouple=True, use_bias_correction=False, safeguard_warmup=False, d0=1e-6,
                 d_coef=1.0, growth_rate=float("inf"), *, maximize=False, foreach=None, fused=None):
        _check(0.0 < d0, f"Invalid d0 value: {d0} (d0 must be in (0, inf))")
        _check(0.0 < lr, f"Invalid learning rate: {lr} (lr must be in (0, inf))")
        _check(0.0 < eps, f"Invalid epsilon value: {eps} (eps must be in (0, inf))")
        _check_betas(betas)
        _check(beta3 is None or 0.0 <= beta3 < 1.0, f"Invalid beta3 value: {beta3} (must be in [0, 1))")
        _check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
                        d=d0, d0=d0, d_max=d0, d_numerator=0.0, d_coef=d_coef, k=0,
                        growth_rate=growth_rate, use_bias_correction=use_bias_correction,
                        decouple=decouple, safeguard_warmup=safeguard_warmup, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)
