"""The exact (Clopper-Pearson) confidence interval of a proportion, in pure Python.

A claim that "holds on k of n units" is a binomial count: a t-interval on its 0/1
outcomes can leave [0, 1] (-585%..685% for 1 of 2) and collapses to a point when every
unit agrees (100%..100% for 1 of 1). The Clopper-Pearson interval inverts two one-sided
binomial tests, so it stays in [0, 1] and covers the true proportion at least ``level``
of the time: its bounds are Beta quantiles, lo = B(alpha/2; k, n - k + 1) and
hi = B(1 - alpha/2; k + 1, n - k) (Clopper & Pearson 1934, Biometrika 26:404).
"""

from __future__ import annotations

from .student_t import _betainc

__all__ = ["clopper_pearson"]


def _beta_ppf(p: float, a: float, b: float) -> float:
    """The x in [0, 1] with I_x(a, b) = p (bisection; I_x is increasing in x)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):   # 2^-100: far below float64's resolution of [0, 1]
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple:
    """(lo, hi): the exact two-sided ``level`` interval of a proportion from ``k``
    successes in ``n`` trials; (0, 1) when n = 0.

    >>> lo, hi = clopper_pearson(3, 3)   # 3 of 3 only shows the proportion is > 29%
    >>> round(lo, 3), hi
    (0.292, 1.0)
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else _beta_ppf(alpha / 2, k, n - k + 1)
    hi = 1.0 if k == n else _beta_ppf(1 - alpha / 2, k + 1, n - k)
    return lo, hi
