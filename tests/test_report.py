"""Tests of the report on a synthetic store (records built by hand; nothing trains)."""

import base64
import html.parser
import io
import math
import os
import re
import shutil
import subprocess

import pytest

from optimlab.lab.spec import RunRecord, RunSpec

store_mod = pytest.importorskip("optimlab.lab.store",
                                reason="optimlab.lab.store not written yet (colleague)")
from optimlab.lab.report import build_report, build_reports, render  # noqa: E402
from optimlab.lab.store import comparison_id  # noqa: E402

EVIL = "<script>alert(1)</script>"
GRID = [1e-4, 1e-3, 1e-2, 1e-1]
OPTS = ["adam", "momentum", "sgd"]
STEPS = 60


def two_d_problem():
    """The real Rosenbrock problem when the problems package has it, else a fake."""
    try:
        from optimlab.lab.problems.functions2d import rosenbrock_problem
        return rosenbrock_problem()
    except Exception:
        from optimlab.lab.problems.base import Problem
        return Problem("rosenbrock", "2d", "fake banana", 100, None, None, None, None,
                       optimum=0.0, surface=lambda x, y: (1 - x) ** 2 + 100 * (y - x * x) ** 2,
                       bounds=((-2.0, 2.0), (-1.0, 3.0)), minima=((1.0, 1.0),))


def fake_problem():
    from optimlab.lab.problems.base import Problem
    return Problem("logreg", "logistic", "logistic regression " + EVIL, 100, None, None,
                   None, None, metric_name="accuracy")


# (problem, optimizer) -> val loss per lr; None = diverged. The test loss is made to
# prefer a different lr than validation on logreg/sgd.
VALS = {("rosenbrock", "sgd"): [2.0, 0.5, 0.05, None],
        ("rosenbrock", "momentum"): [1.0, 0.1, 0.01, None],
        ("rosenbrock", "adam"): [1.5, 0.2, 0.02, 0.3],
        ("logreg", "sgd"): [0.69, 0.5, 0.35, 0.6],
        ("logreg", "momentum"): [0.6, 0.4, 0.34, 0.33],   # best on the grid's edge
        ("logreg", "adam"): [0.5, 0.32, 0.4, None]}


def record(problem, opt, lr, val, seed=0, phase="sweep"):
    spec = RunSpec(problem, opt, lr, seed, STEPS, phase=phase)
    steps = list(range(0, STEPS + 1, 10))
    if val is None:
        final = {"train_loss": math.inf, "val_loss": math.inf, "test_loss": math.inf,
                 "val_metric": None, "test_metric": None, "gap": None,
                 "steps_to_target": None, "diverged_at": 7, "error": "loss is inf " + EVIL}
        curves = {"step": steps[:2], "train_loss": [3.0, math.inf],
                  "val_loss": [3.0, math.inf], "val_metric": [None, None], "lr": [lr, lr]}
        return RunRecord(spec, "diverged", final, curves, 0.1, 1e-4)
    val = val * (1 + 0.05 * seed)
    test = val if (problem, opt) != ("logreg", "sgd") else {1e-3: 0.1}.get(lr, val + 0.2)
    is2d = problem == "rosenbrock"
    train = [3.0 * (val / 3.0) ** (i / (len(steps) - 1)) for i in range(len(steps))]
    final = {"train_loss": val, "val_loss": val, "test_loss": test,
             "val_metric": None if is2d else 0.8, "test_metric": None if is2d else 0.79,
             "gap": val if is2d else None,
             "steps_to_target": int(40 * val / 0.01) if is2d and val < 0.1 else None,
             "diverged_at": None, "error": None}
    curves = {"step": steps, "train_loss": train, "val_loss": train,
              "val_metric": [None] * len(steps), "lr": [lr] * len(steps)}
    traj = None
    if is2d:
        traj = [[-1.2 + 2.2 * t / STEPS * (1 - val), 1.0 - 0.5 * math.sin(t / 9.0) * val]
                for t in range(STEPS + 1)]
    sps = {"sgd": 1e-4, "momentum": 1.1e-4, "adam": 1.6e-4}[opt]
    return RunRecord(spec, "ok", final, curves, 1.0, sps, traj,
                     {"python": "3.11", "torch": "2.13.0"})


def all_records():
    out = []
    for (p, o), vals in VALS.items():
        out += [record(p, o, lr, v) for lr, v in zip(GRID, vals)]
        best = min((v, lr) for lr, v in zip(GRID, vals) if v is not None)
        out.append(record(p, o, best[1], best[0], seed=1, phase="seeds"))
    return out


META = {"command": f"optimlab compare --suite quick {EVIL}", "argv": ["optimlab", EVIL],
        "versions": {"python": "3.11", "torch": "2.13.0", "optimlab": EVIL},
        "suite": "quick", "grid": GRID, "seeds": 2, "steps": STEPS,
        "schedule": "constant", "created": "2025-01-01T00:00:00",
        "finished": "2025-01-01T01:00:00"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    store = store_mod.Store(out / "results.sqlite")
    for r in all_records():
        store.put(r)
    for k, v in META.items():
        store.set_meta(k, v)
    if hasattr(store, "close"):
        store.close()
    problems = {"rosenbrock": two_d_problem(), "logreg": fake_problem()}
    path = build_report(out, problems=problems)
    return out, path


class ImgParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.scripts, self.external = [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(a)


def test_selection_picks_validation_in_rendered_data():
    from optimlab.lab.analysis import select_best
    sel = select_best(all_records())
    assert sel[("logreg", "sgd")].lr == 1e-2       # test would prefer 1e-3
    assert sel[("rosenbrock", "sgd")].lr == 1e-2   # 1e-1 diverged
    assert sel[("logreg", "adam")].lr == 1e-3


def test_report_files_and_images(built):
    out, path = built
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")
    p = ImgParser()
    p.feed(page)
    # The only scripts are the trajectory viewer's (its JSON data and its code), inline.
    assert p.scripts == 2 and not p.external
    # contours, curves, sensitivity, profile, ranks, time, schedule (if available)
    assert len(p.imgs) >= 6
    for src in p.imgs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        import matplotlib.image as mpimg
        assert mpimg.imread(io.BytesIO(data), format="png").size > 0
    assert path.stat().st_size < 5_000_000
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Answer" in summary and "logreg" in summary
    # Raw text is allowed only inside fenced code blocks (Markdown shows it literally);
    # elsewhere markup characters are backslash-escaped, never HTML-escaped.
    outside = re.sub(r"(`{3,})\n.*?\n\1", "", summary, flags=re.S)
    assert re.search(r"(?<!\\)<", outside) is None and "\\<script\\>" in outside
    assert "&amp;" not in summary and "&lt;" not in summary
    assert "Dolan & Moré" in summary
    assert "· 2 problems ·" in summary and "problem(s)" not in summary


def test_every_user_string_is_escaped(built):
    page = built[1].read_text(encoding="utf-8")
    viewer = re.compile(r"<script type='application/json' id='olv-data'>[^<]*</script>"
                        r"<script>.*?</script>", re.S)
    assert len(viewer.findall(page)) == 1
    assert "<script" not in viewer.sub("", page).lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # description, command, versions and the diverged run's error all appear escaped
    assert page.count("&lt;script&gt;alert(1)") >= 4


def test_report_content(built):
    page = built[1].read_text(encoding="utf-8")
    for needle in ("The answer", "Best learning rates", "Trajectories", "Loss curves",
                   "Learning-rate sensitivity", "Performance profile", "Time per step",
                   "bias correction", "Protocol", "Reproduce", "bias_correction_specs",
                   "seed-mean final validation loss", "Learning-rate schedule", "Tuning cost"):
        assert needle in page, needle
    # exactly one selected lr (logreg/momentum at 0.1) is flagged in the table
    assert page.count('0.1 <span class="edge"') == 1


def test_old_format_store_reports_as_one_comparison(built):
    """The fixture's store has one global meta (the format before comparison ids): it
    reads as one comparison, whose report is also report.html, listed in index.html."""
    out, path = built
    cid = comparison_id(META)
    own = out / f"report-{cid}.html"
    assert own.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert (out / f"summary-{cid}.md").read_text(encoding="utf-8") == \
        (out / "summary.md").read_text(encoding="utf-8")
    index = (out / "index.html").read_text(encoding="utf-8")
    assert f'href="report-{cid}.html"' in index and "1 comparison;" in index
    assert "<script" not in index.lower() and "&lt;script&gt;alert(1)" in index


def _group_rows(page):
    """Problems with a row group in the results table."""
    return set(re.findall(r'<tr class="grp"><td colspan="\d+">([^ <]+)', page))


def test_two_comparisons_in_one_directory(tmp_path):
    """Two comparisons share a store (and the runs they have in common); each keeps its
    own report, the latest is report.html, index.html lists both, and rebuilding all or
    one comparison writes exactly those files."""
    records = all_records()
    by_problem = {p: [r.run_id for r in records if r.spec.problem == p]
                  for p in ("logreg", "rosenbrock")}
    store = store_mod.Store(tmp_path / "results.sqlite")
    for r in records:
        store.put(r)
    ids = []
    for p, runs in by_problem.items():
        plan = {**{k: v for k, v in META.items() if k != "command"}, "problems": [p]}
        ids.append(comparison_id(plan))
        store.use(ids[-1])
        for k, v in {**plan, "runs": runs, "command": f"optimlab compare {p} {EVIL}",
                     "finished": "2025-01-02T00:00:00+00:00"}.items():
            store.set_meta(k, v)
    store.close()
    first, second = ids
    problems = {"rosenbrock": two_d_problem(), "logreg": fake_problem()}
    path = build_report(tmp_path, problems=problems)
    assert path == tmp_path / "report.html"
    pages = {c: (tmp_path / f"report-{c}.html").read_text(encoding="utf-8") for c in ids}
    assert _group_rows(pages[first]) == {"logreg"}
    assert _group_rows(pages[second]) == {"rosenbrock"}
    assert path.read_text(encoding="utf-8") == pages[second]   # the latest
    summaries = {c: (tmp_path / f"summary-{c}.md").read_text(encoding="utf-8") for c in ids}
    assert "| logreg |" in summaries[first] and "| rosenbrock |" not in summaries[first]
    assert "| rosenbrock |" in summaries[second] and "| logreg |" not in summaries[second]
    for c in ids:
        assert f"comparison `{c}`" in summaries[c] and f"comparison {c}" in pages[c]
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert index.index(f'href="report-{second}.html"') < index.index(
        f'href="report-{first}.html"')   # newest first
    assert "<script" not in index.lower() and index.count("&lt;script&gt;alert(1)") == 2

    for f in list(tmp_path.glob("*.html")) + list(tmp_path.glob("*.md")):
        f.unlink()
    assert build_report(tmp_path, problems, comparison=first[:6]) == \
        tmp_path / f"report-{first}.html"
    assert sorted(f.name for f in tmp_path.iterdir() if f.suffix in (".html", ".md")) == \
        sorted(["index.html", f"report-{first}.html", f"summary-{first}.md"])
    assert (tmp_path / f"report-{first}.html").read_text(encoding="utf-8") == pages[first]
    with pytest.raises(ValueError, match=f"known comparisons: {first}, {second}"):
        build_report(tmp_path, problems, comparison="nope")
    # missing=True (what compare does) also builds any comparison without a report yet
    built = build_reports(tmp_path, problems, [first], missing=True)
    assert sorted(built.reports) == sorted(ids) and built.latest == tmp_path / "report.html"
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == pages[second]


def test_bias_correction_panel_when_runs_exist():
    from optimlab.lab.analysis import bias_correction_specs
    specs = bias_correction_specs("logreg", GRID, [0.99, 0.9999], STEPS)
    extra = [RunRecord(s, "ok" if s.lr < 0.1 else "diverged",
                       {"val_loss": 1.0 + s.lr * (1 if s.hyperparameters[1][1] else 5)},
                       {}, 1.0, 1e-4) for s in specs]
    problems = {"rosenbrock": two_d_problem(), "logreg": fake_problem()}
    page, _, imgs = render(all_records() + extra, META, problems)
    assert "bias" in imgs and "No bias-correction runs" not in page
    page, _, imgs = render(all_records(), META, problems)
    assert "bias" not in imgs and "No bias-correction runs" in page


def test_an_unfinished_comparison_is_marked_incomplete():
    """A comparison without "finished" (interrupted) says so at the top, marks its answer
    provisional, and its protocol claims no reruns; the phase is the stored one, or for an
    older store the last phase with runs."""
    started = {k: v for k, v in META.items() if k != "finished"}
    for meta, phase in (({**started, "phase": "sweep, round 1"}, "sweep, round 1"),
                        (started, "seeds")):
        page, md, _ = render(all_records(), meta, {"rosenbrock": two_d_problem(),
                                                   "logreg": fake_problem()})
        assert page.index("⚠ Incomplete") < page.index('<section id="answer"')
        assert f"during phase {phase}, with 30 runs stored" in page
        assert "The answer (provisional)" in page and "<title>optimlab report (incomplete)" in page
        assert md.splitlines()[4].startswith("> **⚠ Incomplete:** This comparison did not")
        assert "## Answer (provisional" in md and "\n## Answer\n" not in md
        for text in (page, md):
            assert "were rerun" not in text and "are to be rerun" in text
            assert "ran the same learning-rate" not in text
    page, md, _ = render(all_records(), META)   # finished
    assert "Incomplete" not in page + md and "were rerun" in md and "\n## Answer\n" in md


def test_render_is_pure_and_handles_empty():
    h, m, imgs = render([], {})
    assert "<html" in h and "# optimlab report" in m
    assert set(imgs) <= {"schedule"}


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def test_report_in_headless_chromium(built, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI but was not found")
        pytest.skip("chromium not installed (install Debian `chromium` to run this test)")
    out, path = built
    shot = tmp_path / "report.png"
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--hide-scrollbars"]
    url = path.resolve().as_uri()
    # The timeout only guards against a hung browser; nothing asserts on time.
    res = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2000", url],
                         capture_output=True, text=True, timeout=180)
    assert shot.exists(), res.stderr[-2000:]
    import matplotlib.image as mpimg
    px = mpimg.imread(str(shot))
    assert px.shape[0] > 100 and px.shape[1] > 100
    assert px[..., :3].var() > 0
    errors = [ln for ln in res.stderr.splitlines()
              if "Uncaught" in ln or ("CONSOLE" in ln and "error" in ln.lower())]
    assert not errors, errors
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=180)
    assert "The answer" in dom.stdout and "<img" in dom.stdout
    assert "<script>alert(1)" not in dom.stdout
    keep = os.environ.get("OPTIMLAB_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_sensitivity_plot_survives_losses_near_the_float_floor():
    """The default run's ravine: val losses from ~1e-289 (solved exactly) to ~1e266 (blowing
    up, still finite) on one log axis made matplotlib overflow and the whole report fail."""
    from optimlab.lab.report import plots as P

    sweeps = {("ravine", "adagrad"): [(0.1, 0.0246, "ok"), (1.0, 1.0e-97, "ok"), (10.0, 4.07e-289, "ok")],
              ("ravine", "sgd"): [(0.01, 0.0359, "ok"), (0.0316, 4.8e134, "ok"), (0.0562, 5.75e266, "ok"),
                                  (1.0, float("inf"), "diverged")]}
    png = P.sensitivity(sweeps, {}, {"adagrad": "C0", "sgd": "C1"}, ["ravine"])
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"


def md_table(ctx, problem) -> str:
    from optimlab.lab.report import markdown
    return "\n".join(line for line in markdown.summary(ctx).splitlines()
                     if line.startswith(f"| {problem} |"))


def test_results_table_steps_and_train_gap_cells():
    """The HTML table's steps cell says how many seeds reached the target (as summary.md
    does); a train gap within the optimum floor's resolution of 0, below it included (float32
    training against the float64 optimum), reads 'at the optimum'; a real gap stays a number;
    the caption and the protocol state the lr-width rule the analysis applies."""
    from optimlab.lab.report import context, html as H, text as T

    records = all_records()
    for r in records:
        if r.spec.problem == "rosenbrock" and r.spec.optimizer == "sgd":
            r.final["gap"] = r.final["train_loss"] = -1.7e-07  # the optimum is 0
    problems = {"rosenbrock": two_d_problem(), "logreg": fake_problem()}
    ctx = context.build(records, META, problems)
    table = H.results_table(ctx)
    rosenbrock = table.split("rosenbrock <span")[1]
    rows = {o: row for o in ("sgd", "momentum", "adam") for row in rosenbrock.split("<tr")
            if re.search(f"</span>{o}[ <]", row) and "(2/2 reached)</td>" in row}
    assert set(rows) == {"sgd", "momentum", "adam"}, table
    assert "at the optimum (|gap| ≤ 4e-07)" in rows["sgd"]
    assert "at the optimum" not in rows["momentum"]
    assert ctx["info"]["logreg"].get("target") is None  # no target: nothing to reach
    logreg = table.split("logreg <span")[1].split("rosenbrock <span")[0]
    assert "reached)" not in logreg and "reached)" not in md_table(ctx, "logreg")
    assert "how far it fell from the starting val loss" in table
    assert any("how far it fell from the starting val loss" in line for line in T.protocol(ctx))
