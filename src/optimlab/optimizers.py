"""The public optimizer classes: torch.optim's signatures, defaults and messages.

Each class only validates its arguments and names its rule; the math is in
:mod:`optimlab.rules` and the plumbing in :mod:`optimlab.engine`. ``fused`` chooses the
generated C kernel (``None``: where it can run, ``True``: required, ``False``: never);
``foreach`` the multi-tensor path for what the kernel does not take (``None``: yes,
``True``: for every param, ``False``: the per-tensor reference path instead).
"""

from __future__ import annotations

import torch

from . import rules
from .engine import RuleOptimizer


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_lr(lr) -> None:
    if isinstance(lr, torch.Tensor):
        _check(lr.numel() == 1, "Tensor lr must be 1-element")
        lr = lr.item()
    _check(0.0 <= lr, f"Invalid learning rate: {lr} (lr must be >= 0)")


def _check_eps(eps) -> None:
    _check(0.0 <= eps, f"Invalid epsilon value: {eps} (eps must be >= 0)")


def _check_weight_decay(weight_decay) -> None:
    if isinstance(weight_decay, torch.Tensor):
        weight_decay = weight_decay.item()
    _check(0.0 <= weight_decay, f"Invalid weight_decay value: {weight_decay} (weight_decay must be >= 0)")


def _check_betas(betas) -> None:
    _check(len(betas) == 2, f"Invalid betas: {betas} (betas must be a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor):
            beta = beta.item()
        _check(0.0 <= beta < 1.0, f"Invalid beta parameter at index {i}: {beta} (must be in [0, 1))")


def _check_tensor_lr(lr, foreach, capturable) -> None:
    """torch.optim.Adam: a Tensor lr is not for the foreach path unless capturable."""
    if isinstance(lr, torch.Tensor) and foreach and not capturable:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")


def _check_tensor_betas(betas, foreach, capturable) -> None:
    """torch.optim.Adam: betas are both numbers or both 1-element Tensors (not for the
    foreach path unless capturable). Unlike torch, an int beta counts as a float."""
    tensors = [isinstance(beta, torch.Tensor) for beta in betas]
    _check(all(tensors) or not any(tensors), "betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor):
            _check(not (foreach and not capturable),
                   f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            _check(beta.numel() == 1, f"Tensor betas[{i}] must be 1-element")


def _check_fused(fused, differentiable, foreach) -> None:
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


class SGD(RuleOptimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Update rule: :func:`optimlab.rules.sgd`. Same arguments and defaults as
    ``torch.optim.SGD``: ``lr >= 0``, ``momentum >= 0``, ``dampening``,
    ``weight_decay >= 0`` (L2), ``nesterov`` (needs momentum > 0 and zero dampening).

    >>> opt = optimlab.SGD(model.parameters(), lr=0.1, momentum=0.9)
    """

    rule = rules.SGD

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None):
        _check_lr(lr)
        _check(0.0 <= momentum, f"Invalid momentum value: {momentum} (momentum must be >= 0)")
        _check_weight_decay(weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)


class Momentum(SGD):
    """SGD with heavy-ball momentum 0.9 (Polyak 1964): ``SGD(..., momentum=0.9)``."""

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused)


class NAG(SGD):
    """Nesterov accelerated gradient: ``SGD(..., momentum=0.9, nesterov=True)`` (Sutskever et al. 2013)."""

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0, weight_decay=0, nesterov=True,
                 *, maximize=False, foreach=None, differentiable=False, fused=None):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused)


class Adagrad(RuleOptimizer):
    """Adagrad (Duchi et al. 2011). Update rule: :func:`optimlab.rules.adagrad`.

    Arguments as ``torch.optim.Adagrad``: ``lr=1e-2``, ``lr_decay >= 0``,
    ``weight_decay >= 0``, ``initial_accumulator_value >= 0``, ``eps=1e-10``.
    State is created at construction, as torch.optim does.
    """

    rule = rules.ADAGRAD

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None):
        _check_lr(lr)
        _check(0.0 <= lr_decay, f"Invalid lr_decay value: {lr_decay} (lr_decay must be >= 0)")
        _check_weight_decay(weight_decay)
        _check(0.0 <= initial_accumulator_value,
               f"Invalid initial_accumulator_value value: {initial_accumulator_value} (must be >= 0)")
        _check_eps(eps)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
        from .engine import hyperparameters

        for group in self.param_groups:
            for p in group["params"]:
                self.init_state(p, hyperparameters(group, self.defaults))

    def _check_grads(self, params):
        """As torch.optim's Adagrad: a sparse grad updates only its rows, which weight decay
        (on every row) would contradict, so the two are refused together."""
        super()._check_grads(params)
        sparse = {id(p) for p in params if p.grad.is_sparse}
        if sparse and any(g["weight_decay"] != 0 for g in self.param_groups
                          if any(id(p) in sparse for p in g["params"])):
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")


class RMSprop(RuleOptimizer):
    """RMSprop (Tieleman & Hinton 2012). Update rule: :func:`optimlab.rules.rmsprop`.

    Arguments as ``torch.optim.RMSprop``: ``lr=1e-2``, ``alpha=0.99`` in [0, 1],
    ``eps=1e-8``, ``weight_decay``, ``momentum >= 0``, ``centered``.
    """

    rule = rules.RMSPROP

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False):
        _check_lr(lr)
        _check_eps(eps)
        _check(0.0 <= momentum, f"Invalid momentum value: {momentum} (momentum must be >= 0)")
        _check_weight_decay(weight_decay)
        _check(0.0 <= alpha <= 1.0, f"Invalid alpha value: {alpha} (alpha must be in [0, 1])")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults)


class Adadelta(RuleOptimizer):
    """Adadelta (Zeiler 2012). Update rule: :func:`optimlab.rules.adadelta`.

    Arguments as ``torch.optim.Adadelta``: ``lr=1.0``, ``rho=0.9`` in [0, 1],
    ``eps=1e-6``, ``weight_decay``.
    """

    rule = rules.ADADELTA

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False):
        _check_lr(lr)
        _check(0.0 <= rho <= 1.0, f"Invalid rho value: {rho} (rho must be in [0, 1])")
        _check_eps(eps)
        _check_weight_decay(weight_decay)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)


class Adam(RuleOptimizer):
    """Adam (Kingma & Ba 2015), AMSGrad (``amsgrad=True``), AdamW (``decoupled_weight_decay=True``).

    Update rule: :func:`optimlab.rules.adam`. Arguments as ``torch.optim.Adam``:
    ``lr=1e-3``, ``betas=(0.9, 0.999)`` each in [0, 1), ``eps=1e-8``, ``weight_decay``.
    Extra: ``bias_correction=True``; ``False`` drops the ``1 - beta^t`` factors.

    >>> opt = optimlab.Adam(model.parameters(), lr=3e-4, amsgrad=True)
    """

    rule = rules.ADAM
    sparse_refusal = "Adam does not support sparse gradients, please consider SparseAdam instead"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 bias_correction=True):
        _check_tensor_lr(lr, foreach, capturable)
        _check_lr(lr)
        _check_eps(eps)
        _check_betas(betas)
        _check_weight_decay(weight_decay)
        _check_tensor_betas(betas, foreach, capturable)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        bias_correction=bias_correction)
        super().__init__(params, defaults)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay ``p <- p * (1 - lr * wd)`` (Loshchilov & Hutter 2019).

    Arguments as ``torch.optim.AdamW`` (``weight_decay=1e-2``), plus ``bias_correction``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, bias_correction=True):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, bias_correction=bias_correction)


class Adamax(RuleOptimizer):
    """AdaMax (Kingma & Ba 2015, Section 7.1). Update rule: :func:`optimlab.rules.adamax`.

    Arguments as ``torch.optim.Adamax``: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``,
    ``weight_decay``; plus ``bias_correction=True``.
    """

    rule = rules.ADAMAX

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 bias_correction=True):
        _check_lr(lr)
        _check_eps(eps)
        _check_betas(betas)
        _check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable,
                        bias_correction=bias_correction)
        super().__init__(params, defaults)


class NAdam(RuleOptimizer):
    """NAdam (Dozat 2016). Update rule: :func:`optimlab.rules.nadam`.

    Arguments as ``torch.optim.NAdam``: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``,
    ``weight_decay``, ``momentum_decay=4e-3 >= 0``, ``decoupled_weight_decay``;
    plus ``bias_correction=True``.
    """

    rule = rules.NADAM

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, bias_correction=True):
        _check_lr(lr)
        _check_eps(eps)
        _check_betas(betas)
        _check_weight_decay(weight_decay)
        _check(0.0 <= momentum_decay,
               f"Invalid momentum_decay value: {momentum_decay} (momentum_decay must be >= 0)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, bias_correction=bias_correction)
        super().__init__(params, defaults)
