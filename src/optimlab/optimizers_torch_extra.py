"""torch.optim's RAdam, Rprop and ASGD (torch 2.13's signatures, defaults and messages),
and Lion (the arguments of its authors' ``lion-pytorch``).

As in :mod:`optimlab.optimizers`, each class validates its arguments and names its rule
(:mod:`optimlab.rules.torch_extra`, :mod:`optimlab.rules.sign_based`); the engine does the
rest, the fused kernel included.
"""

from __future__ import annotations

from . import rules
from .engine import RuleOptimizer
from .optimizers import (_check, _check_betas, _check_eps, _check_fused, _check_lr,
                         _check_weight_decay)


class RAdam(RuleOptimizer):
    """RAdam (Liu et al. 2020): Adam with a rectified, warm-started adaptive step.

    Update rule: :func:`optimlab.rules.radam`. Arguments as ``torch.optim.RAdam``:
    ``lr=1e-3``, ``betas=(0.9, 0.999)`` each in [0, 1), ``eps=1e-8``, ``weight_decay >= 0``,
    ``decoupled_weight_decay=False`` (``True``: RAdamW, ``p <- p (1 - lr wd)``).

    >>> opt = optimlab.RAdam(model.parameters(), lr=1e-3, decoupled_weight_decay=True, weight_decay=0.01)
    """

    rule = rules.RADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False):
        _check_lr(lr)
        _check_eps(eps)
        _check_betas(betas)
        _check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable)
        super().__init__(params, defaults)


class Rprop(RuleOptimizer):
    """Rprop (Riedmiller & Braun 1993): sign-based steps with a step size per weight.

    Update rule: :func:`optimlab.rules.rprop`. Arguments as ``torch.optim.Rprop``:
    ``lr=1e-2`` (the initial step size), ``etas=(0.5, 1.2)`` with 0 < etaminus < 1 < etaplus,
    ``step_sizes=(1e-6, 50)`` (the step size bounds). Full-batch gradients suit it best.

    >>> opt = optimlab.Rprop(model.parameters(), lr=1e-2, etas=(0.5, 1.2))
    """

    rule = rules.RPROP

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *,
                 capturable=False, foreach=None, maximize=False, differentiable=False):
        _check_lr(lr)
        _check(0.0 < etas[0] < 1.0 < etas[1],
               f"Invalid eta values: {etas[0]}, {etas[1]} (need 0 < etaminus < 1 < etaplus)")
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults)


class ASGD(RuleOptimizer):
    """Averaged SGD (Polyak & Juditsky 1992), with the decaying step of torch.optim.ASGD.

    Update rule: :func:`optimlab.rules.asgd`. Arguments as ``torch.optim.ASGD``:
    ``lr=1e-2``, ``lambd=1e-4`` (decay term), ``alpha=0.75`` (power of the eta schedule),
    ``t0=1e6`` (the step at which averaging starts), ``weight_decay >= 0``. The averaged
    parameters are ``optimizer.state[p]["ax"]``.

    >>> opt = optimlab.ASGD(model.parameters(), lr=1e-2, t0=100)
    """

    rule = rules.ASGD

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0,
                 foreach=None, maximize=False, differentiable=False, capturable=False):
        _check_lr(lr)
        _check_weight_decay(weight_decay)
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults)


class Lion(RuleOptimizer):
    """Lion (Chen et al. 2023): the sign of interpolated momentum, decoupled weight decay.

    Update rule: :func:`optimlab.rules.lion`. Arguments as ``lion_pytorch.Lion`` (the
    authors'): ``lr=1e-4`` (3-10x smaller than AdamW's), ``betas=(0.9, 0.99)`` each in [0, 1),
    ``weight_decay=0.0`` (decoupled, ``p <- p (1 - lr wd)``: 3-10x larger than AdamW's);
    plus ``maximize``, ``foreach``, ``fused`` and ``differentiable`` as torch.optim's.
    Its state is ``exp_avg``, as the reference's.

    >>> opt = optimlab.Lion(model.parameters(), lr=3e-5, weight_decay=0.1)
    """

    rule = rules.LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 foreach=None, fused=None, differentiable=False):
        _check_lr(lr)
        _check_betas(betas)
        _check_weight_decay(weight_decay)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused, differentiable=differentiable)
        super().__init__(params, defaults)
