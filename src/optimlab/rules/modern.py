"""Today's element-wise optimizers: AdaBelief, Adan, Schedule-Free AdamW and SGD.

Each rule is written from its paper's algorithm box; where the authors' published code
(the references the tests compare with) departs from the box, the docstring says how.
"""

from __future__ import annotations

import torch

from .._math import maximum, python_max, python_min, sqrt, where
from .base import Rule, conventions, write_group


def adabelief(g, s, h):
    """AdaBelief: Adam whose second moment is the belief ``(g - m)^2`` in the gradient.

        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        s_t = beta2 * s_{t-1} + (1 - beta2) * (g_t - m_t)^2 + eps
        amsgrad: s_max_t = max(s_max_{t-1}, s_t), used in place of s_t
        u_t = m_t / (1 - beta1^t)  /  (sqrt(s_t / (1 - beta2^t)) + eps)

    Zhuang et al. 2020, "AdaBelief Optimizer", Algorithm 2 (``eps`` both inside ``s_t`` and
    in the denominator, as the box). The box's AMSGrad line ``s_t <- max(s_t, s_{t-1})`` is
    taken as AMSGrad defines it (Reddi et al. 2018): a separate running maximum, the EMA
    itself left unclipped, as the authors' code does. Decoupled weight decay (on by default,
    as in the authors' code) is the engine's.
    """
    beta1, beta2 = h.betas
    s.step = s.step + 1
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    residual = g - s.exp_avg
    s.exp_avg_var = beta2 * s.exp_avg_var + (1 - beta2) * residual * residual + h.eps
    var = s.exp_avg_var
    if h.amsgrad:
        s.max_exp_avg_var = maximum(s.max_exp_avg_var, s.exp_avg_var)
        var = s.max_exp_avg_var
    bias_correction1 = 1 - beta1**s.step
    bias_correction2 = 1 - beta2**s.step
    return (s.exp_avg / bias_correction1) / (sqrt(var) / sqrt(bias_correction2) + h.eps)


@conventions(whole_step=True, weight_decay="rule")
def adan(p, g, s, h):
    """Adan: adaptive Nesterov momentum from moments of the gradient and its difference.

        d_t = g_t - g_{t-1}                              (d_1 = 0)
        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * d_t
        n_t = beta3 * n_{t-1} + (1 - beta3) * (g_t + beta2 * d_t)^2
        u_t = (m_t / (1 - beta1^t) + beta2 * v_t / (1 - beta2^t)) / (sqrt(n_t / (1 - beta3^t)) + eps)
        p_t = (p_{t-1} - lr * u_t) / (1 + lr * wd)       proximal weight decay
        p_t = p_{t-1} * (1 - lr * wd) - lr * u_t         no_prox=True

    Xie et al. 2022, "Adan", Algorithm 1, with ``beta`` here = ``1 - beta`` there (the
    authors' code convention, defaults 0.98, 0.92, 0.99). As the authors' code (and every
    published implementation), the moments start at zero with Adam's bias corrections
    where the box starts them at ``g_0``, ``g_0^2``; the box's optional restart is not
    implemented (the authors' code has none).
    """
    beta1, beta2, beta3 = h.betas
    s.step = s.step + 1
    previous = g if s.pre_grad is None else s.pre_grad
    diff = g - previous
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    s.exp_avg_diff = beta2 * s.exp_avg_diff + (1 - beta2) * diff
    nesterov = g + beta2 * diff
    s.exp_avg_sq = beta3 * s.exp_avg_sq + (1 - beta3) * nesterov * nesterov
    s.pre_grad = g
    denom = sqrt(s.exp_avg_sq) / sqrt(1 - beta3**s.step) + h.eps
    u = (s.exp_avg / (1 - beta1**s.step) + beta2 * s.exp_avg_diff / (1 - beta2**s.step)) / denom
    if h.weight_decay == 0:
        return p - h.lr * u
    if h.no_prox:
        return p * (1 - h.lr * h.weight_decay) - h.lr * u
    return (p - h.lr * u) / (1 + h.lr * h.weight_decay)


def schedule_free_sgd_schedule(totals, group) -> bool:
    """Schedule-Free's group-level scalars, once per step, before the parameters' updates.

        lr_t    = lr * min(1, t / warmup_steps)
        w_t     = t^r * (max_{i<=t} lr_i)^weight_lr_power
        c_{t+1} = w_t / sum_{i<=t} w_i                    (read by the per-parameter rule)

    Kept in the param group under the authors' names (``k`` = t after the step,
    ``scheduled_lr`` = lr_t, ``lr_max``, ``weight_sum``): the rule's ``combine`` (no
    ``totals``: nothing is summed over the parameters). With ``r = 0`` and
    ``weight_lr_power = 2`` this is the paper's ``c_{t+1} = lr_t^2 / sum_i lr_i^2`` while
    ``lr_t`` does not decrease.
    """
    return _advance(group, _number(group["lr"]) * _warmup(group))


def schedule_free_adamw_schedule(totals, group) -> bool:
    """As :func:`schedule_free_sgd_schedule`, with Adam's bias correction in the step size:
    ``lr_t = lr * min(1, t / warmup_steps) * sqrt(1 - beta2^t)`` (Algorithm 1, line 8)."""
    beta2 = _number(group["betas"][1])
    return _advance(group, _number(group["lr"]) * _warmup(group) * sqrt(1 - beta2 ** (group["k"] + 1)))


def _number(x):
    """A group value as a float; a tensor stays one while Dynamo traces the step (a graph
    input: no ``item()``, no recompile when a schedule changes it) and where it requires
    grad (``differentiable=True``: the hypergradient flows through the schedule)."""
    keep = isinstance(x, torch.Tensor) and (x.requires_grad or torch.compiler.is_compiling())
    return x if keep else float(x)


def _warmup(group):
    t = group["k"] + 1
    return python_min(t / group["warmup_steps"], 1.0) if group["warmup_steps"] > 0 else 1.0


def _advance(group, lr_t) -> bool:
    t = group["k"] + 1
    lr_max = python_max(group["lr_max"], lr_t)
    weight = t ** group["r"] * lr_max ** group["weight_lr_power"]
    write_group(group, {"k": t, "scheduled_lr": lr_t, "lr_max": lr_max,
                        "weight_sum": group["weight_sum"] + weight})
    return True


def _averaging_weight(h):
    """c_{t+1} = w_t / sum_{i<=t} w_i from the group's scalars (0 while every lr was 0)."""
    unset = h.weight_sum == 0
    return where(unset, 0.0, h.k**h.r * h.lr_max**h.weight_lr_power / where(unset, 1.0, h.weight_sum))


@conventions(whole_step=True, weight_decay="rule")
def schedule_free_adamw(y, g, s, h):
    """Schedule-Free AdamW: interpolate, step ``z`` with Adam's scaling, average into ``x``.

        y_t     = (1 - beta1) z_t + beta1 x_t            the parameter (train mode)
        v_t     = beta2 v_{t-1} + (1 - beta2) g_t^2       (g_t at y_t)
        d_t     = g_t / (sqrt(v_t) + eps) + wd y_t
        z_{t+1} = z_t - lr_t d_t
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
      hence  y_{t+1} = (1 - c) y_t + c z_t + lr_t (beta1 (1 - c) - 1) d_t   (x never stored)

    ``lr_t`` and ``c_{t+1}`` are the group's (:func:`schedule_free_adamw_schedule`);
    z_1 = x_1 = y_1.
    Defazio et al. 2024, "The Road Less Scheduled", Algorithm 1, as written there (and in the
    authors' ``AdamWScheduleFreePaper``): ``schedulefree.AdamWScheduleFree`` instead divides
    ``v_t`` by ``1 - beta2^t`` inside the root and leaves it out of ``lr_t``.
    """
    beta1, beta2 = h.betas
    z = y if s.z is None else s.z
    s.exp_avg_sq = beta2 * s.exp_avg_sq + (1 - beta2) * g * g
    d = g / (sqrt(s.exp_avg_sq) + h.eps)
    if h.weight_decay != 0:
        d = d + h.weight_decay * y
    c = _averaging_weight(h)
    s.z = z - h.scheduled_lr * d
    return (1 - c) * y + c * z + h.scheduled_lr * (beta1 * (1 - c) - 1) * d


def schedule_free_sgd(y, g, s, h):
    """Schedule-Free SGD: :func:`schedule_free_adamw` with the gradient as the direction.

        y_t = (1 - momentum) z_t + momentum x_t;   z_{t+1} = z_t - lr_t g_t;
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}

    ``g_t`` includes the engine's L2 weight decay ``wd y_t``, as the authors' code.
    Defazio et al. 2024, "The Road Less Scheduled", eq. (1)-(3) with warmup and weighting.
    """
    z = y if s.z is None else s.z
    c = _averaging_weight(h)
    s.z = z - h.scheduled_lr * g
    return (1 - c) * y + c * z + h.scheduled_lr * (h.momentum * (1 - c) - 1) * g


ADABELIEF = Rule(
    adabelief,
    lambda h: {"exp_avg": 0.0, "exp_avg_var": 0.0} | ({"max_exp_avg_var": 0.0} if h.amsgrad else {}),
    {"step": 0.0},
)
ADAN = Rule(
    adan,
    lambda h: {"exp_avg": 0.0, "exp_avg_sq": 0.0, "exp_avg_diff": 0.0, "pre_grad": None},
    {"step": 0.0},
)
_SCHEDULE = ("k", "scheduled_lr", "lr_max", "weight_sum")
SCHEDULE_FREE_ADAMW = Rule(schedule_free_adamw, lambda h: {"exp_avg_sq": 0.0, "z": None},
                          combine=schedule_free_adamw_schedule, group_state=_SCHEDULE)
SCHEDULE_FREE_SGD = Rule(schedule_free_sgd, lambda h: {"z": None}, whole_step=True,
                         combine=schedule_free_sgd_schedule, group_state=_SCHEDULE)

MODERN_RULES = (ADABELIEF, ADAN, SCHEDULE_FREE_ADAMW, SCHEDULE_FREE_SGD)
