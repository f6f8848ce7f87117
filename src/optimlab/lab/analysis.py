"""Pure analysis over run records: selection, sensitivity, aggregates, profiles.

Every function here takes ``list[RunRecord]`` (plus plain values) and returns plain
data; nothing reads or writes files, so the report is a pure function of the store.

Conventions
-----------
* A run's *score* is its final validation loss; a diverged or errored run, or a
  non-finite loss, scores ``inf``. The test split is never used for any choice.
* Learning rates are selected on the seed-0 ``"sweep"`` phase only, with default
  hyperparameters (``spec.hyperparameters == ()``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from .spec import RunRecord, RunSpec

INF = float("inf")


@dataclass(frozen=True)
class Selection:
    """The chosen learning rate of one (problem, optimizer) pair.

    lr: best lr on validation; score: its final val loss (inf if every lr failed);
    on_edge: the best lr is the smallest or the largest lr tried, so the grid may not
    bracket the optimum; grid: the sorted lrs tried.
    """

    lr: float
    score: float
    on_edge: bool
    grid: tuple


def score(record: RunRecord) -> float:
    """Final validation loss; inf for diverged/error runs or non-finite values."""
    if record.status != "ok":
        return INF
    v = (record.final or {}).get("val_loss")
    if v is None:
        return INF
    try:
        v = float(v)
    except (TypeError, ValueError):
        return INF
    return v if math.isfinite(v) else INF


def _sweep(records):
    """Seed-0 sweep runs with default hyperparameters, grouped by (problem, optimizer)."""
    groups = defaultdict(list)
    for r in records:
        s = r.spec
        if s.phase == "sweep" and s.seed == 0 and tuple(s.hyperparameters) == ():
            groups[(s.problem, s.optimizer)].append(r)
    return groups


def sweep_curves(records) -> dict:
    """{(problem, optimizer): [(lr, score, status), ...]} sorted by lr (sweep phase)."""
    out = {}
    for key, rs in _sweep(records).items():
        best = {}
        for r in rs:
            # Duplicate lrs (e.g. different schedules) keep the better score.
            sc = score(r)
            if r.spec.lr not in best or sc < best[r.spec.lr][0]:
                best[r.spec.lr] = (sc, r.status)
        out[key] = sorted((lr, sc, st) for lr, (sc, st) in best.items())
    return out


def select_best(records) -> dict:
    """Best learning rate per (problem, optimizer) by final validation loss.

    Ties go to the smaller lr (the safer choice). When every lr failed the smallest
    lr is returned with score inf, so a seed rerun still has something to run.
    """
    out = {}
    for key, curve in sweep_curves(records).items():
        grid = tuple(lr for lr, _, _ in curve)
        lr, sc, _ = min(curve, key=lambda t: (t[1], t[0]))
        on_edge = len(grid) > 1 and (lr == grid[0] or lr == grid[-1])
        out[key] = Selection(lr=lr, score=sc, on_edge=on_edge, grid=grid)
    return out
