"""The 2-D trajectory views: small multiples, the embedded viewer data, and the viewer
itself driven in headless Chromium (over the DevTools protocol on a pipe)."""

import io
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from optimlab.lab.problems.functions2d import ill_conditioned_problem, rosenbrock_problem
from optimlab.lab.report import build_report, context, plots2d, render, viewer
from optimlab.lab.spec import RunRecord, RunSpec
from optimlab.lab.store import Store

# An optimizer name that would break out of a <script> element if embedded raw.
EVIL = '</script><script>alert("pwned")</script><!--'
OPTS = {"sgd": 0.018, "momentum": 0.01, "adam": 0.1, EVIL: 0.005, "blowup": 1.0}
STEPS = {"rosenbrock": 300, "ill-conditioned": 200}
SEEDS = 3


def path(problem, opt, lr, seed, steps):
    """A fabricated trajectory: gradient descent (with heavy-ball momentum for
    "momentum", normalised steps for "adam") from the problem's start, jittered per
    seed; "blowup" diverges after 37 steps (returns the finite part only)."""
    p = rosenbrock_problem() if problem == "rosenbrock" else ill_conditioned_problem()
    xy = p.model(seed).xy.detach().numpy().copy()
    grad = ((lambda v: np.array([-2 * (1 - v[0]) - 400 * v[0] * (v[1] - v[0] ** 2),
                                 200 * (v[1] - v[0] ** 2)]))
            if problem == "rosenbrock" else (lambda v: np.array([v[0], 100 * v[1]])))
    if problem == "rosenbrock" and opt != "adam":
        lr = lr / 100
    vel, out = np.zeros(2), [xy.tolist()]
    for t in range(steps):
        g = grad(xy)
        if opt == "blowup" and t == 37:
            break
        if opt == "blowup":
            xy = xy * 1.6 + 0.01
        elif opt == "momentum":
            vel = 0.9 * vel + g
            xy = xy - lr * vel
        elif opt == "adam":
            xy = xy - lr * 0.2 * g / (np.abs(g) + 1e-8)
        else:
            xy = xy - lr * g
        out.append(xy.tolist())
    return out


def records():
    out = []
    for problem, steps in STEPS.items():
        for opt, lr in OPTS.items():
            for seed in range(SEEDS):
                traj = path(problem, opt, lr, seed, steps)
                ok = opt != "blowup"
                f = 0.5 * (traj[-1][0] ** 2 + 100 * traj[-1][1] ** 2)
                val = (f + 1e-3 * seed) if ok else math.inf
                final = {"train_loss": val, "val_loss": val, "test_loss": val,
                         "val_metric": None, "test_metric": None,
                         "gap": val if ok else None, "steps_to_target": None,
                         "diverged_at": None if ok else 37, "error": None}
                n = len(traj)
                curves = {"step": list(range(0, n, 10)),
                          "train_loss": [1.0 / (1 + i) for i in range(0, n, 10)],
                          "val_loss": [1.0 / (1 + i) for i in range(0, n, 10)],
                          "val_metric": [None] * len(range(0, n, 10)),
                          "lr": [lr] * len(range(0, n, 10))}
                spec = RunSpec(problem, opt, lr, seed, steps,
                               phase="sweep" if seed == 0 else "seeds")
                out.append(RunRecord(spec, "ok" if ok else "diverged", final, curves, 1.0,
                                     1e-4, traj, {"python": "3"}))
    return out


PROBLEMS = {"rosenbrock": rosenbrock_problem(), "ill-conditioned": ill_conditioned_problem()}


@pytest.fixture(scope="module")
def ctx():
    return context.build(records(), {"steps": 300}, PROBLEMS)


# --------------------------------------------------------------------- small multiples

def test_small_multiples_one_panel_per_optimizer(ctx, monkeypatch):
    figs = []
    monkeypatch.setattr(plots2d, "_png", lambda fig: figs.append(fig) or b"png")
    monkeypatch.setattr(plots2d, "_quantized", lambda png: png)
    panels = {p["name"]: p for p in viewer.panels(ctx)}
    assert set(panels) == set(STEPS)
    for name, pnl in panels.items():
        figs.clear()
        assert plots2d.small_multiples(pnl, ctx["colors"]) == b"png"
        fig, = figs
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == len(OPTS)
        titles = [ax.get_title() for ax in axes]
        for opt, lr in OPTS.items():
            assert sum(t.startswith(opt + "  (lr") for t in titles) == 1, (opt, titles)
        # Same limits and the same contour image behind every panel.
        (x0, x1), (y0, y1) = pnl["bounds"]
        backgrounds = []
        for ax in axes:
            assert ax.get_xlim() == pytest.approx((x0, x1))
            assert ax.get_ylim() == pytest.approx((y0, y1))
            ims = ax.get_images()
            assert len(ims) == 1
            backgrounds.append(np.asarray(ims[0].get_array()))
        assert all(np.array_equal(backgrounds[0], b) for b in backgrounds[1:])
        # Each panel draws its own optimizer's seed-0 path (bold) and no other's.
        for ax in axes:
            opt = ax.get_title().split("  (lr")[0]
            want = np.asarray(path(name, opt, OPTS[opt], 0, STEPS[name]))
            lines = [ln for ln in ax.get_lines() if ln.get_marker() in ("None", "", None)]
            bold = [ln for ln in lines if ln.get_linewidth() == 1.5]
            assert len(bold) == 1
            np.testing.assert_allclose(bold[0].get_xydata(), want)
            thin = [ln for ln in lines if ln.get_linewidth() == 0.7]
            assert len(thin) == SEEDS - 1
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_small_multiples_in_render(ctx):
    imgs = viewer.images(ctx)
    assert set(imgs) == {"multiples:rosenbrock", "multiples:ill-conditioned"}
    import matplotlib.image as mpimg
    for png in imgs.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        px = mpimg.imread(io.BytesIO(png), format="png")
        assert px.shape[0] > 300 and px.shape[1] > 600


def test_small_multiples_follow_the_selection(ctx):
    # Only best_runs' records are drawn: a run at another lr never shows up.
    extra = RunRecord(RunSpec("rosenbrock", "sgd", 1e-4, 0, 300), "ok",
                      {"val_loss": 50.0, "train_loss": 50.0}, {}, 1.0, 1e-4,
                      [[0.0, 0.0], [9.0, 9.0]])
    runs = viewer.runs(records() + [extra])
    assert runs["rosenbrock"]["sgd"]["lr"] == OPTS["sgd"]
    assert all([9.0, 9.0] not in p for p in runs["rosenbrock"]["sgd"]["paths"])
    assert len(runs["rosenbrock"]["sgd"]["paths"]) == SEEDS


# ------------------------------------------------------------------- embedded data

def test_simplify_keeps_zigzags_and_drops_straight_stretches():
    # 300 steps alternating up and down: every point is a corner and must survive.
    zig = np.array([[t / 300, 0.3 * (-1) ** t] for t in range(301)])
    assert len(viewer.simplify(zig, 1e-3)) == 301
    # A straight line collapses to its two ends.
    line = np.column_stack([np.linspace(0, 1, 500), np.linspace(0, 2, 500)])
    assert viewer.simplify(line, 1e-6).tolist() == [0, 499]


def test_downsample_caps_points_and_stays_close():
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 0.01, (5000, 2)), axis=0)
    bounds = ((-2.0, 2.0), (-2.0, 2.0))
    idx, xy = viewer.downsample(walk, bounds, max_points=300)
    assert 50 < len(idx) <= 300 and idx[0] == 0 and idx[-1] == 4999
    assert (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(xy, walk[idx])
    # Every dropped point is near the polyline through the kept ones (interpolated by step).
    rec = np.column_stack([np.interp(np.arange(5000), idx, xy[:, k]) for k in range(2)])
    assert np.abs(rec - walk).max() < 0.5
    # A trajectory that is not one (x, y) per step draws nothing.
    assert len(viewer.downsample([[0, 1, 2], [3, 4, 5]], bounds)[0]) == 0
    # Non-finite points end the path; a path flying off is drawn on the 10x box.
    bad = np.array([[0, 0], [0.1, 0.1], [np.nan, 1.0], [0.2, 0.2]])
    assert viewer.downsample(bad, bounds)[0].tolist() == [0, 1]
    far = np.array([[0.0, 0.0]] + [[3.0 ** k, 0.0] for k in range(1, 40)])
    idx, xy = viewer.downsample(far, bounds)
    assert idx[-1] == 39 and xy[-1, 0] == viewer.FAR * 4 and np.abs(xy).max() <= 40


def jump_and_converge(steps=200):
    """rmsprop at lr 10 on ill-conditioned (the default comparison): one step far out,
    past 10x the bounds, then straight back to the optimum, ending near 1e-54."""
    out = [[1.0, 1.0], [98.0, -99.6]]
    for t in range(2, steps + 1):
        out.append([-98.0 * 0.55 ** t, 99.6 * 0.5 ** (1.7 * t)])
    return out


def test_a_path_that_leaves_the_plot_and_comes_back_is_kept_to_its_end():
    traj = jump_and_converge()
    final = {"train_loss": 1.6e-107, "val_loss": 1.6e-107, "test_loss": 1.6e-107,
             "gap": 1.6e-107}
    rec = RunRecord(RunSpec("ill-conditioned", "rmsprop", 10.0, 0, 200), "ok", final, {},
                    1.0, 1e-4, traj, {})
    ctx = context.build([rec], {"steps": 200}, PROBLEMS)
    opt, = viewer.data(ctx)["problems"][0]["opts"]
    assert opt["i"][-1] == 200 and 1 in opt["i"]
    # Drawn on the 10x box around the bounds ((-2.5, 2.5), (-1, 1)), every loss the
    # true point's.
    assert max(abs(v) for v in opt["x"]) <= viewer.FAR * 5
    assert max(abs(v) for v in opt["y"]) <= viewer.FAR * 2
    surface = PROBLEMS["ill-conditioned"].surface
    for i, f in zip(opt["i"], opt["f"]):
        assert f == pytest.approx(float(surface(*np.array(traj[i]))), rel=1e-3), i
    assert opt["f"][-1] < 1e-100 and opt["f"][1] > 1e5


def test_script_json_cannot_break_out():
    obj = {"name": EVIL, "x": "a & b > c", "u": "\u2028 é"}
    s = viewer.script_json(obj)
    assert "<" not in s and ">" not in s and "&" not in s and s.isascii()
    assert json.loads(s) == obj
    with pytest.raises(ValueError):
        viewer.script_json({"x": math.nan})


def test_viewer_data_in_page(ctx):
    page, _, imgs = render(records(), {"steps": 300}, PROBLEMS)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.S)
    assert [a.strip() for a, _ in scripts] == ["type='application/json' id='olv-data'", ""]
    assert "src=" not in "".join(a for a, _ in scripts)
    assert EVIL not in page
    data = json.loads(scripts[0][1])
    assert [p["name"] for p in data["problems"]] == sorted(STEPS)
    for p in data["problems"]:
        assert p["image"].startswith("data:image/png;base64,")
        assert p["steps"] == STEPS[p["name"]]
        assert sorted(o["name"] for o in p["opts"]) == sorted(OPTS)
        for o in p["opts"]:
            assert len(o["i"]) == len(o["x"]) == len(o["y"]) == len(o["f"])
            assert 2 <= len(o["i"]) <= viewer.MAX_POINTS
            assert o["i"][0] == 0
            full = path(p["name"], o["name"], OPTS[o["name"]], 0, STEPS[p["name"]])
            # Every finite point is kept (a diverging one too, drawn on the 10x box).
            assert o["i"][-1] == len(full) - 1
            assert o["status"] == ("diverged" if o["name"] == "blowup" else "ok")
    assert "multiples" in page and "id='olv-canvas'" in page


def test_summary_points_to_the_trajectories(ctx):
    from optimlab.lab.report import markdown
    summary = markdown.summary(ctx)
    assert "## Trajectories" in summary and "ill-conditioned, rosenbrock" in summary
    assert "## Trajectories" not in markdown.summary(context.build([], {}, PROBLEMS))


# ------------------------------------------------------------------------ chromium

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is required in CI but was not found")
    pytest.skip("chromium not installed (install Debian `chromium` to run this test)")


def _pixels(png: bytes) -> np.ndarray:
    import matplotlib.image as mpimg
    return mpimg.imread(io.BytesIO(png), format="png")[..., :3]


def _changed(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int((np.abs(a - b).max(axis=-1) > 0.05).sum())


@pytest.mark.slow
def test_viewer_in_headless_chromium(tmp_path):
    from cdp_pipe import Browser

    exe = _chromium()
    out = tmp_path / "lab"
    out.mkdir()
    with Store(out / "results.sqlite") as store:
        for r in records():
            store.put(r)
        store.set_meta("steps", 300)
    report = build_report(out, problems=PROBLEMS)
    url = report.resolve().as_uri()
    js_value = "+document.getElementById('olv-step').value"
    canvas = "document.getElementById('olv-canvas').toDataURL()"
    # The timeouts only guard against a hung browser; nothing asserts on time.
    with Browser(exe, tmp_path / "profile", timeout=120) as b:
        page = b.new_page(1280, 1000)
        page.navigate(url, timeout=120)
        page.wait_for("document.getElementById('olv').dataset.ready === '1'", timeout=60)
        # Starts at the last step of the first problem (alphabetical: ill-conditioned).
        assert page.evaluate(js_value) == STEPS["ill-conditioned"]
        assert page.evaluate("document.getElementById('olv-label').textContent") == \
            "step 200 / 200"
        labels = page.evaluate("[...document.querySelectorAll('#olv-opts label')]"
                               ".map(l => l.children[2].textContent)")
        assert sorted(labels) == sorted(f"{o} (lr {lr:g})" for o, lr in OPTS.items())
        shot_end, pix_end = page.screenshot("#olv-canvas"), page.evaluate(canvas)

        # Move the slider with a real click at 10% of its track.
        r = page.rect("#olv-step")
        page.click(r["x"] + 0.1 * r["width"], r["y"] + r["height"] / 2)
        k = page.evaluate(js_value)
        assert 0 < k < 0.3 * STEPS["ill-conditioned"]
        assert page.evaluate("document.getElementById('olv-label').textContent") == \
            f"step {k} / 200"
        shot_early, pix_early = page.screenshot("#olv-canvas"), page.evaluate(canvas)
        # A value shown is a stored one: between kept points, the last one's, named.
        data = json.loads(page.evaluate("document.getElementById('olv-data').textContent"))
        texts = page.evaluate("[...document.querySelectorAll('#olv-opts label')]"
                              ".map(l => l.children[3].textContent)")
        for o, text in zip(data["problems"][0]["opts"], texts):
            if k > o["i"][-1]:
                end = o["status"] if o["status"] != "ok" else "ended"
                assert text == f"{end} at step {o['i'][-1]}", text
            elif k not in o["i"]:
                assert text.endswith(f"(step {max(i for i in o['i'] if i <= k)})"), text
            else:
                assert "step" not in text, text
        assert pix_early != pix_end
        assert _changed(_pixels(shot_end), _pixels(shot_early)) > 200

        # The keyboard moves it one step.
        page.evaluate("document.getElementById('olv-step').focus()")
        page.key("ArrowRight", "ArrowRight", 39)
        assert page.evaluate(js_value) == k + 1
        assert page.evaluate(canvas) != pix_early

        # Optimizers toggle: all off leaves only contours and landmarks; one back on
        # draws that one only.
        page.evaluate("[...document.querySelectorAll('#olv-opts .all button')]"
                      ".find(b => b.textContent === 'none').click()")
        pix_none = page.evaluate(canvas)
        box = page.rect("#olv-opts label:nth-of-type(1) input")
        assert not page.evaluate("document.querySelector('#olv-opts label input').checked")
        page.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert page.evaluate("document.querySelector('#olv-opts label input').checked")
        pix_one = page.evaluate(canvas)
        assert len({pix_none, pix_one, pix_early}) == 3

        # Play advances the slider, pause stops it.
        page.evaluate("document.querySelectorAll('#olv-opts .all button')[0].click()")
        before = page.evaluate(js_value)
        page.click(*(lambda q: (q["x"] + q["width"] / 2, q["y"] + q["height"] / 2))(
            page.rect("#olv-play")))
        page.wait_for(f"{js_value} > {before}", timeout=60)
        assert "pause" in page.evaluate("document.getElementById('olv-play').textContent")
        page.evaluate("document.getElementById('olv-play').click()")
        paused = page.evaluate(js_value)
        page.pump(0.5)
        assert page.evaluate(js_value) == paused
        assert "play" in page.evaluate("document.getElementById('olv-play').textContent")

        # The other problem: its own step count, and it draws something else.
        page.evaluate("const s = document.getElementById('olv-problem'); s.value = '1';"
                      "s.dispatchEvent(new Event('change'))")
        page.wait_for("document.getElementById('olv').dataset.ready === '1'", timeout=60)
        assert page.evaluate(js_value) == STEPS["rosenbrock"]
        assert page.evaluate(canvas) not in (pix_end, pix_early)

        page.pump(0.5)
        assert not page.errors, page.errors
        # Offline: the page itself and data: URIs, nothing else.
        assert page.requests and all(u.startswith(("file:", "data:")) for u in page.requests)
        # The hostile name reached the page as text, not markup.
        assert page.evaluate("document.querySelectorAll('script').length") == 2
        assert page.evaluate("[...document.querySelectorAll('#olv-opts label span')]"
                             f".some(s => s.textContent.startsWith({json.dumps(EVIL)}))")
