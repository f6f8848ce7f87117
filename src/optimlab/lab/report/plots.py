"""Matplotlib figures of the report, each returned as PNG bytes (Agg backend).

Every function takes plain data (from ``optimlab.lab.analysis``) and a colour map
``{optimizer: colour}`` (:func:`palette`) so an optimizer has the same colour in every
figure. The loss-vs-lr figures are in :mod:`.plots_lr`, the shared parts in
:mod:`.plots_common`.
"""

from __future__ import annotations

import math

import numpy as np

from .plots_common import (_STYLE, FLOOR_HANDLE, Line2D, _grid, _legend, _png,
                           at_floor, floor_of, palette, plt, scale_with_floor)
from .plots_lr import bias_correction, sensitivity

__all__ = ["palette", "contours", "loss_curves", "sensitivity", "tuning_cost", "profiles",
           "heatmap", "bias_correction", "schedule"]


def contours(panels, colors) -> bytes | None:
    """2-D problems: each optimizer's best-lr path over log-spaced loss contours.

    panels: [{"name", "surface", "bounds", "minima", "paths": {optimizer: [[x, y], ...]}}].
    """
    if not panels:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(panels), w=4.3, h=3.8)
        names = sorted({o for p in panels for o in p["paths"]})
        for ax, pnl in zip(axes, panels):
            (x0, x1), (y0, y1) = pnl["bounds"]
            X, Y = np.meshgrid(np.linspace(x0, x1, 220), np.linspace(y0, y1, 220))
            with np.errstate(all="ignore"):
                Z = np.asarray(pnl["surface"](X, Y), dtype=float)
            fin = Z[np.isfinite(Z)]
            if fin.size:
                zmin, span = fin.min(), max(fin.max() - fin.min(), 1e-12)
                # Log-spaced levels above the minimum resolve both the valley floor
                # and the steep walls; 1e-4 of the span is the finest level drawn.
                levels = zmin + np.logspace(np.log10(span * 1e-4), np.log10(span), 22)
                ax.contourf(X, Y, Z, levels=levels, cmap="Blues_r", alpha=0.35,
                            extend="both")
                ax.contour(X, Y, Z, levels=levels, colors="#6b7b8c", linewidths=0.5,
                           alpha=0.7)
            start = None
            for o, path in sorted(pnl["paths"].items()):
                xy = np.asarray(path, dtype=float).reshape(-1, 2)
                xy = xy[np.isfinite(xy).all(axis=1)]
                if not len(xy):
                    continue
                start = xy[0] if start is None else start
                step = max(1, len(xy) // 1500)
                ax.plot(xy[::step, 0], xy[::step, 1], "-", color=colors[o], lw=1.4,
                        alpha=0.9)
                ax.plot(*xy[-1], "o", color=colors[o], ms=4, mec="white", mew=0.6)
            if start is not None:
                ax.plot(*start, "s", color="black", ms=6, mec="white", zorder=5)
            for m in pnl["minima"] or ():
                ax.plot(m[0], m[1], "*", color="gold", ms=13, mec="black", mew=0.7,
                        zorder=6)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_title(pnl["name"])
            ax.set_xlabel("x (first parameter)")
            ax.set_ylabel("y (second parameter)")
            ax.grid(False)
        extra = [Line2D([], [], marker="s", color="black", ls="", label="start"),
                 Line2D([], [], marker="*", color="gold", mec="black", ms=11, ls="",
                        label="minimum")]
        _legend(fig, colors, names, extra)
        fig.tight_layout()
        return _png(fig)


def _gap_floors(curves, optima, floors) -> dict:
    """{problem: the optimum floor}: ``floors`` where given, else ``stats.optimum_floor``
    of the known optimum and the median of the curves' first losses."""
    from ..stats import optimum_floor

    if floors is not None:
        return dict(floors)
    starts: dict = {}
    for (p, _), c in curves.items():
        if len(c["mean"]) and np.isfinite(c["mean"][0]):
            starts.setdefault(p, []).append(float(c["mean"][0]))
    return {p: optimum_floor(optima.get(p), float(np.median(xs))) for p, xs in starts.items()}


def loss_curves(curves, optima, colors, problems, ylabel="train loss",
                floors=None) -> bytes | None:
    """Mean over seeds with a band per optimizer (the context's: a 95% t-interval of
    the mean), one panel per problem.

    curves: {(problem, optimizer): {"step","mean","lo","hi","n"}}; where the problem
    optimum is known the gap ``loss - optimum`` is drawn instead, raised to the optimum
    floor (floors: {problem: ``verdicts.floors``}; None derives it from the curves), so
    a run that reached the optimum sits on the floor line instead of far below it.
    """
    problems = [p for p in problems if any(k[0] == p for k in curves)]
    if not problems:
        return None
    floors = _gap_floors(curves, optima, floors)
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(problems))
        names = sorted({k[1] for k in curves})
        any_floor = False
        for ax, p in zip(axes, problems):
            opt = optima.get(p)
            floor = floor_of(floors, p)
            gap_floor = floor - opt if opt is not None and floor is not None else None
            drawn = [o for o in names if (p, o) in curves]
            lows, highs = [], []
            for o in drawn:
                c = curves[(p, o)]
                shift = opt if opt is not None else 0.0
                m, lo, hi = (at_floor(c[k] - shift, gap_floor) for k in ("mean", "lo", "hi"))
                ax.plot(c["step"], m, color=colors[o], lw=1.6, zorder=3)
                if c["n"] > 1:
                    # Fainter bands where many overlap, so the lines stay readable.
                    ax.fill_between(c["step"], lo, hi, color=colors[o], lw=0,
                                    alpha=0.18 if len(drawn) <= 5 else 0.08)
                # Scale from the means: a t-band's lower edge can cross 0 for a
                # positive loss, which would rule out the log scale the curve needs.
                lows.append(np.nanmin(m))
                highs.append(np.nanmax(m))
            any_floor |= scale_with_floor(ax, lows + highs, gap_floor)
            ax.set_title(p)
            ax.set_xlabel("step")
            ax.set_ylabel(f"{ylabel} − optimum" if opt is not None else ylabel)
        _legend(fig, colors, names, [FLOOR_HANDLE] if any_floor else [])
        fig.tight_layout()
        return _png(fig)


def tuning_cost(curves, colors, problems, floors=None) -> bytes | None:
    """Expected best val loss vs configurations tried ({(problem, optimizer): [(n, y)]},
    Dodge et al. 2019), one panel per problem, one line per optimizer; losses below the
    optimum floor (floors: {problem: ``verdicts.floors``}) are drawn on it."""
    problems = [p for p in problems if any(k[0] == p for k in curves)]
    if not problems:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(problems))
        names = sorted({k[1] for k in curves})
        any_floor = False
        for ax, p in zip(axes, problems):
            floor = floor_of(floors, p)
            ys = []
            for o in names:
                c = curves.get((p, o))
                if c:
                    y = at_floor([y for _, y in c], floor)
                    ax.plot([n for n, _ in c], y, "-", color=colors[o], lw=1.5,
                            marker=".", ms=3)
                    ys += [v for v in y if math.isfinite(v)]
            any_floor |= scale_with_floor(ax, ys, floor)
            ax.set_title(p)
            ax.set_xlabel("lrs tried (n)")
            ax.set_ylabel("expected best val loss")
        _legend(fig, colors, names, [FLOOR_HANDLE] if any_floor else [])
        fig.tight_layout()
        return _png(fig)


def profiles(curves, taus, colors) -> bytes | None:
    """Performance profiles: {title: {optimizer: [rho(tau)]}} side by side."""
    curves = {t: c for t, c in curves.items() if c}
    if not curves:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(curves), w=4.8, h=3.4, ncols=2)
        names = sorted({o for c in curves.values() for o in c})
        for ax, (title, prof) in zip(axes, curves.items()):
            for o, rho in sorted(prof.items()):
                ax.step(taus, rho, where="post", color=colors[o], lw=1.8)
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("τ (ratio to best)")
            ax.set_ylabel("fraction of problems")
            ax.set_title(title)
        _legend(fig, colors, names)
        fig.tight_layout()
        return _png(fig)


#: Cell colours of a heatmap with tied groups: tied with the best, significantly worse,
#: a problem without a verdict, and not shown worse yet outside the tied group.
TIED, WORSE, NO_VERDICT, LOOSE = "#86d69b", "#f4c7a8", "#e5e7eb", "#fde68a"


def _cell_colours(data, shown, rows, cols, boxed, cmap, vmin, vmax, loose=None):
    """rows x cols x 3 RGB: by tie status where ``boxed`` is given (a rank means
    nothing across columns: the 6th of a 10-way tie is as good as the 1st), else by value."""
    import matplotlib.colors as mcolors

    out = np.ones(data.shape + (3,))
    cm = plt.get_cmap(cmap)
    norm = mcolors.Normalize(vmin, vmax + 1e-9)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if np.isnan(data[i, j]):
                continue
            if boxed is not None:
                tied = boxed.get(c)
                colour = NO_VERDICT if tied is None else TIED if r in tied else \
                    LOOSE if r in (loose or {}).get(c, ()) else WORSE
                out[i, j] = mcolors.to_rgb(colour)
            elif np.isfinite(shown[i, j]):
                out[i, j] = cm(norm(shown[i, j]))[:3]
    return out


def heatmap(table, rows, cols, title, fmt="{:.1f}", cmap="RdYlGn_r", log=False,
            boxed=None, loose=None) -> bytes:
    """Annotated rows x cols heatmap of {col: {row: value}} (None/missing = blank).

    boxed: optional {col: [rows]}, the statistically tied group with the best of each
    column: its cells are green with a heavy outline (drawn per cell, so a
    non-contiguous group still shows), the column's other cells orange; the value is
    only the text. loose: optional {col: [rows]} outside the tied group yet not shown
    worse (a wide spread, or no test), coloured apart. Without ``boxed`` the colour
    follows the value (``cmap``).
    """
    data = np.array([[np.nan if table.get(c, {}).get(r) is None else table[c][r]
                      for c in cols] for r in rows], dtype=float)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(1.6 + 1.05 * len(cols), 1.0 + 0.45 * len(rows)))
        shown = np.log10(data) if log else data
        fin = shown[np.isfinite(shown)]
        vmin, vmax = (fin.min(), fin.max()) if fin.size else (0, 1)
        if log:
            # Centre the log colour scale on 1x so faster is green, slower red.
            # At least +-log10(2): a 2x ratio is full colour, 10% differences stay pale.
            lim = max(abs(vmin), abs(vmax), math.log10(2))
            vmin, vmax = -lim, lim
        rgb = _cell_colours(data, shown, rows, cols, boxed, cmap, vmin, vmax, loose)
        ax.imshow(rgb, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = data[i, j]
                txt = "—" if np.isnan(v) else ("inf" if np.isinf(v) else fmt.format(v))
                # Rec. 709 luma: white text on dark cells, dark text on light ones.
                dark = 0.2126 * rgb[i, j, 0] + 0.7152 * rgb[i, j, 1] + 0.0722 * rgb[i, j, 2] < 0.5
                ax.text(j, i, txt, ha="center", va="center", fontsize=9,
                        color="white" if dark else "#1e293b")
        for j, c in enumerate(cols):
            for r in (boxed or {}).get(c, ()):
                if r in rows:
                    ax.add_patch(plt.Rectangle((j - 0.46, rows.index(r) - 0.44), 0.92, 0.88,
                                               fill=False, lw=2.2, ec="#0f172a"))
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.grid(False)
        ax.set_title(title)
        if boxed is not None:
            from matplotlib.patches import Patch
            handles = [Patch(fc=TIED, ec="#0f172a", lw=1.5, label="tied with the best"),
                       Patch(fc=WORSE, label="worse than the best (significant)")]
            if any((loose or {}).get(c) for c in cols):
                handles.append(Patch(fc=LOOSE, label="not shown worse (wide spread / no test)"))
            fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                       ncol=len(handles), fontsize=9)
        fig.tight_layout()
        return _png(fig)


def schedule(fn, steps: int, name: str) -> bytes:
    """The lr multiplier of the schedule over the run."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 2.4))
        t = np.unique(np.linspace(0, max(steps - 1, 1), 400).astype(int))
        ax.plot(t, [fn(int(i)) for i in t], color="#334155", lw=2)
        ax.set_xlabel("step")
        ax.set_ylabel("lr multiplier")
        ax.set_ylim(bottom=0)
        ax.set_title(f"schedule: {name}")
        fig.tight_layout()
        return _png(fig)
