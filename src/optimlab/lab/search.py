"""The learning-rate search: the same procedure and budget for every optimizer.

Method (a coarse-to-fine grid search on log10(lr), cf. Bergstra & Bengio 2012 for why
log scale, and Sivaprasad et al. 2020 for why every optimizer gets the same budget):

1. **coarse**: the shared log grid ``COARSE`` (1e-4 .. 1, one point per decade), seed 0;
2. **extend**: while the best lr is the smallest (largest) one tried, add the lr one
   decade below (above) it, never past the hard bounds ``LOWER`` .. ``UPPER`` (1e-6 .. 10).
   When every lr diverged, the search extends downwards (smaller steps are the ones that
   might train) and does not refine;
3. **refine**: around the best lr, add the points ``10**(±1/4)`` and ``10**(±1/2)`` times
   it (quarter-decade spacing: 4 points per decade over the decade centred on the best);
   repeat around the new best while one of its four neighbours is missing.

The best lr is the lowest seed-0 final validation loss (ties: the smaller lr). Every lr
lies on the quarter-decade lattice ``10**(q/4)`` rounded to 3 significant digits, so a
refined point is never a near-duplicate of a coarse one.

The search is a pure function of the scores stored so far: :func:`search` replays it
from the coarse grid, taking each step whose inputs are all known, and returns the lrs it
has visited and those still to run. Re-running it after an interruption (or with any
number of worker processes) therefore continues exactly where it stopped, and lrs that
other comparisons left in the same store are ignored.

With a user-given grid (``--lrs``) the search is a fixed grid: no extension, no refinement
(``adaptive=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

#: The shared coarse grid, one point per decade.
COARSE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Hard bounds of the extension; a best lr here is flagged ``at_bound``.
LOWER, UPPER = 1e-6, 10.0
#: Refinement offsets around the best, in lattice steps of a quarter decade.
REFINE = (-2, -1, 1, 2)
#: Lattice points per decade.
PER_DECADE = 4
#: A safety cap on search rounds (the lattice between the bounds has 29 points).
MAX_ROUNDS = 40

INF = float("inf")


def canonical(lr: float) -> float:
    """lr rounded to 3 significant digits: 10**-0.5 is stored and shown as 0.316."""
    return float(f"{lr:.3g}")


def lattice(q: int) -> float:
    """The lr at quarter-decade index q (q = 4 * log10(lr))."""
    return canonical(10 ** (q / PER_DECADE))


def index(lr: float) -> int:
    """The nearest quarter-decade index of ``lr``."""
    return round(PER_DECADE * math.log10(lr))


def at_bound(lr: float, lower: float = LOWER, upper: float = UPPER) -> bool:
    """Whether ``lr`` is at (or past) a hard bound of the search."""
    return lr <= lower * (1 + 1e-9) or lr >= upper * (1 - 1e-9)


@dataclass(frozen=True)
class State:
    """Where the search of one (problem, optimizer) stands.

    visited: every lr the search has asked for so far (sorted), run or not;
    pending: those of them without a score yet (the next round to run);
    done: nothing pending and no further step to take.
    """

    visited: tuple
    pending: tuple

    @property
    def done(self) -> bool:
        return not self.pending


def _best(lrs, scores: Mapping[float, float]) -> float:
    return min(lrs, key=lambda lr: (_score(scores, lr), lr))


def _score(scores: Mapping[float, float], lr: float) -> float:
    s = scores[lr]
    return s if s is not None and math.isfinite(s) else INF


def step(visited, scores: Mapping[float, float], lower: float = LOWER,
         upper: float = UPPER) -> list:
    """The lrs to add after ``visited`` (every one scored): an extension past an edge,
    else the missing refinement neighbours of the best; [] when the search is over."""
    lrs = sorted(visited)
    best = _best(lrs, scores)
    lo, hi = lrs[0], lrs[-1]
    if all(_score(scores, lr) == INF for lr in lrs):
        below = lattice(index(lo) - PER_DECADE)
        return [below] if below >= lower * (1 - 1e-9) else []
    if best == lo and lo > lower * (1 + 1e-9):
        return [max(lattice(index(lo) - PER_DECADE), lower)]
    if best == hi and hi < upper * (1 - 1e-9):
        return [min(lattice(index(hi) + PER_DECADE), upper)]
    have = {index(lr) for lr in lrs}
    q = index(best)
    return [lattice(q + d) for d in REFINE
            if q + d not in have and lower * (1 - 1e-9) <= lattice(q + d) <= upper * (1 + 1e-9)]


def search(scores: Mapping[float, float] | Callable[[float], float | None],
           coarse=COARSE, adaptive: bool = True, lower: float = LOWER,
           upper: float = UPPER) -> State:
    """Replay the search on the known ``scores`` ({lr: seed-0 val loss}, inf = failed;
    or a function lr -> score or None when not run yet).

    Returns the lrs visited so far and those pending (to run next). Only lrs the search
    itself proposes are looked at, so extra lrs in ``scores`` change nothing.
    """
    lookup = scores.get if isinstance(scores, Mapping) else scores
    visited = sorted({float(lr) for lr in coarse})
    known: dict = {}
    for _ in range(MAX_ROUNDS):
        for lr in visited:
            if lr not in known:
                s = lookup(lr)
                if s is not None:
                    known[lr] = float(s)
        pending = tuple(lr for lr in visited if lr not in known)
        if pending or not adaptive:
            return State(tuple(visited), pending)
        new = [lr for lr in step(visited, known, lower, upper) if lr not in known]
        if not new:
            break
        visited = sorted(set(visited) | set(new))
    return State(tuple(visited), ())


def describe(adaptive: bool = True) -> str:
    """One sentence for the report and the store meta."""
    if not adaptive:
        return ("a fixed user-given grid (--lrs): no extension, no refinement")
    return (f"coarse log grid {COARSE[0]:g}..{COARSE[-1]:g} (one per decade, shared); "
            f"extended one decade at a time past an edge while the best sits there "
            f"(hard bounds {LOWER:g}..{UPPER:g}); then refined around the best to "
            f"quarter-decade spacing ({PER_DECADE} per decade, best x 10^±0.25, ±0.5)")
