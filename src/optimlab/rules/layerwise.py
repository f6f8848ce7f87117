"""Layer-wise trust ratios: LARS and LAMB (a per-tensor norm scales each tensor's step)."""

from __future__ import annotations

from .._math import clamp, sqrt, where
from .._reduce import norm
from .base import Rule, conventions


@conventions(reads_param=True, weight_decay="rule")
def lars(g, s, h, p):
    """LARS: SGD with momentum on a layer-wise scaled gradient.

        lambda_t = eta ||w_t|| / (||g_t|| + beta ||w_t||)      (1 where ||w|| or the denominator is 0)
        u_t = lambda_t (g_t + beta w_t)                         beta = weight_decay, eta = trust_coefficient
        b_t = mu b_{t-1} + (1 - dampening) u_t                  (b_0 = 0)
        step = u_t + mu b_t  if nesterov  else  b_t             (p <- p - lr step)

    ``exclude_vectors=True`` gives tensors of dimension < 2 (biases, norms) plain momentum
    SGD without weight decay or trust ratio, as pytorch_optimizer.LARS (and most recipes)
    do; the paper scales every layer. The paper puts lr inside the momentum
    (v_t = mu v_{t-1} + lr lambda_t u_t, w -= v_t): equal for a constant lr.
    You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks", Algorithm 1.
    """
    if h.exclude_vectors and p.dim() < 2:
        u = g
    else:
        w_norm, g_norm = norm(p), norm(g)
        denominator = g_norm + h.weight_decay * w_norm
        ratio = where((w_norm > 0) & (denominator > 0), h.trust_coefficient * w_norm / denominator, 1.0)
        u = ratio * (g + h.weight_decay * p)
    if h.momentum > 0:
        s.momentum_buffer = h.momentum * s.momentum_buffer + (1 - h.dampening) * u
        return u + h.momentum * s.momentum_buffer if h.nesterov else s.momentum_buffer
    return u


@conventions(reads_param=True, weight_decay="rule")
def lamb(g, s, h, p):
    """LAMB: Adam's direction, rescaled per tensor to a step proportional to ||w||.

        m_t = beta1 m_{t-1} + (1 - beta1) g_t,     v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        r_t = m_t / (1 - beta1^t) / (sqrt(v_t / (1 - beta2^t)) + eps) + lambda w_t
        step = phi(||w_t||) / (||r_t|| + eps) * r_t     (1 instead of the ratio where phi or ||r|| is 0)
        phi(z) = min(z, clamp_value)                    (p <- p - lr step)

    ``bias_correction=False`` drops the two ``1 - beta^t`` (pytorch_optimizer's default
    drops the second and divides the whole step by the first; see the docs of
    :class:`optimlab.Lamb`). The ``eps`` next to ||r|| is pytorch_optimizer's guard.
    You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", Algorithm 2.
    """
    beta1, beta2 = h.betas
    s.step = s.step + 1
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    s.exp_avg_sq = beta2 * s.exp_avg_sq + (1 - beta2) * g * g
    if h.bias_correction:
        r = s.exp_avg / (1 - beta1**s.step) / (sqrt(s.exp_avg_sq / (1 - beta2**s.step)) + h.eps)
    else:
        r = s.exp_avg / (sqrt(s.exp_avg_sq) + h.eps)
    if h.weight_decay != 0:
        r = r + h.weight_decay * p
    phi, r_norm = clamp(norm(p), 0.0, h.clamp_value), norm(r)
    return where((phi != 0) & (r_norm != 0), phi / (r_norm + h.eps), 1.0) * r


LARS = Rule(lars, lambda h: {"momentum_buffer": 0.0} if h.momentum > 0 else {}, elementwise=False)
LAMB = Rule(lamb, lambda h: {"exp_avg": 0.0, "exp_avg_sq": 0.0}, {"step": 0.0}, elementwise=False)
