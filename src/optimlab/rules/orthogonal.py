"""Orthogonalised updates: Muon."""

from __future__ import annotations

import math

from .._math import maximum
from .._reduce import addmm, lerp, low_precision, mm, norm, transpose
from .base import Rule, conventions


def newton_schulz(x, coefficients, steps: int, eps: float):
    """Approximately orthogonalise the 2-D ``x`` (U S V^T -> ~U V^T) by ``steps`` quintic
    Newton-Schulz iterations, in bfloat16 as torch.optim.Muon (and Keller Jordan's code):

        X_0 = x / max(||x||_F, eps)          (transposed when tall, so X X^T is the small Gram)
        A_k = X_k X_k^T
        X_{k+1} = a X_k + (b A_k + c A_k^2) X_k

    The result is in ``x``'s dtype.
    """
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if x.dim() != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = coefficients
    tall = x.size(0) > x.size(1)
    X = transpose(low_precision(x)) if tall else low_precision(x)
    X = X / maximum(norm(X), eps)
    for _ in range(steps):
        A = mm(X, transpose(X))
        B = addmm(A, A, A, beta=b, alpha=c)
        X = addmm(X, B, X, beta=a)
    return (transpose(X) if tall else X).to(x.dtype)


def adjusted_lr_ratio(adjust_lr_fn, shape) -> float:
    """The factor on lr that gives rectangular matrices a consistent update RMS:
    ``"original"`` (None) sqrt(max(1, A/B)) (Keller Jordan); ``"match_rms_adamw"``
    0.2 sqrt(max(A, B)) (Liu et al. 2025, "Muon is Scalable for LLM Training");
    ``"spectral_unclamped"`` sqrt(A/B) (Bernstein, "Deriving Muon"; torch >= 2.14)."""
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    if adjust_lr_fn == "spectral_unclamped":
        return math.sqrt(A / B)
    return 1.0


@conventions(weight_decay="decoupled")
def muon(g, s, h):
    """Muon: momentum, orthogonalised by Newton-Schulz, for 2-D parameters.

        B_t = mu B_{t-1} + (1 - mu) g_t                 (torch's lerp form)
        M_t = g_t + mu (B_t - g_t)   if nesterov   else   B_t
        O_t = NS_k^{(a,b,c)}(M_t; eps)
        u_t = AdjustLR(shape) * O_t                      (p <- p (1 - lr wd) - lr u_t)

    Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"
    (kellerjordan.github.io/posts/muon); torch.optim.Muon's algorithm box.
    """
    if g.dim() != 2:
        raise ValueError("Param gradient must be a 2D matrix")
    s.momentum_buffer = lerp(s.momentum_buffer, g, 1 - h.momentum)
    m = lerp(g, s.momentum_buffer, h.momentum) if h.nesterov else s.momentum_buffer
    o = newton_schulz(m, h.ns_coefficients, h.ns_steps, h.eps)
    return adjusted_lr_ratio(h.adjust_lr_fn, g.shape) * o


MUON = Rule(muon, lambda h: {"momentum_buffer": 0.0}, elementwise=False)
