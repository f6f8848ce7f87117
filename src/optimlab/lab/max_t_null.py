"""The null distribution of the max-t statistic that :func:`.stats.compare_to_best` uses
(Westfall & Young 1993, step-down maxT with a parametric null), by Monte Carlo.

Kept apart from :mod:`.stats` because it is the only part that needs NumPy.
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["NULL_DRAWS", "max_t_null", "p_max_t"]


#: Monte Carlo draws of the max-t null distribution (fixed seed: a verdict is the same
#: every time the report is rebuilt; the p-value's Monte Carlo error is ~0.0015 at 0.05).
NULL_DRAWS = 20000


@lru_cache(maxsize=None)
def max_t_null(m: int, n: int):
    """Sorted draws of M = max over o != best of t(o - best), for m optimizers with equal
    means on n paired seeds, best = the lowest mean of each draw.

    t is the paired t statistic, so shared seed effects cancel and the scale drops out:
    with normal run noise of one variance the distribution depends on (m, n) only, and
    iid N(0, 1) draws give it. Picking the best inside every draw is what accounts for
    comparing against the winner of the same data."""
    import numpy as np

    rng = np.random.default_rng([m, n, 20261202])
    x = rng.standard_normal((NULL_DRAWS, m, n))
    rows = np.arange(NULL_DRAWS)
    best = x.mean(axis=2).argmin(axis=1)
    d = x - x[rows, best][:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d.mean(axis=2) / (d.std(axis=2, ddof=1) / math.sqrt(n))
    t[rows, best] = -np.inf
    return np.sort(t.max(axis=1))


def p_max_t(t: float, m: int, n: int) -> float:
    """P(M >= t) for the null of :func:`max_t_null` (Monte Carlo, (count + 1) / (B + 1))."""
    import numpy as np

    null = max_t_null(m, n)
    above = len(null) - int(np.searchsorted(null, t, side="left"))
    return (above + 1) / (len(null) + 1)
