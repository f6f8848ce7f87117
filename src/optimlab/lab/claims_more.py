"""Claims 5-10 of ``claims.py`` (same conventions; see its module docstring)."""

from __future__ import annotations

from . import analysis as A
from . import claim_measures as M
from .claims import (ALPHA, CONTRADICTED, INCONCLUSIVE, SUPPORTED, _not_run, _result,
                     majority, test)

def _proportion(k: int, n: int, level: float = 1 - ALPHA) -> dict:
    """k of n units as {"mean": k / n, "lo", "hi", "n", "k", "method"}: the exact
    binomial interval, never a t-interval on 0/1 outcomes."""
    from .binomial import clopper_pearson

    lo, hi = clopper_pearson(k, n, level)
    return {"mean": k / n, "lo": lo, "hi": hi, "n": n, "k": k, "method": "Clopper-Pearson"}


def claim5(d) -> dict:
    """Claim 5 — NAdam usually beats Adam (or RMSprop where Adam did not run).

    Every problem with nadam and adam (else rmsprop): ``test(nadam, other)`` on paired
    final val loss at the selected lrs; "usually" = the majority rule over problems.
    """
    exp = "every problem: nadam vs adam (else rmsprop) at their selected lrs, paired final val loss"
    units = []
    for p in d.problems:
        other = next((o for o in ("adam", "rmsprop") if d.ran(p, o)), None)
        if not d.ran(p, "nadam") or other is None:
            continue
        v, nums = test(d.scores(p, "nadam"), d.scores(p, other), floor=d.floor(p))
        units.append({"problem": p, "against": other, **nums, "verdict": v})
    if not units:
        return _not_run(5, exp, "needs nadam and adam (or rmsprop) in the comparison")
    return _result(5, majority(u["verdict"] for u in units), exp, units)


def claim7(d) -> dict:
    """Claim 7 — bias correction matters early in training, most with beta2 near 1.

    Phase "bias-correction" (Adam, beta1 0.9, each beta2 x bias correction on/off x lr
    [x seed]). Statistic: the early-training loss, the mean train loss over the evaluation
    points in the first EARLY_FRACTION of the budget (inf if the run failed in that window).
    For each beta2, ``test(with, without, failures_decide=False)`` paired by (lr, seed):
    the same lr and initial weights with and without correction. The pairs span lrs over
    decades (without correction, Adam's first steps are about lr (1 - beta1) /
    sqrt(1 - beta2): larger at small lrs, divergent at large ones), so a failure does not
    decide alone: it enters as the worst finite value of its pair and the interval
    decides. The evidence counts the pairs where correction is lower and higher
    (``lower``); a beta2 whose interval favours one side while at least as many pairs
    favour the other is mixed, hence inconclusive. The effect is mean(without - with).
    Per problem: supported if correction is significantly better at the largest beta2
    and its effect there is at least the smallest beta2's; contradicted if correction is
    significantly worse at the largest beta2, or significant only at the smallest beta2
    (the opposite of "most near 1"); inconclusive otherwise.
    """
    exp = (f"phase 'bias-correction': Adam with vs without bias correction per beta2, "
           f"mean train loss over the first {M.EARLY_FRACTION:.0%} of steps, paired by "
           f"(lr, seed)")
    units = []
    for p, configs in sorted(M.bias_runs(d.records).items()):
        betas = sorted({b2 for b2, _ in configs
                        if (b2, True) in configs and (b2, False) in configs})
        if not betas:
            continue
        per = []
        for b2 in betas:
            w = {k: M.early_loss(r) for k, r in configs[(b2, True)].items()}
            wo = {k: M.early_loss(r) for k, r in configs[(b2, False)].items()}
            v, nums = test(w, wo, failures_decide=False)
            lower = _lower(w, wo)
            if (v == SUPPORTED and lower["with"] <= lower["without"]) or \
                    (v == CONTRADICTED and lower["without"] <= lower["with"]):
                v, nums["mixed"] = INCONCLUSIVE, True
            per.append({"beta2": b2, "verdict": v, **nums, "lower": lower,
                        "effect": None if not nums.get("diff") else -nums["diff"]["mean"]})
        hi, lo = per[-1], per[0]
        e_hi, e_lo = hi["effect"] or 0.0, lo["effect"] or 0.0
        if hi["verdict"] == CONTRADICTED or (len(per) > 1 and lo["verdict"] == SUPPORTED
                                            and hi["verdict"] != SUPPORTED):
            verdict = CONTRADICTED
        elif hi["verdict"] == SUPPORTED and e_hi >= e_lo:
            verdict = SUPPORTED
        else:
            verdict = INCONCLUSIVE
        units.append({"problem": p, "by_beta2": per, "verdict": verdict})
    if not units:
        return _not_run(7, exp, "needs the 'bias-correction' phase (Adam and a 'vae' problem)")
    return _result(7, majority(u["verdict"] for u in units), exp, units)


def _lower(w: dict, wo: dict) -> dict:
    """Claim 7's per-pair count: {"with": pairs where correction is lower, "without": where
    it is higher, "failed_without" / "failed_with": of those, where the other run failed,
    "pairs": pairs compared} (a failure is higher than any finite loss; a pair where both
    failed shows nothing and is left out)."""
    keys = [k for k in w if k in wo and (M.finite(w[k]) or M.finite(wo[k]))]
    rank = {k: ((not M.finite(w[k]), w[k] if M.finite(w[k]) else 0.0),
                (not M.finite(wo[k]), wo[k] if M.finite(wo[k]) else 0.0)) for k in keys}
    return {"with": sum(a < b for a, b in rank.values()),
            "without": sum(a > b for a, b in rank.values()),
            "failed_without": sum(not M.finite(wo[k]) for k in keys),
            "failed_with": sum(not M.finite(w[k]) for k in keys), "pairs": len(keys)}


def claim8(d) -> dict:
    """Claim 8 — too large an lr oscillates or diverges, too small converges slowly.

    The seed-0 lr sweep of every (problem, optimizer) with at least 3 lrs whose selected lr
    is not the smallest or the largest tried. The largest lr "oscillates or diverges" when
    its run failed, its train loss ended no lower than it started, or its train-loss curve
    climbed back at least BOUNCE of what it descended (``claim_measures.bounce``). The
    smallest lr "converges slowly" when it trained without failing but ended above the
    selected lr's score by more than the 10% threshold of ``analysis.threshold`` (with
    the optimum floor and the learning range from the starting loss). A pair
    holds when both do. Statistic: the fraction of pairs that hold, with its exact 95%
    binomial (Clopper-Pearson, :mod:`.binomial`) interval; supported if the interval
    lies above 1/2 (the claim holds on most pairs), contradicted if below, inconclusive
    otherwise (3 of 3 pairs, 29%..100%, is inconclusive; 6 of 6, 54%..100%, is the
    fewest that can support it).
    """
    exp = ("seed-0 lr sweep of every (problem, optimizer): does the largest lr diverge or "
           "oscillate and the smallest end worse than the best? fraction of pairs")
    by_key = {}
    for r in d.records:
        s = r.spec
        if s.phase == "sweep" and s.seed == 0 and tuple(s.hyperparameters) == ():
            by_key.setdefault((s.problem, s.optimizer), {}).setdefault(s.lr, r)
    optima = A.optima(d.records)
    starts = {k: A.start_loss(runs.values()) for k, runs in by_key.items()}
    units = []
    for (p, o), runs in sorted(by_key.items()):
        lrs = sorted(runs)
        sel = d.selections.get((p, o))
        if len(lrs) < 3 or sel is None or sel.lr in (lrs[0], lrs[-1]):
            continue
        big, small = runs[lrs[-1]], runs[lrs[0]]
        c = big.curves.get("train_loss") or []
        no_progress = (big.status == "ok" and len(c) > 1 and M.finite(c[0])
                       and M.final_train(big) >= c[0])
        large = big.status != "ok" or no_progress or M.bounce(big) >= BOUNCE
        thr = A.threshold(sel.score, optima.get(p), floor=d.floor(p), start=starts[(p, o)])
        slow = small.status == "ok" and A.score(small) > thr
        units.append({"problem": p, "optimizer": o, "largest_lr": lrs[-1],
                      "largest_status": big.status, "largest_bounce": M.bounce(big),
                      "smallest_lr": lrs[0], "smallest_score": A.score(small),
                      "selected_lr": sel.lr, "selected_score": sel.score, "threshold": thr,
                      "large_unstable": large, "small_slow": slow, "holds": large and slow})
    if not units:
        return _not_run(8, exp, "needs a sweep of at least 3 lrs with an interior best lr")
    ci = _proportion(sum(u["holds"] for u in units), len(units))
    verdict = (SUPPORTED if ci["lo"] > 0.5 else CONTRADICTED if ci["hi"] < 0.5
               else INCONCLUSIVE)
    return _result(8, verdict, exp, units, fraction=ci)


#: Climbing back this fraction of the descent counts as oscillating (claim 8).
BOUNCE = 0.25


def _variants(d, phase, key, baseline):
    """{(p, o): (baseline runs by seed, {variant: runs by seed})} for a phase."""
    out = {}
    for k, groups in M.runs_by_variant(d.records, phase, d.best, key).items():
        if baseline in groups and len(groups) > 1:
            out[k] = ({v: M.by_seed(rs) for v, rs in groups.items() if v != baseline},
                      M.by_seed(groups[baseline]))
    return out


def claim9(d) -> dict:
    """Claim 9 — a decaying schedule beats a constant lr at the same budget.

    Phase "schedules": per (problem, optimizer), each decaying schedule at the selected lr
    against the constant-lr selected runs (same lr, same seeds). The lr was selected for
    the constant schedule, which favours it: a decaying schedule often wants a larger
    peak lr, and is not given one here. The best decaying schedule
    by seed mean is tested with ``test(best, constant)`` at alpha / k (Bonferroni over the k
    schedules it was picked from, so its interval is a 1 - alpha / k one): supported if
    significant (despite the handicap); inconclusive otherwise, also where the constant lr
    is significantly better (at alpha, 95% interval shown): at the lr tuned for it, that
    does not show a decaying schedule to be worse at its own best lr (``favoured``).
    Majority rule over the pairs.
    """
    exp = ("phase 'schedules': best of step / cosine / warmup+cosine vs constant lr, all at "
           "the lr selected for the constant schedule (which favours it), paired final val "
           "loss (Bonferroni over the schedules)")
    units = []
    for (p, o), (decays, const) in sorted(_variants(d, "schedules", lambda r: r.spec.schedule,
                                                    "constant").items()):
        f = d.floor(p)
        means = {s: M.mean(x.values()) for s, x in decays.items()}
        best = min(means, key=lambda s: (means[s], s))
        v, nums = test(decays[best], const, alpha=ALPHA / len(decays), floor=f)
        if v != SUPPORTED:   # the shown interval is the one of the test that decided
            worse, plain = test(decays[best], const, floor=f)
            v, nums = INCONCLUSIVE, ({**plain, "favoured": "constant lr"} if worse == CONTRADICTED
                                     else nums)
        units.append({"problem": p, "optimizer": o, "best_schedule": best,
                      "schedule_means": means, "constant_mean": M.mean(const.values()),
                      **nums, "verdict": v})
    if not units:
        return _not_run(9, exp, "needs the 'schedules' phase and constant-lr runs")
    return _result(9, majority(u["verdict"] for u in units), exp, units)


def claim10(d) -> dict:
    """Claim 10 — layer-wise lr decay improves on one uniform lr.

    Phase "layerwise": per (problem, optimizer) on the MLP/CNN problems, the runs with
    layer-wise decay (``("layer_decay", d)``) at the selected lr against the uniform-lr
    selected runs, ``test(decayed, uniform)`` paired by seed; majority rule over pairs.
    The lr was selected for the uniform one: a uniform lr significantly better is
    inconclusive (``favoured``), not a contradiction, as in :func:`claim9`.
    """
    exp = ("phase 'layerwise': layer-decayed vs uniform lr at the lr selected for the uniform "
           "one (which favours it), paired final val loss")

    def decay(r):
        return dict(r.spec.hyperparameters).get("layer_decay", 1.0)

    units = []
    for (p, o), (decays, uniform) in sorted(_variants(d, "layerwise", decay, 1.0).items()):
        for dec, x in sorted(decays.items()):
            v, nums = test(x, uniform, floor=d.floor(p))
            if v == CONTRADICTED:
                v, nums = INCONCLUSIVE, {**nums, "favoured": "uniform lr"}
            units.append({"problem": p, "optimizer": o, "layer_decay": dec, **nums,
                          "verdict": v})
    if not units:
        return _not_run(10, exp, "needs the 'layerwise' phase (an MLP or CNN problem)")
    return _result(10, majority(u["verdict"] for u in units), exp, units)
