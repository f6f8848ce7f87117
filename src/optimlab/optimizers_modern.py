"""Today's element-wise optimizers as classes: AdaBelief, Adan, Schedule-Free AdamW and SGD.

Each class validates its arguments and names its rule (:mod:`optimlab.rules.modern`); the
engine does the rest, as for torch.optim's classes. Arguments are the papers' and their
authors' implementations' (``pytorch_optimizer``, ``schedulefree``), with optimlab's usual
``maximize``, ``foreach``, ``fused`` and ``differentiable``.
"""

from __future__ import annotations

import torch

from . import rules
from .engine import RuleOptimizer
from .optimizers import _check, _check_betas, _check_eps, _check_fused, _check_lr, _check_weight_decay


class AdaBelief(RuleOptimizer):
    """AdaBelief (Zhuang et al. 2020): Adam with the belief ``(g - m)^2`` as second moment.

    Update rule: :func:`optimlab.rules.adabelief`. Arguments: ``lr=1e-3``,
    ``betas=(0.9, 0.999)`` each in [0, 1), ``eps=1e-16`` (the authors' default),
    ``weight_decay >= 0``, ``amsgrad`` (a running maximum of ``s_t``),
    ``decoupled_weight_decay=True`` (AdamW-style, as the authors' code; ``False``: L2).
    The authors' ``rectify`` (RAdam's rectification) and ``fixed_decay`` are not in the
    paper and not implemented: this is ``adabelief_pytorch.AdaBelief(rectify=False)`` (the
    authors' package defaults to ``rectify=True``; ``pytorch_optimizer`` to ``False``).

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
    (``max_grad_norm``) is not part of the algorithm and not implemented. The bias
    corrections count each param's own steps (``state["step"]``, as every torch.optim
    class); the authors' code counts the group's steps, so the two differ only for a param
    whose grad is ``None`` on some steps.

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


_NOT_IN_TRAIN_MODE = ("Optimizer was not in train mode when step is called. Please insert .train() "
                      "and .eval() calls on the optimizer. See documentation for details.")


class _ScheduleFree(RuleOptimizer):
    """Schedule-Free's two parameter points: ``y`` (where gradients are taken; train mode)
    and the average ``x`` (what is evaluated and deployed; eval mode).

    ``eval()`` sets every parameter to ``x = y + (1 - 1/beta) (z - y)`` and ``train()`` back
    to ``y = x + (1 - beta) (z - x)`` (the paper's ``y = (1 - beta) z + beta x``), with
    ``beta`` the interpolation (``betas[0]``, ``momentum``). Both are idempotent. Call
    ``eval()`` before evaluating or saving and ``train()`` before training, as with
    ``model.eval()``/``model.train()``. Unlike the authors' classes, a new optimizer starts in
    train mode (both points coincide until the first step, so nothing is lost); ``step()``
    in eval mode raises as theirs does.
    """

    def _interpolation(self, group) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def eval(self) -> None:
        """Switch every parameter to the averaged point ``x`` (for evaluation, checkpoints)."""
        self._switch(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Switch every parameter to the interpolated point ``y`` (for training steps)."""
        self._switch(train=True)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta = float(self._interpolation(group))
            weight = 1 - beta if train else 1 - 1 / beta
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is not None:
                    p.lerp_(z.to(p.device), weight)
            group["train_mode"] = train

    def estimate_step(self, group: dict, h) -> bool:
        """A step is taken at ``y``: refused in eval mode (before anything is updated)."""
        if not all(g["train_mode"] for g in self.param_groups):
            _refuse_eval_mode()
        return super().estimate_step(group, h)


@torch._dynamo.disable(reason=_NOT_IN_TRAIN_MODE)
def _refuse_eval_mode():
    """Raise outside Dynamo: raised inside a traced step, the error makes Dynamo run the whole
    compiled function eagerly from then on, also after ``train()``."""
    raise RuntimeError(_NOT_IN_TRAIN_MODE)


def _check_schedule(warmup_steps) -> None:
    _check(warmup_steps >= 0, f"Invalid warmup_steps value: {warmup_steps} (warmup_steps must be >= 0)")


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW (Defazio et al. 2024): no learning-rate schedule, an average instead.

    Update rule: :func:`optimlab.rules.schedule_free_adamw` (Algorithm 1 of the paper).
    Arguments as ``schedulefree.AdamWScheduleFree``: ``lr=0.0025``, ``betas=(0.9, 0.999)``
    (``betas[0]`` interpolates between ``z`` and ``x``, in (0, 1)), ``eps=1e-8``,
    ``weight_decay >= 0`` (at ``y``, inside the ``z`` step), ``warmup_steps=0`` (linear),
    ``r=0.0`` (polynomial weighting ``t^r`` of the average), ``weight_lr_power=2.0``.
    Group state as theirs: ``k``, ``scheduled_lr``, ``lr_max``, ``weight_sum``, ``train_mode``;
    per-parameter ``z`` and ``exp_avg_sq``. See :class:`_ScheduleFree` for ``train()``/``eval()``.
    Follows the paper's bias correction (as ``schedulefree.AdamWScheduleFreePaper``), not the
    package default's (``AdamWScheduleFree``: ``sqrt(v / (1 - beta2^t))`` in the denominator).

    >>> opt = optimlab.create("schedule_free_adamw", model.parameters(), lr=1e-3, warmup_steps=100)
    >>> opt.train(); ...; opt.eval()   # evaluate at the average
    """

    rule = rules.SCHEDULE_FREE_ADAMW

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, *, maximize=False, foreach=None,
                 differentiable=False, fused=None):
        _check_lr(lr)
        _check_eps(eps)
        _check_betas(betas)
        _check(betas[0] > 0, f"Invalid beta parameter at index 0: {betas[0]} (must be in (0, 1): "
                             "eval() divides by it)")
        _check_weight_decay(weight_decay)
        _check_schedule(warmup_steps)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps,
                        train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def _interpolation(self, group) -> float:
        return group["betas"][0]


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD (Defazio et al. 2024). Update rule: :func:`optimlab.rules.schedule_free_sgd`.

    Arguments as ``schedulefree.SGDScheduleFree``: ``lr=1.0``, ``momentum=0.9`` in (0, 1)
    (the interpolation), ``weight_decay >= 0`` (L2, at ``y``), ``warmup_steps=0``, ``r=0.0``,
    ``weight_lr_power=2``. Same group state and ``train()``/``eval()`` as
    :class:`ScheduleFreeAdamW`; per-parameter state ``z``.

    >>> opt = optimlab.create("schedule_free_sgd", model.parameters(), lr=0.5, warmup_steps=50)
    """

    rule = rules.SCHEDULE_FREE_SGD

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2, *, maximize=False, foreach=None, differentiable=False, fused=None):
        _check_lr(lr)
        _check_weight_decay(weight_decay)
        _check(0.0 < momentum < 1.0, f"Invalid momentum value: {momentum} (momentum must be in (0, 1))")
        _check_schedule(warmup_steps)
        _check_fused(fused, differentiable, foreach)
        defaults = dict(lr=lr, momentum=momentum, r=r, k=0, warmup_steps=warmup_steps,
                        train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def _interpolation(self, group) -> float:
        return group["momentum"]
