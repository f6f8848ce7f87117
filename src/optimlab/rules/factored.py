"""Factored second moments: Adafactor."""

from __future__ import annotations

import torch

from .._math import maximum, minimum, sqrt
from .._reduce import lerp, mean, mean_square, rms
from .base import Rule, conventions


@conventions(reads_param=True, scales_by_lr=False, weight_decay="decoupled")
def adafactor(g, s, h, p):
    """Adafactor in torch.optim's form: a factored second moment and a relative step size.

        beta2_t = 1 - t^tau                                   tau = beta2_decay
        rho_t   = min(lr, 1 / sqrt(t))
        alpha_t = max(eps2, RMS(p_{t-1})) * rho_t
        matrices (factored over the last two dimensions):
            R_t = beta2_t R_{t-1} + (1 - beta2_t) mean_cols(g_t^2)       (row_var, n x 1)
            C_t = beta2_t C_{t-1} + (1 - beta2_t) mean_rows(g_t^2)       (col_var, 1 x m)
            V_t = R_t C_t / max(mean(R_t), eps1)
        vectors:  V_t = beta2_t V_{t-1} + (1 - beta2_t) g_t^2             (variance)
        U_t = g_t / sqrt(max(V_t, eps1^2))
        step = alpha_t / max(1, RMS(U_t) / d) * U_t       (p <- p - step; lr only in rho_t
                                                           and the decoupled weight decay)

    ``eps1=None`` is the machine epsilon of the parameter's (compute) dtype. Shazeer & Stern
    2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", Algorithms 4 and 5
    with update clipping (Section 6) and relative step size (Section 8); means instead of
    sums and eps1 inside the estimate, as torch.optim.Adafactor documents.
    """
    eps1, eps2 = h.eps
    if eps1 is None:
        eps1 = torch.finfo(p.dtype).eps
    s.step = s.step + 1
    one_minus_beta2 = s.step**h.beta2_decay
    rho = minimum(h.lr, 1 / s.step**0.5)
    alpha = maximum(eps2, rms(p)) * rho
    if g.dim() > 1:
        s.row_var = lerp(s.row_var, mean_square(g, -1), one_minus_beta2)
        s.col_var = lerp(s.col_var, mean_square(g, -2), one_minus_beta2)
        # R C^T: an outer product (inner dimension 1), so one rounded product per element,
        # as torch.optim's ``row_var @ col_var``; as a broadcast product it is one fast pass
        v = (s.row_var * s.col_var) / maximum(mean(s.row_var, dim=-2), eps1)
    else:
        s.variance = lerp(s.variance, g * g, one_minus_beta2)
        v = s.variance
    u = g / sqrt(maximum(v, eps1 * eps1))
    return alpha / maximum(1.0, rms(u) / h.d) * u


def _row_var(p):
    return p.new_zeros(p.shape[:-1] + (1,)) if p.dim() > 1 else None


def _col_var(p):
    return p.new_zeros(p.shape[:-2] + (1,) + p.shape[-1:]) if p.dim() > 1 else None


def _variance(p):
    return None if p.dim() > 1 else torch.zeros_like(p, memory_format=torch.preserve_format)


ADAFACTOR = Rule(adafactor, lambda h: {"row_var": _row_var, "col_var": _col_var, "variance": _variance},
                 {"step": 0.0}, elementwise=False)
