"""Learning-rate-free: Prodigy (D-Adaptation's distance estimate, Adam-style steps).

Prodigy is the two-phase rule of :mod:`optimlab.rules.base`: :func:`prodigy_estimate`
updates the moments and returns each parameter's share of two group-level sums,
:func:`prodigy_distance` turns the totals into the next distance estimate d, and
:func:`prodigy` is the (element-wise) step with this step's d.
"""

from __future__ import annotations

import torch

from .._math import abs_, python_max, python_min, sqrt, where
from .._reduce import dot, sum_
from .base import Rule, conventions


def _beta3(h):
    return sqrt(h.betas[1]) if h.beta3 is None else h.beta3


def _corrected_d(h):
    """d_k, times Adam's bias correction sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1)) if asked:
    the step size is dlr_k = lr * this."""
    if not h.use_bias_correction:
        return h.d
    beta1, beta2 = h.betas
    return h.d * ((1 - beta2 ** (h.k + 1)) ** 0.5 / (1 - beta1 ** (h.k + 1)))


@conventions(reads_param=True, weight_decay="rule")
def prodigy_estimate(g, s, h, p):
    """Phase 1: the moments, and this parameter's terms of r_{k+1} and ||s_{k+1}||_1.

        m_{k+1} = beta1 m_k + (1 - beta1) d_k g_k          v_{k+1} = beta2 v_k + (1 - beta2) d_k^2 g_k^2
        r_{k+1} = beta3 r_k + (d_k / d_0) dlr_k <g_k, x_0 - x_k>         (summed over the group)
        s_{k+1} = beta3 s_k + (d_k / d_0) dlr_k g_k                        dlr_k = d_k lr

    The paper weights r and s by (1 - beta3) gamma_k d_k^2; the authors' code (followed here)
    by d_k dlr_k / d_0, which keeps them away from underflow; the factor cancels in r / ||s||_1.
    ``safeguard_warmup`` puts d_k in place of dlr_k in s.
    """
    beta1, beta2 = h.betas
    d = h.d
    dlr = h.lr * _corrected_d(h)
    if h.weight_decay != 0 and not h.decouple:
        g = g + h.weight_decay * p
    numerator = d / h.d0 * dlr * dot(g, s.p0 - p)
    if beta1 > 0:
        s.exp_avg = beta1 * s.exp_avg + d * (1 - beta1) * g
    s.exp_avg_sq = beta2 * s.exp_avg_sq + d * d * (1 - beta2) * g * g
    s.s = _beta3(h) * s.s + d / h.d0 * (d if h.safeguard_warmup else dlr) * g
    return numerator, sum_(abs_(s.s))


def prodigy_distance(totals, h):
    """Between the phases: d_{k+1} = max(d_k, d_coef r_{k+1} / ||s_{k+1}||_1) (growth capped at
    ``growth_rate``). Returns the group's new values, or None (no gradient yet: ||s|| = 0).

    Traced by Dynamo (tensor totals, :mod:`optimlab.fused.traced_reference`) the step cannot
    stop on a value: where ||s|| = 0 the values are the group's own, and ``stop`` (a bool
    tensor) tells the caller to keep the parameters."""
    delta_numerator, denominator = totals
    stop = denominator == 0
    if stop is True:
        return None
    numerator = h.d_numerator * _beta3(h) + delta_numerator
    d_hat = h.d_coef * numerator / denominator
    d = where(h.d == h.d0, python_max(h.d, d_hat), h.d)
    d_max = python_max(h.d_max, d_hat)
    new = {"d_numerator": numerator, "d_denom": denominator, "d": python_min(d_max, d * h.growth_rate),
           "d_max": d_max, "d_hat": d_hat, "k": h.k + 1}
    if stop is False:
        return new
    return {key: where(stop, getattr(h, key), value) for key, value in new.items()} | {"stop": stop}


@conventions(reads_param=True, weight_decay="rule")
def prodigy(g, s, h, p):
    """Phase 2: Adam's step at learning rate dlr_k = d_k lr (the paper's Algorithm 3).

        x_{k+1} = x_k - dlr_k m_{k+1} / (sqrt(v_{k+1}) + d_k eps)            (beta1 = 0: d_k g_k for m)
        decouple: also - dlr_k lambda x_k;   otherwise lambda x_k is added to g_k (L2)

    The authors' code takes d_{k+1} in the eps term; the paper (and this rule) d_k.
    Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
    Algorithm 3 (Adam version); d estimate as their ``prodigyopt``.
    """
    denominator = sqrt(s.exp_avg_sq) + h.d * h.eps
    if h.betas[0] > 0:
        u = s.exp_avg / denominator
    else:
        if h.weight_decay != 0 and not h.decouple:
            g = g + h.weight_decay * p
        u = h.d * g / denominator
    if h.weight_decay != 0 and h.decouple:
        u = u + h.weight_decay * p
    return _corrected_d(h) * u


def _copy(p):
    return p.detach().clone(memory_format=torch.preserve_format)


PRODIGY = Rule(prodigy, lambda h: {"s": 0.0, "p0": _copy} | ({"exp_avg": 0.0} if h.betas[0] > 0 else {})
               | {"exp_avg_sq": 0.0}, estimate=prodigy_estimate, combine=prodigy_distance,
               estimate_keys=("d_numerator", "d_denom", "d_hat", "d_max", "d0", "d_coef", "growth_rate"),
               group_state=("d_numerator", "d_denom", "d", "d_max", "d_hat", "k"))
