"""Formatting shared by the HTML and Markdown renderers (plain text, not escaped)."""

from __future__ import annotations

import math
import shlex

from ..analysis import TOLERANCE as TOL
from ..wording import plural  # noqa: F401  (re-exported for the renderers)

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


def protocol(ctx) -> list:
    """The protocol as sentences."""
    m = ctx["meta"]
    grid = m.get("grid")
    grid_s = ", ".join(num(g) for g in grid) if isinstance(grid, (list, tuple)) else "?"
    seeds = m.get("seeds", "?")
    return [
        (f"Every optimizer ran the same learning-rate search, starting from the grid "
         f"({grid_s}): {m.get('grid_spacing')}; "
         if (m.get("search") or {}).get("adaptive") else
         f"Every optimizer ran the same learning-rate grid ({grid_s}); ")
        + "same initial weights and batch order for all (both fixed by the seed).",
        f"The best lrs of the seed-0 search (up to "
        f"{(m.get('search') or {}).get('candidates', 1)} per pair) were rerun in two rungs "
        f"of successive halving: all of them to "
        f"{(m.get('search') or {}).get('rung_seeds', seeds)} seeds, then the leader and "
        f"those within noise of it (paired difference under 2 standard errors) to {seeds} "
        "seeds in total; among these, the lr with the lowest seed-mean final validation "
        "loss is selected. The test split is never used for any choice. Metrics are mean ± "
        "half-width of the 95% Student-t interval over the selected lr's seeds.",
        "Diverged or failed runs are kept and counted: they score +inf and are never "
        "selected.",
        f"Step budget: {m.get('steps') or m.get('steps_per_problem') or 'problem default'}; "
        "schedule: "
        f"{ctx['schedule']['name']}; all other hyperparameters at their defaults (only "
        "the learning rate is tuned).",
        f"lr width = decades of lr around the best whose val loss is within "
        f"{int(TOL * 100)}% of the best loss's gap above the optimum (above 0 if the "
        "optimum is unknown); it is quantised by the local spacing of the searched lrs "
        "(a quarter decade around the best after refinement).",
        "Performance profile (Dolan & Moré, 2002): rho(tau) = fraction of problems on "
        "which an optimizer's cost is within tau times the best optimizer's cost.",
    ] + _verdict_protocol()


def _verdict_protocol() -> list:
    from .verdicts import protocol
    return protocol()
