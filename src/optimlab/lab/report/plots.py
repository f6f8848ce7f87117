"""Matplotlib figures of the report, each returned as PNG bytes (Agg backend).

Every function takes plain data (from ``optimlab.lab.analysis``) and a colour map
``{optimizer: colour}`` so an optimizer has the same colour in every figure.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

DPI = 90
NCOLS = 3
_STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
          "grid.alpha": 0.25, "font.size": 9, "axes.titlesize": 10,
          "axes.titleweight": "bold", "legend.frameon": False}


def palette(optimizers) -> dict:
    """{optimizer: hex colour}: tab10 in sorted-name order, tab20 beyond ten."""
    names = sorted(optimizers)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {o: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, o in enumerate(names)}


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


def _yscale(ax, lo, hi):
    """Log y when positive and spanning > 1 decade; symlog when negative values span
    > 3 decades (unbounded problems); else linear."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return
    if lo > 0 and hi / lo > 10:
        ax.set_yscale("log")
        # Losses from ~1e-289 (a quadratic solved exactly) to ~1e266 (a run blowing up but
        # still finite): matplotlib's log ticks over 500 decades leave float range (an
        # OverflowError). Keep the low end, where the converged runs are, and at most 150
        # decades above it; larger losses are drawn off the top, as blowing up.
        bottom = max(lo / 10, 1e-300)
        ax.set_ylim(bottom, min(hi * 10, bottom * 1e150))
    elif lo < 0 and max(abs(lo), abs(hi)) > 1e3:
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
            ax.grid(False)
        extra = [Line2D([], [], marker="s", color="black", ls="", label="start"),
                 Line2D([], [], marker="*", color="gold", mec="black", ms=11, ls="",
                        label="minimum")]
        _legend(fig, colors, names, extra)
        fig.tight_layout()
        return _png(fig)


def loss_curves(curves, optima, colors, problems, ylabel="train loss") -> bytes | None:
    """Mean over seeds with a band per optimizer (the context's: a 95% t-interval of
    the mean), one panel per problem.

    curves: {(problem, optimizer): {"step","mean","lo","hi","n"}}; where the problem
    optimum is known the gap ``loss - optimum`` is drawn instead.
    """
    problems = [p for p in problems if any(k[0] == p for k in curves)]
    if not problems:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(problems))
        names = sorted({k[1] for k in curves})
        for ax, p in zip(axes, problems):
            opt = optima.get(p)
            lows, highs = [], []
            for o in names:
                c = curves.get((p, o))
                if c is None:
                    continue
                shift = opt if opt is not None else 0.0
                m, lo, hi = c["mean"] - shift, c["lo"] - shift, c["hi"] - shift
                ax.plot(c["step"], m, color=colors[o], lw=1.6)
                if c["n"] > 1:
                    ax.fill_between(c["step"], lo, hi, color=colors[o], alpha=0.18, lw=0)
                # Scale from the means: a t-band's lower edge can cross 0 for a
                # positive loss, which would rule out the log scale the curve needs.
                lows.append(np.nanmin(m))
                highs.append(np.nanmax(m))
            if lows:
                _yscale(ax, min(lows), max(highs))
            ax.set_title(p)
            ax.set_xlabel("step")
            ax.set_ylabel(f"{ylabel} − optimum" if opt is not None else ylabel)
        _legend(fig, colors, names)
        fig.tight_layout()
        return _png(fig)


def sensitivity(sweeps, selections, colors, problems) -> bytes | None:
    """Final val loss vs lr per optimizer; x = failed run, ring = selected lr."""
    problems = [p for p in problems if any(k[0] == p for k in sweeps)]
    if not problems:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(problems))
        names = sorted({k[1] for k in sweeps})
        for ax, p in zip(axes, problems):
            fin_all = [s for (pp, _), c in sweeps.items() if pp == p
                       for _, s, _ in c if math.isfinite(s)]
            top = max(fin_all) if fin_all else 1.0
            bottom = min(fin_all) if fin_all else 0.0
            use_log = bool(fin_all) and bottom > 0 and top / bottom > 10
            # Failed runs are pinned just above the highest finite loss.
            y_fail = top * 1.5 if use_log else top + 0.08 * (top - bottom or 1.0)
            if use_log and top > 0:
                y_fail = top * 3.0
            for o in names:
                c = sweeps.get((p, o))
                if not c:
                    continue
                lr = np.array([t[0] for t in c])
                s = np.array([t[1] for t in c])
                ok = np.isfinite(s)
                ax.plot(lr[ok], s[ok], "-o", color=colors[o], ms=3.5, lw=1.5)
                ax.plot(lr[~ok], np.full((~ok).sum(), y_fail), "x", color=colors[o],
                        ms=7, mew=2)
                sel = selections.get((p, o))
                # The ring sits on the seed-0 curve (the selection itself is a seed mean).
                y_sel = dict((t[0], t[1]) for t in c).get(sel.lr) if sel is not None else None
                if y_sel is not None and math.isfinite(sel.score) and math.isfinite(y_sel):
                    ax.plot(sel.lr, y_sel, "o", ms=10, mfc="none", mec=colors[o], mew=1.8)
            ax.set_xscale("log")
            if fin_all:
                _yscale(ax, bottom, top)
            ax.set_title(p)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("final val loss")
        extra = [Line2D([], [], marker="x", color="grey", ls="", mew=2, label="diverged"),
                 Line2D([], [], marker="o", mfc="none", mec="grey", ls="", ms=9,
                        label="selected")]
        _legend(fig, colors, names, extra)
        fig.tight_layout()
        return _png(fig)


def tuning_cost(curves, colors, problems) -> bytes | None:
    """Expected best val loss vs configurations tried ({(problem, optimizer): [(n, y)]},
    Dodge et al. 2019), one panel per problem, one line per optimizer."""
    problems = [p for p in problems if any(k[0] == p for k in curves)]
    if not problems:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(problems))
        names = sorted({k[1] for k in curves})
        for ax, p in zip(axes, problems):
            ys = []
            for o in names:
                c = curves.get((p, o))
                if c:
                    ax.plot([n for n, _ in c], [y for _, y in c], "-", color=colors[o],
                            lw=1.5, marker=".", ms=3)
                    ys += [y for _, y in c if math.isfinite(y)]
            if ys:
                _yscale(ax, min(ys), max(ys))
            ax.set_title(p)
            ax.set_xlabel("lrs tried (n)")
            ax.set_ylabel("expected best val loss")
        _legend(fig, colors, names)
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


def heatmap(table, rows, cols, title, fmt="{:.1f}", cmap="RdYlGn_r", log=False,
            boxed=None) -> bytes:
    """Annotated rows x cols heatmap of {col: {row: value}} (None/missing = blank).

    boxed: optional {col: [rows]} whose cells get a heavy outline (a statistically
    tied group); the outline is drawn per cell so a non-contiguous group still shows.
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
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=vmin,
                       vmax=vmax + 1e-9, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = data[i, j]
                txt = "—" if np.isnan(v) else ("inf" if np.isinf(v) else fmt.format(v))
                rgb = im.cmap(im.norm(shown[i, j]))[:3] if np.isfinite(shown[i, j]) \
                    else (1, 1, 1)
                # Rec. 709 luma: white text on dark cells, dark text on light ones.
                dark = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] < 0.5
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
        fig.tight_layout()
        return _png(fig)


def bias_correction(curves) -> bytes | None:
    """Adam Fig. 4 analogue: val loss vs lr per (beta2, bias_correction), per problem."""
    if not curves:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(curves), w=4.6, h=3.4)
        b2s = sorted({k[0] for c in curves.values() for k in c})
        cmap = plt.get_cmap("viridis")
        col = {b: cmap(i / max(1, len(b2s) - 1) * 0.85) for i, b in enumerate(b2s)}
        for ax, (p, c) in zip(axes, curves.items()):
            for (b2, bc), pts in c.items():
                lr = np.array([t[0] for t in pts])
                s = np.array([t[1] for t in pts])
                ok = np.isfinite(s)
                ax.plot(lr[ok], s[ok], "-o" if bc else "--s", color=col[b2], ms=3.5,
                        lw=1.6, mfc=col[b2] if bc else "white")
                fin = [v for _, v in (t for q in c.values() for t in q) if np.isfinite(v)]
                if (~ok).any() and fin:
                    ax.plot(lr[~ok], np.full((~ok).sum(), max(fin) * 1.05), "x",
                            color=col[b2], ms=7, mew=2)
            ax.set_xscale("log")
            ax.set_title(p)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("final val loss")
        handles = [Line2D([], [], color=col[b], lw=2.5, label=f"β2 = {b:g}") for b in b2s]
        handles += [Line2D([], [], color="grey", ls="-", marker="o", label="bias correction"),
                    Line2D([], [], color="grey", ls="--", marker="s", mfc="white",
                           label="no bias correction"),
                    Line2D([], [], marker="x", color="grey", ls="", mew=2, label="diverged")]
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=min(len(handles), 5), fontsize=9)
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
