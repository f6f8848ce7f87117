"""Matplotlib figures of 2-D problems: loss contours with the optimizers' paths over them.

``plots.contours`` overlays every optimizer on one panel per problem; here
``small_multiples`` gives one panel per optimizer (same contours, limits and scale) and
``contour_image`` the bare background of the interactive viewer (report/viewer.py).
The contour levels are the same as ``plots.contours``'.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.ticker import MaxNLocator

from .plots_common import _STYLE, Line2D, _png, plt


def _surface(pnl, n=220):
    """(X, Y, Z, levels) of a panel's loss surface on an n x n grid over its bounds;
    levels is None when the surface has no finite value there."""
    (x0, x1), (y0, y1) = pnl["bounds"]
    X, Y = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    with np.errstate(all="ignore"):
        Z = np.asarray(pnl["surface"](X, Y), dtype=float)
    fin = Z[np.isfinite(Z)]
    if not fin.size:
        return X, Y, Z, None
    zmin, span = fin.min(), max(fin.max() - fin.min(), 1e-12)
    # Log-spaced levels above the minimum resolve both the valley floor
    # and the steep walls; 1e-4 of the span is the finest level drawn.
    levels = zmin + np.logspace(np.log10(span * 1e-4), np.log10(span), 22)
    return X, Y, Z, levels


def _draw_surface(ax, X, Y, Z, levels, lw=0.5):
    if levels is None:
        return
    ax.contourf(X, Y, Z, levels=levels, cmap="Blues_r", alpha=0.35, extend="both")
    ax.contour(X, Y, Z, levels=levels, colors="#6b7b8c", linewidths=lw, alpha=0.7)


def _finite_xy(path):
    xy = np.asarray(path if path is not None else [], dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        return np.zeros((0, 2))
    return xy[np.isfinite(xy).all(axis=1)]


def _landmarks(ax, start, minima):
    if start is not None:
        ax.plot(*start, "s", color="black", ms=6, mec="white", zorder=5)
    for m in minima or ():
        ax.plot(m[0], m[1], "*", color="gold", ms=13, mec="black", mew=0.7, zorder=6)


_LANDMARKS = [Line2D([], [], marker="s", color="black", ls="", label="start"),
              Line2D([], [], marker="*", color="gold", mec="black", ms=11, ls="",
                     label="minimum")]


def small_multiples(panel, colors, ncols=4) -> bytes | None:
    """One 2-D problem as small multiples: one panel per optimizer, all with the same
    contours, axis limits and scale, so paths compare at a glance (Tufte's small
    multiples). The lowest seed's path is drawn bold, the other seeds thin.

    panel: {"name", "surface", "bounds", "minima", "runs": {optimizer: {"lr": float,
    "paths": [[[x, y], ...] per seed, lowest seed first], "status": str of the bold
    path ("ok" | "diverged" | "error")}}}.
    """
    runs = {o: r for o, r in panel.get("runs", {}).items() if r.get("paths")}
    if not runs:
        return None
    names = sorted(runs)
    (x0, x1), (y0, y1) = panel["bounds"]
    # The contours are rendered once and shown as an image in every panel: identical
    # by construction, and ~10x faster than contouring each panel.
    bg = contour_image(panel, 440, 380)
    bg = None if bg is None else plt.imread(io.BytesIO(bg), format="png")
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    with plt.rc_context(_STYLE):
        width, height = 2.75 * ncols, 2.45 * nrows + 0.3
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height),
                                 sharex=True, sharey=True, squeeze=False)
        axes = axes.ravel()
        for ax in axes[len(names):]:
            ax.set_visible(False)
        for n, (ax, o) in enumerate(zip(axes, names)):
            r = runs[o]
            if n + ncols >= len(names):      # lowest panel of its column: label x
                ax.xaxis.set_tick_params(labelbottom=True)
            if bg is not None:
                ax.imshow(bg, extent=(x0, x1, y0, y1), aspect="auto", origin="upper",
                          interpolation="antialiased", zorder=0)
            paths = [_finite_xy(p) for p in r["paths"]]
            for xy in paths[1:]:
                if len(xy):
                    ax.plot(xy[:, 0], xy[:, 1], "-", color=colors[o], lw=0.7, alpha=0.35)
            xy = paths[0]
            start = xy[0] if len(xy) else None
            note = ""
            if len(xy):
                ax.plot(xy[:, 0], xy[:, 1], "-", color=colors[o], lw=1.5)
                failed = r.get("status", "ok") != "ok"
                ax.plot(*xy[-1], "X" if failed else "o", color="#b91c1c" if failed
                        else colors[o], ms=6 if failed else 4.5, mec="white", mew=0.6,
                        zorder=7)
                inside = x0 <= xy[-1, 0] <= x1 and y0 <= xy[-1, 1] <= y1
                with np.errstate(all="ignore"):
                    f_end = float(np.asarray(panel["surface"](xy[-1, 0], xy[-1, 1])))
                seed = f"seed {r.get('seed', 0)}"
                if failed:
                    note = f"{seed} {r.get('status')} at step {len(xy) - 1}"
                elif not inside:
                    note = f"{seed} ended outside the plot"
                elif math.isfinite(f_end):
                    note = f"{seed} final loss {f_end:.2g}"
            _landmarks(ax, start, panel["minima"])
            if note:
                ax.text(0.03, 0.04, note, transform=ax.transAxes, fontsize=7.5,
                        color="#1e293b", bbox={"boxstyle": "round,pad=0.2", "fc": "white",
                                               "ec": "none", "alpha": 0.8})
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_title(f"{o}  (lr {r['lr']:.3g})", fontsize=9.5)
            ax.grid(False)
            for side in ax.spines.values():   # the frame carries the optimizer's colour
                side.set_visible(True)
                side.set_color(colors[o])
                side.set_linewidth(2.0)
            ax.tick_params(labelsize=7.5)
        seeds = sorted({r.get("seed", 0) for r in runs.values()})
        bold = f"seed {seeds[0]}" if len(seeds) == 1 else "lowest seed"
        extra = [Line2D([], [], color="grey", lw=1.5, label=bold),
                 Line2D([], [], color="grey", lw=0.7, alpha=0.5, label="other seeds"),
                 Line2D([], [], marker="X", color="#b91c1c", mec="white", ls="",
                        label="failed here")] + _LANDMARKS
        fig.legend(handles=extra, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=len(extra), fontsize=8.5)
        # Fixed spacing instead of tight_layout: shared axes label only the outer panels,
        # and each layout pass re-measures every tick label (seconds for 11 panels).
        # Margins in inches (tick labels, then the axis label), whatever the panel count;
        # the edge ticks are dropped so neighbouring panels' "2" and "−2" do not collide.
        axes[0].xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10], prune="both"))
        fig.subplots_adjust(left=0.62 / width, right=1 - 0.05 / width, bottom=0.55 / height,
                            top=1 - 0.3 / height, wspace=0.08, hspace=0.22)
        fig.supxlabel("x (first parameter)", fontsize=9, y=0.02 / height)
        fig.supylabel("y (second parameter)", fontsize=9, x=0.02 / width)
        return _quantized(_png(fig))


def _quantized(png: bytes) -> bytes:
    """The PNG with an adaptive 256-colour palette (no dithering): ~3x smaller for
    these flat-coloured figures, with no visible change."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    q = im.quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    q.save(buf, format="PNG", optimize=True)
    return buf.getvalue() if len(buf.getvalue()) < len(png) else png


def contour_image(panel, width: int, height: int) -> bytes | None:
    """The filled contours of a 2-D panel alone, exactly ``width`` x ``height`` pixels
    with the plot area filling the image (x left to right, y bottom to top over
    ``panel["bounds"]``): the background the interactive viewer draws paths on."""
    X, Y, Z, levels = _surface(panel, n=200)
    if levels is None:
        return None
    (x0, x1), (y0, y1) = panel["bounds"]
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    _draw_surface(ax, X, Y, Z, levels)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    plt.close(fig)
    return buf.getvalue()
