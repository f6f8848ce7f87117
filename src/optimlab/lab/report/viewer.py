"""The 2-D trajectory views of the report: small multiples and an interactive viewer.

Both are drawn from the stored trajectories (``RunRecord.trajectory``) of the selected
runs, ``analysis.best_runs(records, select_best(records))``, so they follow whatever
the selection chooses.

The viewer is a ``<canvas>`` over a pre-rendered contour image, with play/pause, a step
slider and one checkbox per optimizer; its JavaScript (``viewer.js`` next to this file) is
inlined and its data embedded as JSON, so the page works offline from ``file://``.
Trajectories are simplified before embedding (Ramer–Douglas–Peucker in plot units, so
zig-zags survive and straight stretches shrink) to at most ``MAX_POINTS`` points each,
every kept point carrying its step number so the slider's time stays exact.
"""

from __future__ import annotations

import base64
import json
import math
from importlib import resources

import numpy as np

from .. import analysis as A

#: Most points per embedded trajectory ("a few hundred").
MAX_POINTS = 400
#: Canvas size (CSS pixels) and the plot-area margins the JavaScript uses too.
WIDTH, HEIGHT = 640, 460
MARGIN = {"l": 56, "r": 14, "t": 12, "b": 36}
#: Points beyond the bounds widened this many times are drawn on that wider box (a
#: diverging run reaches 1e30 before inf, which no canvas draws); the path goes on past
#: them and its losses stay those of the true points.
FAR = 10.0


def markdown(ctx) -> list:
    """summary.md lines pointing to the trajectory figures ([] without 2-D paths)."""
    from .markdown import md

    names = sorted(runs(ctx["records"], ctx["selections"]))
    names = [p for p in names if (ctx["info"].get(p) or {}).get("surface") is not None]
    if not names:
        return []
    return ["", "## Trajectories", "",
            f"2-D problems {', '.join(md(p) for p in names)}: small multiples (one panel per "
            "optimizer) and an interactive viewer in the HTML report."]


def _esc(s) -> str:
    import html
    return html.escape(str(s))


def runs(records, selections=None) -> dict:
    """{problem: {optimizer: {"lr", "paths": [per seed, lowest first], "status",
    "seeds"}}} for every selected (problem, optimizer) with a stored trajectory."""
    selections = A.select_best(records) if selections is None else selections
    out: dict = {}
    for (p, o), rs in A.best_runs(records, selections).items():
        with_path = [r for r in sorted(rs, key=lambda r: r.spec.seed) if r.trajectory]
        if not with_path:
            continue
        out.setdefault(p, {})[o] = {
            "lr": selections[(p, o)].lr, "status": with_path[0].status,
            "seed": with_path[0].spec.seed, "steps": with_path[0].spec.steps,
            "paths": [r.trajectory for r in with_path]}
    return out


def panels(ctx) -> list:
    """One dict per 2-D problem with a surface, bounds and at least one path."""
    out = []
    for p, by_opt in sorted(runs(ctx["records"], ctx["selections"]).items()):
        i = ctx["info"].get(p) or {}
        if i.get("surface") is None or not i.get("bounds"):
            continue
        out.append({"name": p, "surface": i["surface"], "bounds": i["bounds"],
                    "minima": i.get("minima") or (), "runs": by_opt,
                    "description": i.get("description") or ""})
    return out


def image_jobs(ctx) -> dict:
    """{"multiples:<problem>": zero-argument function drawing its PNG (or None)}, the
    small multiples of every 2-D problem."""
    from .plots2d import small_multiples

    return {f"multiples:{pnl['name']}": (lambda pnl=pnl: small_multiples(pnl, ctx["colors"]))
            for pnl in panels(ctx)}


def images(ctx) -> dict:
    """{"multiples:<problem>": PNG} small multiples for every 2-D problem."""
    out = {name: job() for name, job in image_jobs(ctx).items()}
    return {name: png for name, png in out.items() if png}


# --------------------------------------------------------------------------- data

def simplify(xy: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the points Ramer–Douglas–Peucker keeps at tolerance ``tol`` (first
    and last always kept): a point goes only if it lies within ``tol`` of the chord
    between the kept points around it."""
    n = len(xy)
    if n <= 2:
        return np.arange(n)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = xy[b] - xy[a]
        pts = xy[a + 1:b] - xy[a]
        length = math.hypot(seg[0], seg[1])
        if length > 0:
            d = np.abs(pts[:, 0] * seg[1] - pts[:, 1] * seg[0]) / length
        else:
            d = np.hypot(pts[:, 0], pts[:, 1])
        k = int(np.argmax(d))
        if d[k] > tol:
            m = a + 1 + k
            keep[m] = True
            stack += [(a, m), (m, b)]
    return np.flatnonzero(keep)


def downsample(path, bounds, max_points: int = MAX_POINTS):
    """(steps, xy) of a trajectory's finite part (it ends at the first non-finite point)
    simplified to at most ``max_points`` points, with every point clipped for display to
    the bounds widened ``FAR`` times. Distances are measured in units of the plot's width
    and height, starting at 1/2000 (well under a pixel) and doubling until the path fits."""
    xy = np.asarray(path if path is not None else [], dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:    # not a 2-D position per step: nothing to draw
        return np.arange(0), np.zeros((0, 2))
    fin = np.isfinite(xy).all(axis=1)
    n = int(np.argmin(fin)) if not fin.all() else len(xy)
    (x0, x1), (y0, y1) = bounds
    span = np.array([x1 - x0, y1 - y0], dtype=float)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    xy = np.clip(xy[:n], centre - FAR * span, centre + FAR * span)
    unit = (xy - np.array([x0, y0])) / span
    tol = 1 / 2000
    idx = simplify(unit, tol)
    while len(idx) > max_points:
        tol *= 2
        idx = simplify(unit, tol)
    return idx, xy[idx]


def _sig(v: float, digits: int = 6):
    return float(f"{v:.{digits}g}") if math.isfinite(v) else None


def data(ctx) -> dict:
    """The viewer's JSON: {"width", "height", "margin", "problems": [{"name", "bounds",
    "minima", "steps", "image", "opts": [{"name", "color", "lr", "status", "seed",
    "i": steps, "x", "y" (clipped, see ``FAR``), "f": loss at each kept step}]}]}."""
    from .plots2d import contour_image

    w, h = WIDTH - MARGIN["l"] - MARGIN["r"], HEIGHT - MARGIN["t"] - MARGIN["b"]
    problems = []
    for pnl in panels(ctx):
        png = contour_image(pnl, w, h)
        opts = []
        for o in sorted(pnl["runs"]):
            r = pnl["runs"][o]
            idx, xy = downsample(r["paths"][0], pnl["bounds"])
            if not len(idx):
                continue
            true_xy = np.asarray(r["paths"][0], dtype=float)[idx]   # xy may be clipped
            with np.errstate(all="ignore"):
                f = np.asarray(pnl["surface"](true_xy[:, 0], true_xy[:, 1]), dtype=float)
            opts.append({"name": o, "color": ctx["colors"].get(o, "#777777"),
                         "lr": r["lr"], "status": r["status"], "seed": r["seed"],
                         "i": [int(i) for i in idx],
                         "x": [_sig(v) for v in xy[:, 0]], "y": [_sig(v) for v in xy[:, 1]],
                         "f": [_sig(v, 4) for v in np.broadcast_to(f, idx.shape)]})
        if not opts:
            continue
        steps = max(max(r["steps"] for r in pnl["runs"].values()),
                    max(op["i"][-1] for op in opts))
        problems.append({
            "name": pnl["name"], "bounds": [list(map(float, b)) for b in pnl["bounds"]],
            "minima": [list(map(float, m)) for m in pnl["minima"]], "steps": int(steps),
            "image": ("data:image/png;base64," + base64.b64encode(png).decode("ascii"))
            if png else None,
            "opts": opts})
    return {"width": WIDTH, "height": HEIGHT, "margin": MARGIN, "problems": problems}


def script_json(obj) -> str:
    """JSON safe inside ``<script type="application/json">``: no raw ``<``, ``>`` or
    ``&`` (so no ``</script>`` or ``<!--`` breakout), ASCII only, no NaN/Infinity."""
    s = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _js() -> str:
    return resources.files(__package__).joinpath("viewer.js").read_text(encoding="utf-8")


CSS = """
.olv-bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:6px 0 10px}
.olv-bar input[type=range]{flex:1 1 260px}
.olv-bar button{font:inherit;padding:3px 12px;border:1px solid #cbd5e1;border-radius:6px;
 background:#fff;cursor:pointer;min-width:86px}
.olv-step{font-variant-numeric:tabular-nums;color:var(--mute);min-width:120px}
.olv-main{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.olv-main canvas{border:1px solid var(--line);border-radius:6px;max-width:100%}
.olv-opts{font-size:13px;min-width:290px}
.olv-opts label{display:flex;gap:6px;align-items:center;padding:2px 0;cursor:pointer}
.olv-opts .v{margin-left:auto;color:var(--mute);font-variant-numeric:tabular-nums;
 padding-left:10px}
.olv-opts .all{margin-bottom:6px}
.olv-opts .all button{font:inherit;font-size:12px;padding:1px 8px;margin-right:4px;
 border:1px solid #cbd5e1;border-radius:5px;background:#fff;cursor:pointer}
"""


def section(ctx, images) -> str:
    """The "Trajectories, one optimizer at a time" section: small multiples per 2-D
    problem and the interactive viewer; '' when no 2-D problem has stored paths."""
    from .html import img

    d = data(ctx)
    if not d["problems"]:
        return ""
    figs = "".join(
        f"<h3>{_esc(p['name'])}</h3>"
        + img(images, f"multiples:{p['name']}", f"{p['name']}: one panel per optimizer")
        for p in d["problems"])
    viewer = (
        f"<style>{CSS}</style><div class='olv' id='olv'>"
        "<div class='olv-bar'><label>problem <select id='olv-problem'></select></label>"
        "<button type='button' id='olv-play' aria-label='play'>▶ play</button>"
        "<input type='range' id='olv-step' min='0' max='0' value='0' step='1' "
        "aria-label='step'><span class='olv-step' id='olv-label'></span></div>"
        "<div class='olv-main'>"
        f"<canvas id='olv-canvas' width='{WIDTH}' height='{HEIGHT}'></canvas>"
        "<div class='olv-opts' id='olv-opts'></div></div></div>"
        "<noscript><p class='cap'>The viewer needs JavaScript; the small multiples above "
        "show the same paths.</p></noscript>"
        f"<script type='application/json' id='olv-data'>{script_json(d)}</script>"
        f"<script>{_js()}</script>")
    cap = ("One panel per optimizer, every panel with the same contours, limits and scale: "
           "the lowest seed's path at the selected lr in bold, other seeds thin; "
           "■ start, ★ minimum. Below, replay them: ▶ plays, the slider picks the step, "
           "the checkboxes choose the optimizers (values: the loss at the shown step, or "
           "at the last stored step before it, named; dashed: the rest of the path; a "
           "path far outside the plot is drawn on a box 10× its size). "
           "On the ravine look for SGD's zig-zag across the steep axis and "
           "momentum's overshoot along the shallow one.")
    return f"<section id='multiples'><h2>Trajectories, one optimizer at a time</h2>" \
           f"<p class='cap'>{cap}</p>{figs}<h3>Trajectory viewer</h3>{viewer}</section>"
