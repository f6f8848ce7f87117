"""Figures of final validation loss against learning rate: the sensitivity sweep of every
optimizer and the bias-correction ablation (Adam, Kingma & Ba 2015, Fig. 4). Failed runs
sit in a strip above the data (:func:`.plots_common.failure_strip`), one marker each.
"""

from __future__ import annotations

import math

import numpy as np

from .plots_common import (_STYLE, FLOOR_HANDLE, Line2D, _grid, _legend, _png,
                           at_floor, failure_strip, floor_of, plt, scale_with_floor)

_DIVERGED = Line2D([], [], marker="X", color="grey", ls="", ms=7, label="diverged")


def sensitivity(sweeps, selections, colors, problems, floors=None) -> bytes | None:
    """Final val loss vs lr per optimizer; X = failed run, ring = selected lr; losses
    below the optimum floor (floors: {problem: ``verdicts.floors``}) sit on its line."""
    problems = [p for p in problems if any(k[0] == p for k in sweeps)]
    if not problems:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(problems))
        names = sorted({k[1] for k in sweeps})
        any_floor = False
        for ax, p in zip(axes, problems):
            floor = floor_of(floors, p)
            fin_all, failures = [], []
            for o in names:
                c = sweeps.get((p, o))
                if not c:
                    continue
                lr = np.array([t[0] for t in c])
                s = at_floor([t[1] for t in c], floor)
                ok = np.isfinite(s)
                fin_all += s[ok].tolist()
                ax.plot(lr[ok], s[ok], "-o", color=colors[o], ms=3.5, lw=1.5)
                failures += [(x, colors[o], True) for x in lr[~ok]]
                sel = selections.get((p, o))
                # The ring sits on the seed-0 curve (the selection itself is a seed mean).
                y_sel = dict(zip(lr.tolist(), s.tolist())).get(sel.lr) if sel is not None \
                    else None
                if y_sel is not None and math.isfinite(sel.score) and math.isfinite(y_sel):
                    ax.plot(sel.lr, y_sel, "o", ms=10, mfc="none", mec=colors[o], mew=1.8)
            ax.set_xscale("log")
            any_floor |= scale_with_floor(ax, fin_all, floor)
            failure_strip(ax, failures)
            ax.set_title(p)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("final val loss (seed 0)")
        extra = [_DIVERGED, Line2D([], [], marker="o", mfc="none", mec="grey", ls="", ms=9,
                                   label="selected")]
        _legend(fig, colors, names, extra + ([FLOOR_HANDLE] if any_floor else []))
        fig.tight_layout()
        return _png(fig)


def _readable_top(values) -> float:
    """The top of a linear axis that keeps the bulk of ``values`` readable: the largest
    value up to Tukey's far-out fence (q3 + 3 IQR); values beyond are drawn at the top
    edge with their value written next to them."""
    v = np.sort(np.asarray(values, dtype=float))
    q1, q3 = np.percentile(v, [25, 75])
    fence = q3 + 3 * max(q3 - q1, 1e-12 * max(abs(q3), 1.0))
    inside = v[v <= fence]
    return float(inside.max()) if inside.size else float(v.max())


def bias_correction(curves) -> bytes | None:
    """Adam Fig. 4 analogue: val loss vs lr per (beta2, bias_correction), per problem.
    A linear axis over the bulk of the losses (a spike past it is drawn on its top edge,
    labelled); every failed configuration gets its own marker (filled: with correction)."""
    if not curves:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(curves), w=4.6, h=3.4)
        b2s = sorted({k[0] for c in curves.values() for k in c})
        cmap = plt.get_cmap("viridis")
        col = {b: cmap(i / max(1, len(b2s) - 1) * 0.85) for i, b in enumerate(b2s)}
        for ax, (p, c) in zip(axes, curves.items()):
            fin = [v for q in c.values() for _, v in q if np.isfinite(v)]
            top = _readable_top(fin) if fin else None
            failures = []
            for (b2, bc), pts in sorted(c.items(), key=lambda kv: (not kv[0][1], kv[0][0])):
                lr = np.array([t[0] for t in pts])
                s = np.array([t[1] for t in pts])
                ok = np.isfinite(s)
                shown = np.minimum(s, top) if top is not None else s
                ax.plot(lr[ok], shown[ok], "-o" if bc else "--s", color=col[b2], ms=3.5,
                        lw=1.6, mfc=col[b2] if bc else "white")
                for x, v in zip(lr[ok], s[ok]):
                    if top is not None and v > top:
                        ax.annotate(f"{v:.3g}", (x, top), xytext=(4, -10),
                                    textcoords="offset points", fontsize=7.5,
                                    color=col[b2])
                failures += [(x, col[b2], bc) for x in lr[~ok]]
            if fin:
                lo = min(fin)
                pad = 0.05 * max(top - lo, abs(lo) * 1e-3, 1e-12)
                ax.set_ylim(lo - pad, top + pad)
            ax.set_xscale("log")
            failure_strip(ax, failures)
            ax.set_title(p)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("final val loss")
        handles = [Line2D([], [], color=col[b], lw=2.5, label=f"β2 = {b:g}") for b in b2s]
        handles += [Line2D([], [], color="grey", ls="-", marker="o", label="bias correction"),
                    Line2D([], [], color="grey", ls="--", marker="s", mfc="white",
                           label="no bias correction"),
                    Line2D([], [], marker="X", color="grey", ls="", ms=7,
                           label="diverged (filled: with correction)")]
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=min(len(handles), 3), fontsize=9)
        fig.tight_layout()
        return _png(fig)
