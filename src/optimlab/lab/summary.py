"""The ``--json`` summary of a comparison: its runs, selections, verdicts and claims.

A pure function of the store's records (and the comparison's meta), as the report is; the
CLI prints it (``optimlab compare --json``) and the verdict table reads its rows.
Non-finite numbers (a diverged run's inf losses) become ``null``, so it is valid JSON.
"""

from __future__ import annotations

import math

__all__ = ["summary", "verdict_rows"]


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def summary(records, selections=None, meta=None) -> dict:
    """The --json summary: every run's identity, status and final metrics (non-finite
    numbers, e.g. a diverged run's inf losses, become null), the selections, one
    verdict per problem (lab/verdicts.py: best, tied group, lr, mean, 95% CI; kinds
    from the store meta's problem_info) and the articles' claims with their verdicts
    (lab/claims.py; ``meta``: the comparison's)."""
    from .claims import evaluate

    runs = [{"run_id": r.run_id, "problem": r.spec.problem, "optimizer": r.spec.optimizer,
             "lr": r.spec.lr, "seed": r.spec.seed, "phase": r.spec.phase,
             "schedule": r.spec.schedule, "status": r.status, "steps": r.spec.steps,
             "seconds": r.seconds, "seconds_per_step": r.seconds_per_step,
             "final": r.final} for r in records]
    best = [{"problem": p, "optimizer": o, "lr": s.lr, "score": s.score,
             "on_edge": s.on_edge, "at_bound": getattr(s, "at_bound", False),
             "seeds": s.seeds, "promoted": list(getattr(s, "promoted", ()))}
            for (p, o), s in sorted((selections or {}).items())]
    vrows = verdict_rows(records, selections, _kinds(records, meta))
    claims = [{k: c[k] for k in ("id", "claim", "verdict", "evidence")}
              for c in evaluate(records, meta)]
    return _finite_or_none({"runs": runs, "selections": best, "verdicts": vrows,
                            "claims": claims})


def _kinds(records, meta=None) -> dict:
    """{problem: kind} from the store meta's problem_info, else the problems registry."""
    info = (meta or {}).get("problem_info") or {}
    names = sorted({r.spec.problem for r in records})
    if all(isinstance(info.get(p), dict) and info[p].get("kind") for p in names):
        return {p: info[p]["kind"] for p in names}
    from .report.context import problem_info
    return {p: i["kind"] for p, i in problem_info(names, sources=(meta or {})
                                                  .get("sources")).items()}


def verdict_rows(records, selections=None, kinds=None) -> list:
    """The verdict rows of ``records`` (kinds: {problem: kind}, else from the registry)."""
    from . import verdicts
    from .analysis import select_best

    selections = select_best(records) if selections is None else selections
    if kinds is None:
        from .report.context import problem_info
        kinds = {p: i["kind"] for p, i in
                 problem_info(sorted({r.spec.problem for r in records})).items()}
    return verdicts.rows(verdicts.verdicts(records, selections), selections, kinds)
