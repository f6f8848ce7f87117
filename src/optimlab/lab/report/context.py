"""Everything the report shows, computed once from the records (pure, no I/O)."""

from __future__ import annotations

from .. import analysis as A
from .. import verdicts as V
from . import protocol

TAUS = [1.0 + 0.05 * i for i in range(21)] + [1.0 * 2 ** (0.1 * i) for i in range(11, 51)]


def _lookup(name, sources):
    """The Problem called ``name``: a custom "pkg.module:factory" source from the store
    meta, else the registry; None when it cannot be built (the report goes on)."""
    try:
        from .. import problems as registry
        src = (sources or {}).get(name, name)
        if isinstance(src, str) and ":" in src:
            return registry.load_custom(src)
        return registry.get(name)
    except Exception:
        return None


class _Described:
    """A problem known only by its stored description (no surface)."""

    def __init__(self, d):
        self.__dict__.update(d)


def problem_info(names, problems=None, sources=None, stored=None) -> dict:
    """{name: dict(kind, description, optimum, target, metric_name, surface, bounds,
    minima)} from ``problems`` ({name: Problem}), else the store meta's
    ``problem_info`` ({name: {kind, description, ...}}, used for non-2-D problems so
    the report need not rebuild data sets), else the problems package (custom sources
    from ``sources``); unknown problems get kind "unknown" and no surface."""
    out = {}
    stored = stored if isinstance(stored, dict) else {}
    for n in names:
        if problems is not None:
            p = problems.get(n)
        elif isinstance(stored.get(n), dict) and stored[n].get("kind") not in (None, "2d"):
            p = _Described(stored[n])
        else:
            p = _lookup(n, sources)
        out[n] = {k: getattr(p, k, None) for k in
                  ("kind", "description", "optimum", "target", "metric_name", "surface",
                   "bounds")}
        out[n]["minima"] = tuple(getattr(p, "minima", ()) or ())
        out[n]["kind"] = out[n]["kind"] or "unknown"
    return out


def schedule_fn(meta):
    """(name, fn or None, steps): the schedule of the run via optimlab.schedules."""
    name = str(meta.get("schedule") or "constant")
    per_problem = meta.get("steps_per_problem") or {}
    steps = int(meta.get("steps") or max(per_problem.values(), default=0))
    try:
        from optimlab.schedules import by_name
        return name, by_name(name, max(steps, 1)), max(steps, 1)
    except Exception:
        return name, None, steps


#: A comparison's phases in the order ``sweep.compare`` runs them.
PHASES = ("sweep", "seeds", "bias-correction", "schedules", "layerwise")


def progress(meta, records) -> dict | None:
    """None for a finished comparison (or a meta that is not one's: no "created");
    else {"phase", "runs"}: the phase it stopped in (meta "phase", written as each phase
    starts; for an older store, the last phase with stored runs) and its stored runs."""
    if meta.get("finished") or not meta.get("created"):
        return None
    phases = {r.spec.phase for r in records}
    phase = meta.get("phase") or next((p for p in reversed(PHASES) if p in phases), "sweep")
    return {"phase": str(phase), "runs": len(records)}


def build(records, meta, problems=None) -> dict:
    """The report context: analysis results keyed by what the templates need."""
    from .plots import palette

    meta = dict(meta or {})
    opts, probs = A.optimizers(records), A.problems(records)
    info = problem_info(probs, problems, meta.get("sources"), meta.get("problem_info"))
    opt_from_runs = A.optima(records)
    optima = {p: (opt_from_runs.get(p) if opt_from_runs.get(p) is not None
                  else info[p]["optimum"]) for p in probs}
    sel = A.select_best(records)
    kinds = {p: info[p]["kind"] for p in probs}
    # Verdicts, ranks and the answer all come from the same selected runs (verdicts.py).
    seed_scores = V.scores(records, sel)
    verdicts = V.verdicts(records, sel)
    rank_table = V.rank_table(verdicts)
    scores = A.score_costs(records, sel)
    steps = A.steps_costs(records, sel)
    name, fn, n_steps = schedule_fn(meta)
    if not n_steps:
        n_steps = max((r.spec.steps for r in records), default=1)
    failures = [r for r in records if r.status != "ok"]
    return {
        "meta": meta, "progress": progress(meta, records),
        "records": records, "optimizers": opts, "problems": probs,
        "info": info, "optima": optima, "floors": A.floors(records), "colors": palette(opts),
        "selections": sel, "sweeps": A.sweep_curves(records),
        "sensitivity": A.sensitivity(records, selections=sel), "aggregate": A.aggregate(records, sel),
        "time": A.time_per_step(records), "curves": ci_curves(records, sel),
        "verdicts": verdicts, "verdict_rows": V.rows(verdicts, sel, kinds),
        "deltas": V.deltas(verdicts, seed_scores),
        "ranks": rank_table, "mean_ranks": A.mean_ranks(rank_table),
        "per_kind": V.per_kind(rank_table, kinds, verdicts, sel), "taus": TAUS,
        "profiles": {"val loss (excess over optimum)": A.performance_profile(scores, TAUS)
                     if scores else {},
                     "steps to target": A.performance_profile(steps, TAUS) if steps else {}},
        "profile_n": {"val loss (excess over optimum)": len(scores),
                      "steps to target": len(steps)},
        "bias": A.bias_correction_curves(records),
        "schedule": {"name": name, "fn": fn, "steps": n_steps},
        "failures": failures,
        "deterministic": protocol.deterministic(records),
        "paths": {k: rs[0].trajectory for k, rs in A.best_runs(records, sel).items()
                  if rs and rs[0].trajectory},
    }


def ci_curves(records, selections, key: str = "train_loss") -> dict:
    """{(problem, optimizer): {"step", "mean", "lo", "hi", "n"}} at the selected lr, with
    [lo, hi] the 95% Student-t interval of the mean over the seeds finite at that step
    (a step where only one seed is finite gets lo = hi = mean). Seeds are truncated to
    the shortest curve."""
    import numpy as np

    from ..stats import t_ppf

    out = {}
    for k, rs in A.best_runs(records, selections).items():
        cs = [r.curves for r in rs if r.curves and r.curves.get(key)]
        if not cs:
            continue
        n = min(len(c[key]) for c in cs)
        ys = np.array([[np.nan if v is None else float(v) for v in c[key][:n]] for c in cs])
        ys[~np.isfinite(ys)] = np.nan
        cnt = np.isfinite(ys).sum(axis=0)
        keep = cnt > 0
        if keep.sum() < 2:  # a run that diverged at once has no curve to draw
            continue
        ys, cnt = ys[:, keep], cnt[keep]
        step = np.asarray(cs[0].get("step", list(range(n)))[:n], dtype=float)[keep]
        with np.errstate(all="ignore"):
            mean = np.nanmean(ys, axis=0)
            sd = np.nan_to_num(np.nanstd(ys, axis=0, ddof=1)) if len(cs) > 1 \
                else np.zeros_like(mean)
        tq = np.array([t_ppf(0.975, int(c) - 1) if c > 1 else 0.0 for c in cnt])
        half = tq * sd / np.sqrt(cnt)
        out[k] = {"step": step, "mean": mean, "lo": mean - half, "hi": mean + half,
                  "n": len(cs)}
    return out


def images(ctx) -> dict:
    """{name: PNG bytes} for every figure that has data (drawn in two processes where
    possible, see :mod:`.draw`)."""
    from . import plots as P
    from . import schedules, viewer
    from .draw import draw

    c = ctx["colors"]
    panels = []
    for p in ctx["problems"]:
        i = ctx["info"][p]
        paths = {o: path for (pp, o), path in ctx["paths"].items() if pp == p}
        if i["surface"] is not None and i["bounds"] and paths:
            panels.append({"name": p, "surface": i["surface"], "bounds": i["bounds"],
                           "minima": i["minima"], "paths": paths})
    time_table = {}
    for (p, o), v in ctx["time"].items():
        time_table.setdefault(p, {})[o] = v
    floors = ctx["floors"]   # the verdicts' optimum floor, on every loss axis
    jobs = {
        "contours": lambda: P.contours(panels, c),
        "loss_curves": lambda: P.loss_curves(ctx["curves"], ctx["optima"], c, ctx["problems"],
                                             floors=floors),
        "sensitivity": lambda: P.sensitivity(ctx["sweeps"], ctx["selections"], c,
                                             ctx["problems"], floors=floors),
        "tuning_cost": lambda: P.tuning_cost(A.tuning_cost(ctx["records"]), c,
                                             ctx["problems"], floors=floors),
        "profiles": lambda: P.profiles(ctx["profiles"], ctx["taus"], c),
        "ranks": lambda: P.heatmap(ctx["ranks"], ctx["optimizers"], ctx["problems"],
                                   "rank by seed-mean val loss (1 = best; boxed = tied with "
                                   "the best; ties share a rank)",
                                   boxed={p: v.tied for p, v in ctx["verdicts"].items()},
                                   loose={p: v.unresolved + v.untested
                                          for p, v in ctx["verdicts"].items()},
                                   fmt="{:g}") if ctx["ranks"] else None,
        "time": lambda: P.heatmap(time_table, ctx["optimizers"], ctx["problems"],
                                  "time per step ÷ SGD's", fmt="{:.2f}×", log=True)
        if any(v is not None for v in ctx["time"].values()) else None,
        "bias": lambda: P.bias_correction(ctx["bias"]),
        "schedule": lambda: schedules.figure(protocol.schedule_usage(ctx["records"])),
        **viewer.image_jobs(ctx),  # small multiples, one per 2-D problem
    }
    # The costliest first, so that the two processes finish together.
    first = ("sensitivity", "loss_curves")
    order = [n for n in first if n in jobs] + \
        [n for n in jobs if n.startswith("multiples:")] + \
        [n for n in jobs if n not in first and not n.startswith("multiples:")]
    out = draw({n: jobs[n] for n in order})
    return {n: out[n] for n in jobs if out[n]}
