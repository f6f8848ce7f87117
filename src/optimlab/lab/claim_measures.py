"""Per-run measurements the claims are tested on (pure functions of run records).

Every function takes records (or one record) and returns plain numbers keyed by seed (or by
another pairing key), ready for the paired tests of ``stats``. Lower is better everywhere.
"""

from __future__ import annotations

import math
from collections import defaultdict

from . import analysis as A

INF = float("inf")

#: Optimizers that scale each coordinate's step by its own gradient history.
ADAPTIVE = ("adagrad", "rmsprop", "adadelta", "adam", "amsgrad", "adamw", "adamax", "nadam")
#: Optimizers with one global step size (plain SGD and its momentum variants).
NON_ADAPTIVE = ("sgd", "momentum", "nesterov")
#: Problem kinds trained by a neural network.
NEURAL = ("mlp", "cnn", "char-lm", "vae")
#: Part of the budget that counts as "early training" (claim 7).
EARLY_FRACTION = 0.2


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else INF


def by_seed(runs, measure=A.score) -> dict:
    """{seed: measure(run)}; the first run of a seed wins (runs are sorted by seed)."""
    out = {}
    for r in runs:
        out.setdefault(r.spec.seed, float(measure(r)))
    return out


def floored(x: dict, floor: float) -> dict:
    """{key: max(value, floor)}, failures (inf) kept: the verdicts' optimum floor."""
    return {k: (max(float(v), floor) if finite(v) else INF) for k, v in x.items()}


def close(a: float, b: float) -> bool:
    """Equal to the verdicts' resolution (``stats.RTOL``)."""
    from .stats import RTOL, _close
    return _close(a, b, RTOL)


def censor(a: dict, b: dict) -> tuple:
    """Paired samples with failures (inf) replaced by the worst finite value of both.

    Keys present in both only; a key where both failed carries no information and is
    dropped. The worst finite value is the most conservative finite stand-in for a
    failure: it keeps the t-test defined and never exaggerates a difference.
    """
    keys = [k for k in a if k in b and (finite(a[k]) or finite(b[k]))]
    worst = max((v for k in keys for v in (a[k], b[k]) if finite(v)), default=0.0)
    fix = (lambda v: v if finite(v) else worst)
    return {k: fix(a[k]) for k in keys}, {k: fix(b[k]) for k in keys}


def diffs(a: dict, b: dict) -> list:
    """a[k] - b[k] on the common keys (after ``censor``)."""
    a, b = censor(a, b)
    return [a[k] - b[k] for k in sorted(a, key=str)]


def group_best(best: dict, problem: str, group) -> str | None:
    """The optimizer of ``group`` with the lowest seed-mean val loss on ``problem``
    (failed seeds count as inf); None when none of them ran."""
    cands = [(mean(by_seed(best[(problem, o)]).values()), o) for o in group
             if best.get((problem, o))]
    return min(cands)[1] if cands else None


def kinds_and_info(records, meta, info=None) -> dict:
    """{problem: {"kind", "optimum", "target", "description", "name"}} from ``info``, the
    store meta's problem_info, else the problems registry (unknown: kind "unknown")."""
    stored = (meta or {}).get("problem_info") or {}
    out = {}
    for p in sorted({r.spec.problem for r in records}):
        d = (info or {}).get(p) or stored.get(p)
        if not isinstance(d, dict):
            try:
                from . import problems
                prob = problems.get(p)
                d = {k: getattr(prob, k) for k in ("kind", "optimum", "target", "description")}
            except Exception:
                d = {}
        out[p] = {"name": p, "kind": d.get("kind") or "unknown", "optimum": d.get("optimum"),
                  "target": d.get("target"), "description": d.get("description") or ""}
    return out


# ------------------------------------------------------------------------ speed

def steps_to(run, target: float | None) -> float:
    """First evaluated step whose train loss <= target; a run that never gets there (or
    failed) is censored at its budget plus one evaluation interval."""
    c = run.curves or {}
    steps, losses = c.get("step") or [], c.get("train_loss") or []
    if target is not None and run.status == "ok":
        for s, l in zip(steps, losses):
            if finite(l) and l <= target:
                return float(s)
    every = (steps[1] - steps[0]) if len(steps) > 1 else 1
    return float(run.spec.steps + every)


def unreached(runs, target: float | None) -> list:
    """Seeds of ``runs`` that never reached ``target`` (``steps_to`` censored them)."""
    return sorted({r.spec.seed for r in runs if steps_to(r, target) > r.spec.steps})


def lowest_train(run) -> float:
    """The lowest evaluated train loss of a run (inf when it failed): the run reaches
    any target at or above it."""
    ys = [float(v) for v in (run.curves or {}).get("train_loss") or [] if finite(v)]
    return min(ys) if ys and run.status == "ok" else INF


def final_train(run) -> float:
    v = (run.final or {}).get("train_loss") if run.status == "ok" else None
    return float(v) if finite(v) else INF


# ------------------------------------------------------------------- oscillation

def y_reversals(run, until: float | None = None) -> float:
    """Oscillation across a 2-D ravine: the fraction of consecutive steps whose
    y-displacement changes sign, over the trajectory up to step ``until`` (all if None).
    Steps with |dy| below 1e-12 of the path's largest |dy| are ignored (converged)."""
    traj = run.trajectory or []
    end = len(traj) if until is None else min(len(traj), int(until) + 1)
    dy = [traj[t + 1][1] - traj[t][1] for t in range(end - 1)]
    big = max((abs(d) for d in dy), default=0.0)
    dy = [d for d in dy if abs(d) > 1e-12 * big]
    if len(dy) < 2:
        return 0.0
    return sum(1 for u, v in zip(dy, dy[1:]) if u * v < 0) / (len(dy) - 1)


def path_ratio(run) -> float:
    """Path length / straight displacement of a 2-D trajectory (1 = a straight line)."""
    traj = run.trajectory or []
    if len(traj) < 2:
        return INF
    length = sum(math.dist(p, q) for p, q in zip(traj, traj[1:]))
    disp = math.dist(traj[0], traj[-1])
    return length / disp if disp > 0 else INF


def bounce(run) -> float:
    """How much a train-loss curve climbs back: the sum of its increases over the sum of
    its decreases (0 = monotone descent; 1 = as much up as down)."""
    ys = [v for v in (run.curves or {}).get("train_loss") or [] if finite(v)]
    up = sum(max(0.0, b - a) for a, b in zip(ys, ys[1:]))
    down = sum(max(0.0, a - b) for a, b in zip(ys, ys[1:]))
    return up / down if down > 0 else (INF if up > 0 else 0.0)


# ------------------------------------------------------------------ early training

def early_loss(run, fraction: float = EARLY_FRACTION) -> float:
    """Mean train loss over the evaluation points in (0, fraction * steps]; inf when the
    run failed before the end of that window."""
    c = run.curves or {}
    limit = fraction * run.spec.steps
    ys = [l for s, l in zip(c.get("step") or [], c.get("train_loss") or []) if 0 < s <= limit]
    failed_early = run.status != "ok" and (run.final or {}).get("diverged_at") is not None \
        and (run.final or {})["diverged_at"] <= limit
    if failed_early or not ys or not all(finite(y) for y in ys):
        return INF
    return mean(ys)


def bias_runs(records) -> dict:
    """{problem: {(beta2, bias_correction): {(lr, seed): run}}} of the bias-correction
    experiment (runs setting both ``betas`` and ``bias_correction``)."""
    out = defaultdict(lambda: defaultdict(dict))
    for r in records:
        try:
            hp = dict(r.spec.hyperparameters)
            b2, bc = float(hp["betas"][1]), bool(hp["bias_correction"])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        out[r.spec.problem][(b2, bc)][(r.spec.lr, r.spec.seed)] = r
    return out


# -------------------------------------------------------------------- phases

def runs_by_variant(records, phase: str, best: dict, key) -> dict:
    """{(problem, optimizer): {variant: [runs sorted by seed]}} for the runs of ``phase``
    at the selected lr together with the selected runs themselves (the baseline);
    ``key(run)`` names a run's variant (e.g. its schedule, or its layer decay)."""
    out = defaultdict(lambda: defaultdict(list))
    lrs = {k: rs[0].spec.lr for k, rs in best.items() if rs}
    for r in records:
        k = (r.spec.problem, r.spec.optimizer)
        if r.spec.phase == phase and k in lrs and r.spec.lr == lrs[k]:
            out[k][key(r)].append(r)
    for k in list(out):
        for r in best[k]:
            out[k][key(r)].append(r)
        for v in out[k].values():
            v.sort(key=lambda r: r.spec.seed)
    return {k: dict(v) for k, v in out.items()}
