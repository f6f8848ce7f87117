"""What the protocol, the schedule section and the failed-runs table state, read from
the records and the comparison's meta (plain text, not escaped; pure, no I/O).

Everything here is what the store supports: a fact the store lacks (the machine of a
comparison run before optimlab recorded it) is said to be unrecorded, never guessed.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from ..wording import plural

#: What each schedule of ``optimlab.schedules.by_name`` does to the base lr.
SCHEDULE_WORDS = {
    "constant": "multiplier 1 throughout",
    "step": "×0.1 after each third of the run",
    "exponential": "exponential decay to 0.01 at the end",
    "inverse_sqrt": "1/√t (the Adam paper's α/√t)",
    "cosine": "cosine from 1 down to 0 at the end",
    "cosine_restarts": "cosine with warm restarts (SGDR)",
    "warmup_cosine": "linear warmup over the first 5% of the run, then cosine down to 0",
    "one_cycle": "one cycle (torch's defaults)",
    "polynomial": "linear decay to 0",
}


def num(x) -> str:
    from .text import num as _num
    return _num(x)


def names(values) -> str:
    return ", ".join(str(v) for v in values)


def value(v) -> str:
    """A meta value as readable text, whole: dicts as "k v, k v", lists joined by
    commas, None as "—"."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return num(v)
    if isinstance(v, dict):
        return "; ".join(f"{k} {value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x) for x in v)
    return " ".join(str(v).split())


#: Settings whose None has a meaning worth saying.
_NONE_MEANS = {"steps": "per problem (see steps_per_problem)",
               "suite": "none (problems named with --problems/--problem)"}


def settings(meta, skip) -> list:
    """[(key, text)] of the comparison's settings, every value whole and readable."""
    out = []
    for k, v in sorted(meta.items()):
        if k in skip:
            continue
        out.append((str(k), _NONE_MEANS.get(k, "—") if v is None else value(v)))
    return out


def step_budget(meta) -> str:
    """'300 steps' or 'rosenbrock 500, ill-conditioned 200, ...'."""
    if meta.get("steps"):
        return f"{meta['steps']} steps per run"
    per = meta.get("steps_per_problem")
    if isinstance(per, dict) and per:
        return "steps per run by problem: " + ", ".join(f"{p} {n}" for p, n in per.items())
    return "each problem's default"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h} h {m} min {s} s" if h else (f"{m} min {s} s" if m else f"{s} s")


def _when(text) -> str:
    t = str(text)
    if t.endswith("+00:00") and "T" in t:
        return t[:-6].replace("T", " ") + " UTC"
    return t


def _seconds_between(a, b):
    import datetime as dt
    try:
        return (dt.datetime.fromisoformat(str(b)) - dt.datetime.fromisoformat(str(a))).total_seconds()
    except (TypeError, ValueError):
        return None


def _runs(workers) -> str:
    """'2 runs in parallel', 'one run at a time'."""
    if workers is None:
        return "an unrecorded number of runs in parallel"
    return "one run at a time" if int(workers) == 1 else f"{int(workers)} runs in parallel"


def machine(meta) -> list:
    """Sentences on where and how long the comparison ran, and the load while it did."""
    m = meta.get("machine")
    out = []
    workers = meta.get("workers")
    if isinstance(m, dict):
        out.append(f"Hardware: {m.get('cpu', 'unknown CPU')}, {m.get('logical_cpus', '?')} "
                   f"logical CPUs ({m.get('usable_cpus', '?')} usable by the comparison), "
                   f"{m.get('torch_threads_per_run', 1)} torch thread per run, "
                   f"{_runs(workers)} ({meta.get('executor', 'local')} "
                   f"executor); {m.get('platform', '')}.")
    else:
        out.append("Hardware: not recorded in this store (written before optimlab recorded "
                   f"the machine); {_runs(workers)}, 1 torch thread each.")
    start, end = meta.get("started") or meta.get("created"), meta.get("finished")
    if meta.get("wall_seconds") is not None:
        out.append(f"Wall time: {_hms(float(meta['wall_seconds']))} for the command that "
                   f"finished the comparison ({_when(start)} to {_when(end)})"
                   + (f"; first started {_when(meta['created'])}"
                      if meta.get("created") and meta.get("created") != start else "") + ".")
    elif end and meta.get("created"):
        span = _seconds_between(meta["created"], end)
        out.append(f"Wall time: {_hms(span) if span is not None else '?'} from creation to "
                   f"finish ({_when(meta['created'])} to {_when(end)}; includes any pause "
                   "between a stop and a resume; the store records no measured wall time).")
    load = meta.get("load")
    if isinstance(load, dict) and load.get("start") is not None:
        out.append(f"Time per step is each run's median step time, measured with "
                   f"{_runs(workers)}: the 1-minute load average "
                   f"was {load['start']:g} when the comparison started (before its own runs)"
                   + (f" and {load['end']:g} when it finished" if load.get("end") is not None
                      else "") + "; compare time ratios, not absolute times, across machines.")
    else:
        out.append("Time per step is each run's median step time, measured with "
                   f"{_runs(workers)}; the machine's load during "
                   "the measurements was not recorded in this store, so other processes may "
                   "have slowed some runs: read the ratios as rough.")
    return out


def data_sizes(ctx) -> str | None:
    """'digits-logistic: train 1078, val 359, test 360 rows, mini-batches of 64; ...'."""
    sizes = ctx["meta"].get("data_sizes")
    if not isinstance(sizes, dict) or not sizes:
        return ("Data split sizes: not recorded in this store (written before optimlab "
                "recorded them); the problems' descriptions give the data sets.")
    parts = []
    for p in ctx["problems"]:
        s = sizes.get(p)
        if not isinstance(s, dict):
            continue
        rows = ", ".join(f"{k} {s[k]}" for k in ("train", "val", "test") if k in s)
        batch = s.get("batch")
        parts.append(f"{p}: {rows} rows, " + (f"mini-batches of {batch}" if batch
                                               else "full batch"))
    others = [p for p in ctx["problems"] if p not in sizes]
    text = "Data splits (fixed; the seed changes initial weights and batch order only): " \
        + "; ".join(parts) if parts else "Data splits: none recorded"
    if others:
        text += f"; no data set (a function, or fresh noise every step): {names(others)}"
    return text + "."


def evaluation(ctx) -> str | None:
    """How often runs were evaluated: from the stored curves."""
    by_problem = defaultdict(Counter)
    for r in ctx["records"]:
        st = (r.curves or {}).get("step") or []
        if r.status == "ok" and len(st) > 1:
            by_problem[r.spec.problem][(len(st) - 1, st[1] - st[0], r.spec.steps)] += 1
    if not by_problem:
        return None
    parts = []
    for p in ctx["problems"]:
        if by_problem.get(p):
            (n, every, steps), _ = by_problem[p].most_common(1)[0]
            parts.append(f"{p} every {every} of {steps} steps ({n} points)")
    return ("Evaluation resolution: a run's full train and validation losses are computed "
            "at the start and at evenly spaced steps: " + ", ".join(parts)
            + ". The loss curves and steps to target have this resolution (a run reaching "
            "its target between two evaluations counts at the later one).")


def targets(ctx) -> str | None:
    """The train-loss targets of "steps to target", per problem."""
    parts = [f"{p} {num(ctx['info'][p]['target'])}" for p in ctx["problems"]
             if ctx["info"][p].get("target") is not None]
    if not parts:
        return None
    none = [p for p in ctx["problems"] if ctx["info"][p].get("target") is None]
    return ("Steps to target = the first evaluation step at which the train loss (not the "
            "validation loss) is at or below the problem's target: " + ", ".join(parts)
            + (f"; no target for {names(none)}" if none else "") + ".")


def _hp_words(hps) -> str:
    """The varied hyperparameters of a spec as words."""
    out = []
    for k, v in hps:
        if k == "betas" and isinstance(v, (list, tuple)) and len(v) == 2:
            out.append(f"β1 {v[0]:g}, β2 {v[1]:g}")
        elif k == "bias_correction":
            out.append("bias correction " + ("on" if v else "off"))
        elif k == "layer_decay":
            out.append(f"layer-wise lr decay {v:g}")
        else:
            out.append(f"{k} {value(v)}")
    return ", ".join(out)


def run_settings(spec) -> str:
    """What a run varied besides problem, optimizer, lr and seed ('' for defaults)."""
    words = _hp_words(spec.hyperparameters)
    if spec.schedule != "constant":
        words = (words + ", " if words else "") + f"schedule {spec.schedule}"
    return words or "defaults"


def failure_reason(r) -> str:
    """Why a run failed: the step and rule of its divergence, or its error text."""
    f = r.final or {}
    if f.get("error"):
        return str(f["error"])
    if r.status != "diverged":
        return r.status
    at = f.get("diverged_at")
    c = r.curves or {}
    last = [(s, l) for s, l in zip(c.get("step") or [], c.get("train_loss") or [])
            if l is not None and math.isfinite(l)]
    text = ("diverged" + (f" at step {at}" if at is not None else "")
            + ": a non-finite loss or parameter, or a loss above 1e10 × its start")
    if last:
        text += f"; last finite train loss {num(last[-1][1])} at step {last[-1][0]}"
    return text


def deterministic(records) -> dict:
    """{problem: (identical, groups)} for problems on which every group of runs that
    differ only in the seed (2 or more finished seeds) gave bit-identical results (final
    losses and train-loss curve): the seeds replicate nothing there."""
    groups = defaultdict(list)
    for r in records:
        if r.status == "ok":
            s = r.spec
            groups[(s.problem, s.optimizer, s.lr, s.steps, s.schedule, s.hyperparameters,
                    s.phase if s.phase not in ("sweep", "seeds") else "")].append(r)
    count = defaultdict(lambda: [0, 0])
    for (p, *_), rs in groups.items():
        if len({r.spec.seed for r in rs}) < 2:
            continue
        keys = {(tuple((r.final or {}).get(k) for k in ("train_loss", "val_loss", "test_loss")),
                 tuple((r.curves or {}).get("train_loss") or ())) for r in rs}
        count[p][1] += 1
        count[p][0] += len(keys) == 1
    return {p: (same, n) for p, (same, n) in count.items() if n and same == n}


def deterministic_note(ctx, p) -> str | None:
    """What a deterministic problem's ± 0, n and p-values mean (None otherwise)."""
    d = ctx.get("deterministic", {}).get(p)
    if not d:
        return None
    return (f"deterministic: every seed gave a bit-identical run ({d[0]} of {d[1]} groups "
            "of runs differing only in the seed), so n counts repeats of one run, ± 0 is "
            "not a measured spread, and a p-value (e.g. <0.001) only says that two final "
            "losses differ exactly; it is no evidence that the difference holds for other "
            "starting points or data, which the seeds do not vary here.")


def schedule_usage(records) -> list:
    """[(schedule, {"runs", "phases", "problems", "optimizers", "seeds", "steps"})] in
    order of first use: which runs use which lr schedule."""
    out = {}
    for r in records:
        u = out.setdefault(r.spec.schedule, {"runs": 0, "phases": Counter(),
                                             "problems": set(), "optimizers": set(),
                                             "seeds": set(), "steps": Counter()})
        u["runs"] += 1
        u["phases"][r.spec.phase] += 1
        u["problems"].add(r.spec.problem)
        u["optimizers"].add(r.spec.optimizer)
        u["seeds"].add(r.spec.seed)
        u["steps"][r.spec.steps] += 1
    return sorted(out.items(), key=lambda kv: (kv[0] != "constant", kv[0]))


def phase_order(counts) -> list:
    """[(phase, n)] in the order a comparison runs its phases."""
    from .context import PHASES
    return sorted(counts.items(), key=lambda kv: (PHASES.index(kv[0]) if kv[0] in PHASES
                                                  else len(PHASES), kv[0]))


def schedule_sentence(records, meta) -> str:
    """Which runs used which schedule, in one sentence."""
    usage = schedule_usage(records)
    if not usage:
        return f"schedule: {meta.get('schedule') or 'constant'}"
    parts = []
    for name, u in usage:
        phases = ", ".join(f"{ph} {n}" for ph, n in phase_order(u["phases"]))
        parts.append(f"{name} ({SCHEDULE_WORDS.get(name, name)}): "
                     f"{plural(u['runs'], 'run')} ({phases})")
    return "lr schedules (base lr × multiplier): " + "; ".join(parts)


def seeds(values) -> str:
    """'0 … 4' for consecutive seeds, else '0, 2'."""
    s = sorted(values)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]} … {s[-1]}"
    return names(s)


def phases(ctx) -> list:
    """Sentences on the phases after lr selection: bias-correction, schedules, layer-wise,
    from their runs."""
    by = defaultdict(list)
    for r in ctx["records"]:
        by[r.spec.phase].append(r)
    out = []
    bias = by.get("bias-correction")
    if bias:
        b2 = sorted({dict(r.spec.hyperparameters).get("betas", (0, 0))[1] for r in bias})
        lrs = sorted({r.spec.lr for r in bias})
        out.append(f"Phase bias-correction ({plural(len(bias), 'run')}): "
                   f"{names(sorted({r.spec.optimizer for r in bias}))} on "
                   f"{names(sorted({r.spec.problem for r in bias}))}, β1 0.9, with and "
                   f"without bias correction for β2 ∈ {{{names(f'{b:g}' for b in b2)}}}, at "
                   f"{plural(len(lrs), 'lr')} ({num(lrs[0])} … {num(lrs[-1])}, the lrs its "
                   f"search tried), seeds {names(sorted({r.spec.seed for r in bias}))}; "
                   "these runs never enter lr selection.")
    sched = by.get("schedules")
    if sched:
        sch = sorted({r.spec.schedule for r in sched})
        out.append(f"Phase schedules ({plural(len(sched), 'run')}): "
                   f"{names(sorted({r.spec.optimizer for r in sched}))} on "
                   f"{names(sorted({r.spec.problem for r in sched}))}, each at the lr selected "
                   f"under the constant schedule, with {names(sch)}, seeds "
                   f"{seeds({r.spec.seed for r in sched})}; compared paired by seed "
                   "with the constant-schedule runs of the same lr.")
    lw = by.get("layerwise")
    if lw:
        decay = sorted({dict(r.spec.hyperparameters).get("layer_decay") for r in lw}
                       - {None})
        out.append(f"Phase layerwise ({plural(len(lw), 'run')}): "
                   f"{names(sorted({r.spec.optimizer for r in lw}))} on "
                   f"{names(sorted({r.spec.problem for r in lw}))} at the selected lr with "
                   f"layer-wise lr decay {names(f'{d:g}' for d in decay)} (the output layer "
                   "at the selected lr, each layer below × the decay; "
                   "optimlab.param_groups), seeds "
                   f"{seeds({r.spec.seed for r in lw})}; compared paired by seed "
                   "with the uniform-lr runs.")
    return out
