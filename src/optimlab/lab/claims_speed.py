"""Claims 3 and 6 of ``claims.py``, measured in steps to a target (same conventions; see
its module docstring). Steps are counted at evaluation points and censored at budget +
one evaluation interval for a seed that never reaches the target, so they are tested
with ``exact=False`` and the evidence counts the censored seeds."""

from __future__ import annotations

from . import claim_measures as M
from .claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED, _not_run, _result, majority, test

RAVINE_NAMES = ("ravine", "ill-conditioned")


def _censored(runs_a, runs_b, target, a, b) -> dict:
    """{"a", "b": seeds that never reached ``target``, "n_a", "n_b": seeds compared}."""
    return {"a": M.unreached(runs_a, target), "b": M.unreached(runs_b, target),
            "n_a": len(a), "n_b": len(b)}


def claim3(d) -> dict:
    """Claim 3 — on neural networks adaptive methods reach a target in fewer steps.

    Neural problems (kinds mlp, cnn, char-lm, vae): the best adaptive vs the best
    non-adaptive optimizer (by seed-mean val loss, at their selected lrs). Statistic:
    steps until the train loss first reaches the problem's target (at evaluation
    resolution); without a target, the highest of the two optimizers' runs' lowest
    train losses (a level every trained seed of both reaches). A seed that never reaches
    it is censored at budget + one evaluation interval, and counted in the evidence.
    Per problem ``test(adaptive, other, exact=False)``: steps are quantised by the
    evaluation interval and censored, so equal differences are no certainty.
    """
    exp = ("neural problems: steps to the train-loss target, best adaptive vs best "
           "non-adaptive optimizer at their selected lrs, paired by seed")
    units = []
    for p in d.problems:
        if d.kind(p) not in M.NEURAL:
            continue
        ad, na = M.group_best(d.best, p, M.ADAPTIVE), M.group_best(d.best, p, M.NON_ADAPTIVE)
        if ad is None or na is None:
            continue
        target = d.info[p].get("target")
        source = "problem target"
        if not M.finite(target):
            lows = [v for o in (ad, na) for v in map(M.lowest_train, d.best[(p, o)])
                    if M.finite(v)]
            if not lows:
                continue
            target = max(lows)
            source = "a train loss every trained seed of both reaches"
        a = M.by_seed(d.best[(p, ad)], lambda r: M.steps_to(r, target))
        b = M.by_seed(d.best[(p, na)], lambda r: M.steps_to(r, target))
        v, nums = test(a, b, exact=False)
        nums["censored"] = _censored(d.best[(p, ad)], d.best[(p, na)], target, a, b)
        units.append({"problem": p, "adaptive": ad, "non_adaptive": na, "target": target,
                      "target_from": source, "steps_adaptive": a, "steps_non_adaptive": b,
                      **nums, "verdict": v})
    if not units:
        return _not_run(3, exp, "needs a neural problem with adaptive and non-adaptive "
                                "optimizers")
    return _result(3, majority(u["verdict"] for u in units), exp, units)


def _is_ravine(d, p) -> bool:
    i = d.info.get(p, {})
    text = f"{p} {i.get('description', '')}".lower()
    return i.get("kind") == "2d" and any(n in text for n in RAVINE_NAMES)


def claim6(d) -> dict:
    """Claim 6 — momentum is faster than SGD along a ravine and damps the zig-zag across it.

    2-D ravine problems (kind "2d" named or described "ravine"/"ill-conditioned", e.g.
    (x^2 + 100 y^2) / 2 with y the steep axis), momentum vs sgd at their selected lrs,
    paired by seed (seeds jitter the start). Speed: steps until the train loss reaches the
    problem's target (censored at budget + one evaluation interval). Oscillation: the
    fraction of consecutive steps whose y-step reverses sign, up to reaching the target
    (``claim_measures.y_reversals``; path length / displacement is reported alongside).
    Per problem: supported if momentum is significantly faster and oscillates
    significantly less; contradicted if either test goes the other way; else inconclusive.
    Steps are quantised and censored (``test(..., exact=False)``; the seeds that never
    reached the target are counted in the evidence).
    """
    exp = ("ill-conditioned 2-D ravine: momentum vs sgd at their selected lrs; steps to "
           "target and y-step sign reversals (from the stored trajectories), paired by seed")
    units = []
    for p in d.problems:
        if not _is_ravine(d, p) or not (d.ran(p, "momentum") and d.ran(p, "sgd")):
            continue
        target = d.info[p].get("target")
        speed, osc, paths = {}, {}, {}
        for o in ("momentum", "sgd"):
            rs = d.best[(p, o)]
            speed[o] = M.by_seed(rs, lambda r: M.steps_to(r, target))
            osc[o] = M.by_seed(rs, lambda r: M.y_reversals(r, M.steps_to(r, target))
                               if r.trajectory else M.INF)
            paths[o] = M.mean(M.by_seed(rs, M.path_ratio).values())
        vs, ns = test(speed["momentum"], speed["sgd"], exact=False)
        ns["censored"] = _censored(d.best[(p, "momentum")], d.best[(p, "sgd")], target,
                                   speed["momentum"], speed["sgd"])
        vo, no = test(osc["momentum"], osc["sgd"])
        verdict = (CONTRADICTED if CONTRADICTED in (vs, vo) else
                   SUPPORTED if vs == vo == SUPPORTED else INCONCLUSIVE)
        units.append({"problem": p, "target": target, "speed": vs, "speed_numbers": ns,
                      "steps": speed, "oscillation": vo, "oscillation_numbers": no,
                      "reversals": osc, "path_ratio": paths, "verdict": verdict})
    if not units:
        return _not_run(6, exp, "needs a 2-D ravine problem (e.g. 'ill-conditioned') with "
                                "momentum and sgd")
    return _result(6, majority(u["verdict"] for u in units), exp, units)
