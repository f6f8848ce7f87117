"""The report's figures show what the data says: every optimizer on screen, runs that
reached the optimum on its floor line, every failed run as its own marker, one distinct
hue per optimizer, and the rank heatmap coloured by tie status."""

import colorsys
import itertools
import math

import matplotlib.colors as mcolors
import numpy as np
import pytest

from optimlab.lab.report import plots, plots2d, plots_lr
from optimlab.lab.stats import optimum_floor

OPTS = ["adadelta", "adagrad", "adam", "adamax", "adamw", "amsgrad", "momentum", "nadam",
        "nesterov", "rmsprop", "sgd"]
COLORS = plots.palette(OPTS)
# ill-conditioned in the default comparison: starts at 10, adagrad ends at 8.5e-289, the
# others between 1e-107 and 10.
ILL_FINAL = dict(zip(OPTS, [0.03, 8.5e-289, 2e-9, 9e-10, 4e-15, 3e-9, 2e-9, 4e-18, 1e-10,
                            1.6e-107, 1.5e-3]))
ILL_FLOOR = optimum_floor(0.0, 10.0)


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions would have saved."""
    figs = []
    for module in (plots, plots_lr, plots2d):
        monkeypatch.setattr(module, "_png", lambda fig: figs.append(fig) or b"png")
    monkeypatch.setattr(plots2d, "_quantized", lambda png: png)
    yield figs
    import matplotlib.pyplot as plt
    for fig in figs:
        plt.close(fig)


def _visible(ax, line) -> bool:
    lo, hi = ax.get_ylim()
    y = np.asarray(line.get_ydata(), dtype=float)
    return bool(len(y)) and bool(((y >= lo) & (y <= hi)).any())


def _drawn_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_ydata()) > 1]


def _curve(end, start=10.0, n=201):
    mean = np.geomspace(start, end, n)
    return {"step": np.arange(n, dtype=float), "mean": mean, "lo": mean, "hi": mean, "n": 1}


@pytest.mark.parametrize("floors", [{"ill-conditioned": ILL_FLOOR}, None])
def test_loss_curves_show_every_optimizer_down_to_the_optimum_floor(figures, floors):
    curves = {("ill-conditioned", o): _curve(v) for o, v in ILL_FINAL.items()}
    assert plots.loss_curves(curves, {"ill-conditioned": 0.0}, COLORS, ["ill-conditioned"],
                             floors=floors) == b"png"
    ax = figures[0].axes[0]
    lines = _drawn_lines(ax)
    assert len(lines) == len(OPTS) and all(_visible(ax, ln) for ln in lines)
    # Losses that reached the optimum sit on the floor line, not 280 decades below it.
    assert ax.get_ylim()[0] >= ILL_FLOOR / 10
    assert min(np.min(ln.get_ydata()) for ln in lines) == pytest.approx(ILL_FLOOR)
    assert any(ln.get_linestyle() == "--" and ln.get_ydata()[0] == pytest.approx(ILL_FLOOR)
               for ln in ax.get_lines())


def test_a_loss_a_rounding_below_the_optimum_keeps_the_log_scale(figures):
    # five-points: optimum 0.56, adam ends at 0.559999824 (float32 rounding).
    start, opt = 40.0, 0.56
    curves = {("five-points", o): _curve(end, start) for o, end in
              [("adam", 0.559999824), ("sgd", 0.57), ("adadelta", 0.6)]}
    plots.loss_curves(curves, {"five-points": opt}, COLORS, ["five-points"],
                      floors={"five-points": optimum_floor(opt, start)})
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log"
    gap_floor = optimum_floor(opt, start) - opt
    assert all(np.min(ln.get_ydata()) >= gap_floor * (1 - 1e-9) for ln in _drawn_lines(ax))


def test_sensitivity_shows_every_optimizer_and_every_failure(figures):
    lrs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    sweeps = {("ill-conditioned", o): [(lr, v if lr < 10 else math.inf,
                                        "ok" if lr < 10 else "diverged") for lr in lrs]
              for o, v in ILL_FINAL.items()}
    sweeps[("ill-conditioned", "sgd")][2] = (0.1, 5.75e266, "ok")   # blowing up, finite
    plots.sensitivity(sweeps, {}, COLORS, ["ill-conditioned"],
                      floors={"ill-conditioned": ILL_FLOOR})
    ax = figures[0].axes[0]
    lines = _drawn_lines(ax)
    assert len(lines) == len(OPTS) and all(_visible(ax, ln) for ln in lines)
    failed = [ln for ln in ax.get_lines() if ln.get_marker() == "X"]
    assert len(failed) == len(OPTS)
    # Inside the axes (y in axes fractions), and no two on the same spot.
    spots = [tuple(ln.get_transform().transform(ln.get_xydata()[0]).round(1)) for ln in failed]
    assert len(set(spots)) == len(OPTS)
    box = ax.get_window_extent()
    assert all(box.y0 <= y <= box.y1 for _, y in spots)


# Adam's bias-correction ablation on digits-vae in the default comparison.
BIAS = {(0.99, False): [(0.01, 24.96), (0.1, 29.2), (1.0, math.inf)],
        (0.99, True): [(0.01, 24.97), (0.1, 27.05), (1.0, math.inf)],
        (0.999, False): [(0.01, 27.0), (0.1, math.inf), (1.0, math.inf)],
        (0.999, True): [(0.01, 24.99), (0.1, 27.07), (1.0, math.inf)],
        (0.9999, False): [(0.01, 29.7), (0.0178, 86.57), (0.1, math.inf), (1.0, math.inf)],
        (0.9999, True): [(0.01, 25.02), (0.1, 27.06), (1.0, math.inf)]}


def test_bias_correction_shows_each_failed_configuration_on_a_readable_scale(figures):
    plots.bias_correction({"digits-vae": BIAS})
    ax = figures[0].axes[0]
    failed = [ln for ln in ax.get_lines() if ln.get_marker() == "X"]
    assert len(failed) == 6 + 2
    spots = [tuple(ln.get_transform().transform(ln.get_xydata()[0]).round(1)) for ln in failed]
    assert len(set(spots)) == len(spots)
    # Filled: with bias correction; hollow: without.
    assert sum(ln.get_markerfacecolor() != "white" for ln in failed) == 3
    # The 86.6 spike does not squash the 25-30 lines: it is drawn on the top edge, labelled.
    assert ax.get_ylim()[1] < 40
    assert any(t.get_text() == "86.6" for t in ax.texts)


def _hsv(c):
    return colorsys.rgb_to_hsv(*mcolors.to_rgb(c))


def test_palette_gives_distinct_hues_readable_on_the_contours():
    for n in (11, 16):
        colors = plots.palette([f"opt{i:02d}" for i in range(n)])
        assert len(set(colors.values())) == n
        hsv = [_hsv(c) for c in colors.values()]
        # No light/dark pair of one hue: coloured entries differ in hue.
        for a, b in itertools.combinations([h for h in hsv if h[1] > 0.2], 2):
            assert min(abs(a[0] - b[0]), 1 - abs(a[0] - b[0])) > 0.02, (a, b)
        assert sum(h[1] <= 0.2 for h in hsv) <= 1   # at most one grey
        # Dark enough to read over the pale blue contours.
        assert all(h[2] <= 0.95 and 0.2126 * r + 0.7152 * g + 0.0722 * bl < 0.6
                   for h, (r, g, bl) in zip(hsv, map(mcolors.to_rgb, colors.values())))


def test_rank_heatmap_is_coloured_by_tie_status(figures):
    # A 10-way tie shares rank 6; a significantly worse optimizer elsewhere has rank 5.
    table = {"big-tie": {o: (11.0 if o == "sgd" else 5.5) for o in OPTS},
             "clear": {o: float(i + 1) for i, o in enumerate(OPTS)}}
    tied = {"big-tie": [o for o in OPTS if o != "sgd"], "clear": ["adadelta", "adagrad"]}
    plots.heatmap(table, OPTS, ["big-tie", "clear"], "rank", fmt="{:g}", boxed=tied)
    ax = figures[0].axes[0]
    rgb = np.asarray(ax.get_images()[0].get_array())[..., :3]
    row = {o: i for i, o in enumerate(OPTS)}
    tied_colour = rgb[row["adam"], 0]
    assert np.allclose(rgb[row["adadelta"], 1], tied_colour)      # rank 1, tied
    assert np.allclose(rgb[row["amsgrad"], 0], tied_colour)       # rank 5.5, tied
    assert not np.allclose(rgb[row["adamw"], 1], tied_colour)     # rank 5, worse
    assert np.allclose(rgb[row["adamw"], 1], rgb[row["sgd"], 0])  # worse is worse
    # The rank stays as the text.
    assert {t.get_text() for t in ax.texts} >= {"5.5", "5", "11", "1"}


def test_rank_heatmap_does_not_call_a_wide_spread_worse(figures):
    """rmsprop is not significantly worse than the best, only outside its (contiguous)
    group: neither the tied colour nor the "worse (significant)" one."""
    table = {"rosen": {"adam": 1.0, "sgd": 2.0, "rmsprop": 3.0}}
    rows = ["adam", "sgd", "rmsprop"]
    plots.heatmap(table, rows, ["rosen"], "rank", fmt="{:g}", boxed={"rosen": ["adam"]},
                  loose={"rosen": ["rmsprop"]})
    fig = figures[-1]
    rgb = np.asarray(fig.axes[0].get_images()[0].get_array())[..., :3]
    assert not np.allclose(rgb[2, 0], rgb[0, 0]) and not np.allclose(rgb[2, 0], rgb[1, 0])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "not shown worse (wide spread / no test)" in labels


def test_two_d_figures_label_their_axes_and_the_seed(figures):
    from optimlab.lab.problems.functions2d import rosenbrock_problem

    prob = rosenbrock_problem()
    path = [[-1.2, 1.0], [0.0, 0.5], [0.9, 0.8]]
    pnl = {"name": "rosenbrock", "surface": prob.surface, "bounds": prob.bounds,
           "minima": [(1.0, 1.0)], "paths": {"nadam": path}}
    plots.contours([pnl], COLORS)
    ax = figures[-1].axes[0]
    assert ax.get_xlabel().startswith("x") and ax.get_ylabel().startswith("y")
    runs = {"nadam": {"lr": 0.3, "status": "ok", "seed": 0, "paths": [path, path]}}
    plots2d.small_multiples({**pnl, "runs": runs}, COLORS)
    fig = figures[-1]
    assert fig.get_supxlabel().startswith("x") and fig.get_supylabel().startswith("y")
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.startswith("seed 0 final loss") for t in notes), notes
