"""Today's element-wise optimizers as classes: AdaBelief, Adan, Schedule-Free AdamW and SGD.

Each class validates its arguments and names its rule (:mod:`optimlab.rules.modern`); the
engine does the rest, as for torch.optim's classes. Arguments are the papers' and their
authors' implementations' (``pytorch_optimizer``, ``schedulefree``), with optimlab's usual
``maximize``, ``foreach``, ``fused`` and ``differentiable``.
"""

from __future__ import annotations

from . import rules
from .engine import RuleOptimizer
from .optimizers import _check, _check_betas, _check_eps, _check_fused, _check_lr, _check_weight_decay


class AdaBelief(RuleOptimizer):
    """AdaBelief (Zhuang et al. 2020): Adam with the belief ``(g - m)^2`` as second moment.

    Update rule: :func:`optimlab.rules.adabelief`. Arguments: ``lr=1e-3``,
    ``betas=(0.9, 0.999)`` each in [0, 1), ``eps=1e-16`` (the authors' default),
    ``weight_decay >= 0``, ``amsgrad`` (a running maximum of ``s_t``),
    ``decoupled_weight_decay=True`` (AdamW-style, as the authors' code; ``False``: L2).
    The authors' ``rectify`` (RAdam's rectification, off by default in ``pytorch_optimizer``)
    and ``fixed_decay`` are not in the paper and not implemented.

    >>> opt = optimlab.AdaBelief(model.parameters(), lr=1e-3, weight_decay=1e-2)
    """

    rule = rules.ADABELIEF

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0,
                 amsgrad=False, *, decoupled_weight_decay=True, maximize=False, foreach=None,
                 differentiable=False, fused=None):
        _check_lr(lr)
        _check_eps(eps)
        _check_betas(betas)
        _check_weight_decay(weight_decay)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)


class Adan(RuleOptimizer):
    """Adan (Xie et al. 2022): adaptive Nesterov momentum without an extrapolated gradient.

    Update rule: :func:`optimlab.rules.adan`. Arguments as the authors' code: ``lr=1e-3``,
    ``betas=(0.98, 0.92, 0.99)`` each in [0, 1) (``1 - beta`` of the paper), ``eps=1e-8``,
    ``weight_decay >= 0`` applied as the paper's proximal step ``p <- p / (1 + lr * wd)``, or
    AdamW-style with ``no_prox=True``. State: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``
    and the previous gradient ``pre_grad``. ``pytorch_optimizer``'s global gradient clipping
    (``max_grad_norm``) is not part of the algorithm and not implemented.

    >>> opt = optimlab.Adan(model.parameters(), lr=1e-3, weight_decay=0.02)
    """

    rule = rules.ADAN

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0,
                 no_prox=False, *, maximize=False, foreach=None, differentiable=False, fused=None):
        _check_lr(lr)
        _check_eps(eps)
        _check(len(betas) == 3, f"Invalid betas: {betas} (betas must be a triple (beta1, beta2, beta3))")
        for i, beta in enumerate(betas):
            _check(0.0 <= float(beta) < 1.0, f"Invalid beta parameter at index {i}: {beta} (must be in [0, 1))")
        _check_weight_decay(weight_decay)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_prox=no_prox,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
