"""Today's element-wise optimizers: AdaBelief, Adan, Schedule-Free AdamW and SGD.

Each rule is written from its paper's algorithm box; where the authors' published code
(the references the tests compare with) departs from the box, the docstring says how.
"""

from __future__ import annotations

from .._math import maximum, sqrt
from .base import Rule, updates_param


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


@updates_param
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

MODERN_RULES = (ADABELIEF, ADAN)
