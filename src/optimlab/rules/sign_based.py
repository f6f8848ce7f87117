"""Sign-based rules found by program search: Lion."""

from __future__ import annotations

from .._math import sign
from .base import Rule, conventions


@conventions(weight_decay="decoupled")
def lion(g, s, h):
    """Lion (EvoLved Sign Momentum): the sign of an interpolation of momentum and gradient,
    the same step size for every coordinate.

        u_t = sign(beta1 * m_{t-1} + (1 - beta1) * g_t)
        m_t = beta2 * m_{t-1} + (1 - beta2) * g_t
        p_t = p_{t-1} * (1 - lr * wd) - lr * u_t          (decoupled weight decay)

    Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Program 1.
    """
    beta1, beta2 = h.betas
    update = sign(beta1 * s.exp_avg + (1 - beta1) * g)
    s.exp_avg = beta2 * s.exp_avg + (1 - beta2) * g
    return update


LION = Rule(lion, lambda h: {"exp_avg": 0.0})
