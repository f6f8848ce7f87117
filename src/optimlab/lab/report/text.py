"""Formatting shared by the HTML and Markdown renderers (plain text, not escaped)."""

from __future__ import annotations

import math
import shlex

from ..analysis import TOLERANCE as TOL
from ..wording import plural  # noqa: F401  (re-exported for the renderers)
from . import protocol as P

PROF_VAL = "val loss (excess over optimum)"
PROF_STEPS = "steps to target"


def num(x) -> str:
    """Short number; None -> '—', inf/nan -> 'diverged'."""
    if x is None:
        return "—"
    x = float(x)
    if not math.isfinite(x):
        return "diverged"
    return f"{x:.4g}"


LR_WIDTH = (f"lr width = decades of lr around the best lr (the selected one) whose seed-0 val "
            f"loss is within {int(TOL * 100)}% of that lr's seed-0 gap: the smaller of its excess over the optimum (over 0 when the "
            "optimum is unknown) and how far it fell from the starting val loss, so that an lr "
            "that learned nothing is never within it; a best below the optimum floor counts "
            "as the floor.")
TRAIN_GAP = ("Train gap to optimum = final train loss − the optimum where it is known; a gap "
             "within the optimum floor's resolution either way (float32 training against a "
             "float64 optimum) reads \"at the optimum\".")


def gap_text(ctx, problem, s) -> str | None:
    """'at the optimum (|gap| ≤ 2e-07)' where a train gap's seed mean is within the optimum
    floor's resolution of 0 (a float32 loss can end a hair below the float64 optimum),
    else None (show the number)."""
    floor, optimum = ctx.get("floors", {}).get(problem), ctx.get("optima", {}).get(problem)
    if not s or floor is None or optimum is None or not math.isfinite(floor):
        return None
    resolution = floor - optimum
    return f"at the optimum (|gap| ≤ {resolution:.1g})" if abs(s["mean"]) <= resolution else None


def half_width(s, level: float = 0.95) -> float | None:
    """Half-width of the Student-t interval of the mean of an analysis stats dict
    ({"mean","std","n"}); None with fewer than 2 values."""
    if not s or s["n"] < 2:
        return None
    from ..stats import t_ppf
    return t_ppf(0.5 + level / 2, s["n"] - 1) * s["std"] / math.sqrt(s["n"])


def stat(s, fmt="{:.4g}", sd_fmt="{:.2g}") -> str:
    """'mean ± 95% CI half-width' of an analysis stats dict, '—' when absent."""
    if not s:
        return "—"
    h = half_width(s)
    if h is not None:
        return f"{fmt.format(s['mean'])} ± {sd_fmt.format(h)}"
    return fmt.format(s["mean"])


def short(v, n=160) -> str:
    """A value as one line of at most n characters."""
    s = " ".join(str(v).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def lr_flag(ctx, sel) -> str | None:
    """"bound" when the selected lr is at the adaptive search's hard bound (the search
    cannot widen it), "edge" when it is at the end of the lrs tried (a fixed grid: widen
    it with --lrs), else None."""
    if sel is None:
        return None
    if sel.at_bound and (ctx["meta"].get("search") or {}).get("adaptive"):
        return "bound"
    return "edge" if sel.on_edge else None


def bounds(ctx) -> str:
    """'1e-06 … 10': the adaptive search's hard bounds."""
    b = (ctx["meta"].get("search") or {}).get("bounds") or (1e-6, 10.0)
    return f"{num(b[0])} … {num(b[-1])}"


def bound_note(ctx) -> str | None:
    """What "at the search's hard bound" means and how to look past it (None when no
    selected lr is there)."""
    pairs = [(p, o, s.lr) for (p, o), s in sorted(ctx["selections"].items())
             if lr_flag(ctx, s) == "bound"]
    if not pairs:
        return None
    listed = ", ".join(f"{p}/{o} (lr {num(lr)})" for p, o, lr in pairs)
    p, o, lr = pairs[0]
    steps = (-0.5, 0, 0.5, 1) if lr > 1 else (-1, -0.5, 0, 0.5)
    past = [lr * 10 ** k for k in steps]
    return (f"At the search's hard bound: the selected lr is a bound of the adaptive search "
            f"({bounds(ctx)}), which never goes past it, so the best lr may lie beyond it "
            f"and this optimizer's result may be better than shown. {listed}. There is no "
            f"option to move the bounds; to look past one, rerun the pair with a fixed grid "
            f"(--lrs replaces the search), e.g. optimlab compare --problems {p} "
            f"--optimizers {o} --lrs {','.join(f'{x:.3g}' for x in past)}")


def counts(ctx) -> str:
    """'12 runs · 1 problem · 3 optimizers' (plain text)."""
    return (f"{plural(len(ctx['records']), 'run')} · {plural(len(ctx['problems']), 'problem')}"
            f" · {plural(len(ctx['optimizers']), 'optimizer')}")


def command(meta) -> str:
    """The command line that produced the store."""
    if meta.get("command"):
        return str(meta["command"])
    argv = meta.get("argv")
    if isinstance(argv, (list, tuple)):
        return shlex.join(str(a) for a in argv)
    return "optimlab compare  # (command not recorded)"


def incomplete(ctx) -> str | None:
    """The warning under the heading "Incomplete" of a comparison that did not finish
    (None when it did): where it stopped, and that everything shown is provisional."""
    p = ctx.get("progress")
    if p is None:
        return None
    return (f"This comparison did not finish. It stopped (interrupted, stopped "
            f"by an error, or still running) during phase {p['phase']}, with "
            f"{plural(p['runs'], 'run')} stored. The answer, verdicts and figures below are "
            f"provisional, computed from those runs only; later phases have not run. "
            f"Rerun the same command to finish it: {command(ctx['meta'])}")


def protocol(ctx) -> list:
    """The protocol as sentences; for an unfinished comparison, what it will do (the
    steps it has not done are not claimed)."""
    m = ctx["meta"]
    grid = m.get("grid")
    grid_s = ", ".join(num(g) for g in grid) if isinstance(grid, (list, tuple)) else "?"
    seeds = m.get("seeds", "?")
    stopped = ctx.get("progress")
    search = m.get("search") or {}
    reruns = (f"the best lrs of the seed-0 search (up to {search.get('candidates', 1)} per "
              f"pair) {'are to be' if stopped else 'were'} rerun in two rungs of successive "
              f"halving: all of them to {search.get('rung_seeds', seeds)} seeds, then the "
              f"leader and those within noise of it (paired difference under 2 standard "
              f"errors) to {seeds} seeds in total; among these, the lr with the lowest "
              "seed-mean final validation loss is selected.")
    if stopped is None:
        reruns = reruns[0].upper() + reruns[1:]
    else:
        reruns = (f"Not completed (the comparison stopped during phase {stopped['phase']}; "
                  f"the selected lrs shown are the best of the runs stored so far): {reruns}")
    out = [
        (f"Every optimizer {'gets' if stopped else 'ran'} the same learning-rate search, "
         f"starting from the grid ({grid_s}): {m.get('grid_spacing')}; "
         if (m.get("search") or {}).get("adaptive") else
         f"Every optimizer {'gets' if stopped else 'ran'} the same learning-rate grid "
         f"({grid_s}); ")
        + "same initial weights and batch order for all (both fixed by the seed).",
        reruns + " The test split is never used for any choice. Metrics are mean ± "
        "half-width of the 95% Student-t interval over the selected lr's seeds.",
        "Diverged or failed runs are kept and counted: they score +inf and are never "
        "selected.",
        f"Step budget: {P.step_budget(m)}; {P.schedule_sentence(ctx['records'], m)}; all "
        "other hyperparameters at their defaults (only the learning rate is tuned; the "
        "phases below vary one setting each at the selected lr).",
        ]
    out += P.phases(ctx)
    out += [x for x in (P.targets(ctx), P.evaluation(ctx), P.data_sizes(ctx)) if x]
    out += [f"{p} is {P.deterministic_note(ctx, p)}" for p in ctx["problems"]
            if P.deterministic_note(ctx, p)]
    out += P.machine(m)
    out += [
        "Selected lrs at the search's hard bounds (" + bounds(ctx) + ") are flagged "
        "\"at the search's hard bound\": the search cannot widen them (see --lrs to look "
        "past one); with a fixed grid (--lrs), a selected lr at its end is flagged \"edge\".",
        LR_WIDTH + " It is quantised by the local spacing of the searched lrs (a quarter "
        "decade around the best after refinement).",
        TRAIN_GAP,
        "Performance profile (Dolan & Moré, 2002): rho(tau) = fraction of problems on "
        "which an optimizer's cost is within tau times the best optimizer's cost.",
    ]
    return out + _verdict_protocol()


def _verdict_protocol() -> list:
    from .verdicts import protocol
    return protocol()
