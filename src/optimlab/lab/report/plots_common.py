"""What every figure of the report shares: the style, one colour per optimizer, the
grid of panels, the legend, the y-axis scale with the optimum floor, and the strip of
failure markers.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.transforms  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

DPI = 90
NCOLS = 3
_STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
          "grid.alpha": 0.25, "font.size": 9, "axes.titlesize": 10,
          "axes.titleweight": "bold", "legend.frameon": False}


#: Distinct hues, all dark enough to read over the pale blue contours (no light/dark
#: pairs of one hue, as tab20 has): the first 12 optimizers in sorted-name order.
HUES = ("#1f77b4", "#e6550d", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        "#17606f", "#a88f00", "#4d4d4d", "#00a6a6", "#7b2d8e")


def palette(optimizers) -> dict:
    """{optimizer: hex colour}: one distinct hue per optimizer in sorted-name order, the
    same in every figure; past ``HUES``, each next hue is the one farthest from all the
    hues taken so far."""
    out: dict = {}
    hsv = [matplotlib.colors.rgb_to_hsv(matplotlib.colors.to_rgb(c)) for c in HUES]
    taken = [h for h, sat, _ in hsv if sat > 0.2]     # greys have no hue to avoid
    grid = np.arange(360) / 360
    for i, o in enumerate(sorted(optimizers)):
        if i < len(HUES):
            out[o] = HUES[i]
            continue
        far = np.min([np.minimum(abs(grid - h), 1 - abs(grid - h)) for h in taken], axis=0)
        hue = float(grid[int(np.argmax(far))])
        taken.append(hue)
        # Value 0.65: as dark as the fixed hues, readable over the contours.
        out[o] = matplotlib.colors.to_hex(matplotlib.colors.hsv_to_rgb((hue, 0.85, 0.65)))
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _grid(n, w=4.0, h=3.0, ncols=NCOLS):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(fig, colors, names, extra=()):
    handles = [Line2D([], [], color=colors[o], lw=2.5, label=o) for o in names] + list(extra)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=min(len(handles), 6), fontsize=9)


def floor_of(floors, problem) -> float | None:
    """The problem's optimum floor (``verdicts.floors``: below it a loss has reached the
    optimum), or None when there is none."""
    v = (floors or {}).get(problem)
    return float(v) if v is not None and math.isfinite(v) else None


def at_floor(values, floor):
    """``values`` with every one below ``floor`` raised to it (None: unchanged)."""
    values = np.asarray(values, dtype=float)
    return values if floor is None else np.where(values < floor, floor, values)


def floor_line(ax, floor):
    """The dashed line at the optimum floor, where losses that reached the optimum sit."""
    if floor is not None:
        ax.axhline(floor, color="#475569", ls=(0, (4, 3)), lw=1.0, zorder=1)


FLOOR_HANDLE = Line2D([], [], color="#475569", ls=(0, (4, 3)), lw=1.0,
                      label="reached the optimum (at or below)")


def scale_with_floor(ax, values, floor) -> bool:
    """:func:`_yscale` over the finite ``values`` drawn in ``ax``, and the optimum floor's
    line where they reach it; whether the line was drawn (the legend then names it)."""
    if not values:
        return False
    _yscale(ax, min(values), max(values), floor)
    if floor is not None and min(values) <= floor:
        floor_line(ax, floor)
        return True
    return False


def _yscale(ax, lo, hi, floor=None):
    """Log y when positive and spanning > 1 decade; symlog when negative values span
    > 3 decades (unbounded problems); else linear. ``floor``: the optimum floor, the
    axis' lower end when some value (already raised to it) reached it."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return
    if floor is not None and lo > floor:
        floor = None
    if lo > 0 and hi / lo > 10:
        ax.set_yscale("log")
        # Losses from ~1e-289 (a quadratic solved exactly) to ~1e266 (a run blowing up but
        # still finite): matplotlib's log ticks over 500 decades leave float range (an
        # OverflowError). Keep the low end (the optimum floor where there is one) and at
        # most 150 decades above it; larger losses are drawn off the top, as blowing up.
        bottom = max(lo / 10 if floor is None else floor / 3, 1e-300)
        ax.set_ylim(bottom, min(hi * 10, bottom * 1e150))
    elif lo < 0 and max(abs(lo), abs(hi)) > 1e3:
        _symlog(ax, lo, hi)
    elif floor is not None:
        pad = 0.05 * max(hi - floor, abs(floor) * 1e-6, 1e-12)
        ax.set_ylim(floor - pad, hi + pad)


def _symlog(ax, lo, hi):
    # Linear within +-1, where O(1) losses live; logarithmic beyond.
    ax.set_yscale("symlog", linthresh=1.0)
    ticks = [0.0]
    for v, sign in ((lo, -1.0), (hi, 1.0)):
        if sign * v > 10:
            top = math.ceil(math.log10(sign * v))
            # ~4 labelled decades per side, none next to 0 where labels would collide.
            first = max(1, round(top / 4))
            ticks += [sign * 10.0 ** k for k in sorted({round(x) for x in
                                                        np.linspace(first, top, 4)})]
    ax.set_yticks(sorted(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: "0" if v == 0 else
        f"${'-' if v < 0 else ''}10^{{{round(math.log10(abs(v)))}}}$"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    pad = 0.05 * (math.log10(abs(lo)) + 1)
    ax.set_ylim(-(10 ** (math.log10(abs(lo)) + pad)), max(hi, 1.0) * 10 ** pad)


def failure_strip(ax, failures, size=7):
    """Draw ``failures`` ([(x, colour, filled)], one per failed run) as x markers in a
    strip above the data: the y-axis gains 14% headroom (in its own scale) and markers
    at the same x sit side by side, up to 4 a row, so none hides another."""
    if not failures:
        return
    lo, hi = ax.get_ylim()
    scale = ax.yaxis.get_transform()
    a, b = scale.transform([lo, hi])
    ax.set_ylim(lo, scale.inverted().transform([b + 0.14 * (b - a)])[0])
    # Failed lrs may lie beyond every finite point: widen x to show them.
    ax.update_datalim([(x, lo) for x, _, _ in failures], updatey=False)
    # 8% margins: room for a row of 4 markers centred on an lr at the edge.
    ax.set_xmargin(0.08)
    ax.autoscale_view(scaley=False)
    groups: dict = {}
    for x, colour, filled in failures:
        groups.setdefault(x, []).append((colour, filled))
    base = ax.get_xaxis_transform()          # x in data units, y in axes fractions
    gap = size * 0.8                         # points between neighbouring markers
    for x, ms in groups.items():
        for k, (colour, filled) in enumerate(ms):
            row, col = divmod(k, 4)
            n_row = min(4, len(ms) - 4 * row)
            shift = matplotlib.transforms.ScaledTranslation(
                (col - (n_row - 1) / 2) * gap / 72, -row * gap / 72, ax.figure.dpi_scale_trans)
            ax.plot([x], [0.955], "X", transform=base + shift, ms=size, mew=1.2,
                    color=colour, mfc=colour if filled else "white", mec=colour,
                    clip_on=False, zorder=6)
