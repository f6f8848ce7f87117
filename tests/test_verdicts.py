"""Verdicts end to end on fabricated stores: planted no-difference and large-difference
problems, an all-diverged problem, and agreement of the answer, the results table,
summary.md, the terminal table and ``compare --json``."""

from __future__ import annotations

import html as _html
import io
import json
import math
import random
import re

import pytest

from optimlab.lab import analysis as A
from optimlab.lab import cli
from optimlab.lab import verdicts as V
from optimlab.lab.report import build_report, context
from optimlab.lab.spec import RunRecord, RunSpec
from optimlab.lab.store import Store

INF = math.inf
OPTS = ("adam", "momentum", "nadam", "rmsprop", "sgd")
LRS = (1e-3, 1e-2, 1e-1)
BEST_LR = 1e-2
SEEDS = range(6)
STEPS = 40
KINDS = {"noise": "planted-null", "gap": "planted-gap", "dead": "all-diverged"}


def rec(problem, opt, lr, seed, val, phase):
    spec = RunSpec(problem, opt, lr, seed, STEPS, phase=phase)
    steps = [0, 20, 40]
    if val is None:
        final = {"train_loss": INF, "val_loss": INF, "test_loss": INF, "val_metric": None,
                 "test_metric": None, "gap": None, "steps_to_target": None,
                 "diverged_at": 3, "error": None}
        return RunRecord(spec, "diverged", final,
                         {"step": steps[:2], "train_loss": [2.0, INF],
                          "val_loss": [2.0, INF], "val_metric": [None, None],
                          "lr": [lr, lr]}, 0.1, 1e-4)
    final = {"train_loss": val, "val_loss": val, "test_loss": val + 0.01, "val_metric": None,
             "test_metric": None, "gap": None, "steps_to_target": None,
             "diverged_at": None, "error": None}
    curve = [2.0, 0.5 * (2.0 + val), val]
    return RunRecord(spec, "ok", final, {"step": steps, "train_loss": curve,
                                         "val_loss": curve, "val_metric": [None] * 3,
                                         "lr": [lr] * 3}, 1.0, 1e-4)


def planted(rng, problem, shift=None, dead=False):
    """Records of one problem: a seed effect shared by every optimizer (same init and
    batches) + run noise (+ a per-optimizer shift). BEST_LR is clearly the best lr of
    every optimizer on every seed, so seed-0 and seed-mean selection agree."""
    shift = shift or {}
    eff = {s: rng.gauss(1.0, 0.3) for s in SEEDS}
    out = []
    for o in OPTS:
        for s in SEEDS:
            for lr in (LRS if s == 0 else (BEST_LR,)):
                if dead:
                    val = None
                else:
                    val = eff[s] + rng.gauss(0, 0.05) + shift.get(o, 0.0) \
                        + (0 if lr == BEST_LR else 1.0)
                # All-failed selection falls back to the smallest lr: rerun that one.
                lr_s = LRS[0] if dead and s > 0 else lr
                out.append(rec(problem, o, lr_s, s, val, "sweep" if s == 0 else "seeds"))
    return out


def all_records(seed=0):
    rng = random.Random(seed)
    return (planted(rng, "noise") + planted(rng, "gap", shift={o: 0.5 for o in OPTS
                                                               if o != "adam"})
            + planted(rng, "dead", dead=True))


META = {"grid": list(LRS), "seeds": len(SEEDS), "steps": STEPS, "schedule": "constant",
        "problem_info": {p: {"kind": k, "description": f"planted {p}"}
                         for p, k in KINDS.items()}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdicts")
    recs = all_records()
    with Store(out / "results.sqlite") as store:
        for r in recs:
            store.put(r)
        for k, v in META.items():
            store.set_meta(k, v)
        records, meta = store.records(), store.meta()
    build_report(out)
    sel = A.select_best(records)
    summary = cli.summary(records, sel, meta)
    # Through JSON text, as a user would read it.
    summary = json.loads(json.dumps(summary, allow_nan=False))
    return {"out": out, "records": records, "meta": meta, "sel": sel,
            "json": {v["problem"]: v for v in summary["verdicts"]}, "summary": summary,
            "html": (out / "report.html").read_text(encoding="utf-8"),
            "md": (out / "summary.md").read_text(encoding="utf-8"),
            "ctx": context.build(records, meta)}


def test_json_verdict_fields(built):
    js = built["json"]
    assert set(js) == set(KINDS)
    for v in js.values():
        assert {"problem", "kind", "best", "tied", "lr", "mean", "ci"} <= set(v)
        assert v["kind"] == KINDS[v["problem"]]
    # Planted no-difference problem: no single winner, a tied group with the best in it.
    assert js["noise"]["status"] == "verdict" and not js["noise"]["significant"]
    assert js["noise"]["best"] == js["noise"]["tied"][0] and len(js["noise"]["tied"]) >= 2
    # Planted large difference: found.
    g = js["gap"]
    assert (g["best"], g["tied"], g["significant"], g["lr"]) == ("adam", ["adam"], True,
                                                                 BEST_LR)
    assert g["ci"][0] < g["mean"] < g["ci"][1] and g["n"] == len(SEEDS)
    # All diverged: no verdict, nothing named.
    d = js["dead"]
    assert (d["status"], d["best"], d["tied"], d["lr"], d["mean"], d["ci"]) == (
        "no verdict", None, [], None, None, None)
    # Selections keep their fields.
    assert {"problem", "optimizer", "lr", "score", "on_edge"} <= set(built["summary"]
                                                                     ["selections"][0])


def test_json_agrees_with_the_results_table(built):
    """The answer's mean/CI is the table's val-loss mean ± half-width of the best."""
    from optimlab.lab.report import text as T

    agg = built["ctx"]["aggregate"]
    for p in ("noise", "gap"):
        v = built["json"][p]
        a = agg[(p, v["best"])]["val_loss"]
        assert a["mean"] == pytest.approx(v["mean"], rel=1e-12)
        assert T.half_width(a) == pytest.approx((v["ci"][1] - v["ci"][0]) / 2, rel=1e-9)
        assert a["n"] == v["n"]
        # The selection's lr is the verdict's.
        assert built["sel"][(p, v["best"])].lr == v["lr"]


def _report_of(tmp_path, recs, **meta) -> None:
    """The report built from a store holding ``recs`` (and META, plus ``meta``)."""
    with Store(tmp_path / "results.sqlite") as store:
        for r in recs:
            store.put(r)
        for k, v in {**META, **meta}.items():
            store.set_meta(k, v)
    build_report(tmp_path)


def _section(page, sid):
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, sid
    return m.group(1)


def test_html_answer_and_table(built):
    page = built["html"]
    ans = _html.unescape(re.sub(r"<[^>]+>", " ", _section(page, "answer")))
    ans = " ".join(ans.split())
    js = built["json"]
    noise = js["noise"]
    # The tied group, best first, in words.
    assert ", ".join(noise["tied"]) + " — indistinguishable (paired max-t, step-down" in ans
    assert "no verdict" in ans
    assert "adam — significantly best" in ans
    for p in ("noise", "gap"):
        assert V.mean_pm(js[p]) in ans
    table = _section(page, "table")
    # Tied rows are marked; the dead problem says so; no row of it claims a best.
    assert table.count('class="tied"') == len(noise["tied"]) + 1
    assert "no verdict" in table
    # Protocol states the method.
    proto = _section(page, "protocol")
    assert "Student-t" in proto and "max-t" in proto and "paired" in proto


def test_summary_md_no_verdict_and_groups(built):
    md = built["md"]
    lines = md.splitlines()
    dead = [ln for ln in lines if ln.startswith("| dead |")]
    assert dead and "no verdict" in dead[0] and "✗" in dead[0]
    kind = [ln for ln in lines if ln.startswith("| all-diverged |")]
    assert kind and "no verdict" in kind[0] and not any(o in kind[0] for o in OPTS)
    # Every results-table row of the dead problem carries the failure mark, no ★.
    rows = [ln for ln in lines if ln.startswith("| dead | ") and "diverged" in ln]
    assert rows and all("✗" in ln and "★" not in ln for ln in rows)
    noise = built["json"]["noise"]
    assert f"**{', '.join(noise['tied'])}** — indistinguishable" in md
    assert "**adam** — significantly best" in md


def test_tie_aware_ranks(built):
    ctx = built["ctx"]
    ranks, vs = ctx["ranks"], ctx["verdicts"]
    tied = vs["noise"].tied
    assert len({ranks["noise"][o] for o in tied}) == 1
    assert ranks["gap"]["adam"] == 1.0
    assert "dead" not in ranks   # nothing to rank
    assert sum(ranks["noise"].values()) == sum(range(1, len(OPTS) + 1))
    assert "ranks" in context.images(ctx)


def test_no_single_winner_over_many_planted_null_stores():
    """Record-level: across many fabricated null problems a single winner is rare."""
    singles = found = 0
    draws = 60
    for i in range(draws):
        recs = all_records(seed=100 + i)
        vs = V.verdicts(recs)
        singles += vs["noise"].significant
        found += vs["gap"].tied == ["adam"]
        assert vs["dead"].status == V.NO_VERDICT
    assert singles <= 0.05 * draws
    assert found == draws


def test_terminal_table(built):
    rows = V.rows(built["ctx"]["verdicts"], built["sel"], KINDS)
    buf = io.StringIO()
    V.print_table(rows, report="/tmp/x/report.html", file=buf)
    text = buf.getvalue()
    lines = text.splitlines()
    assert any("dead" in ln and "no verdict" in ln for ln in lines)
    assert any("gap" in ln and "adam" in ln and "significantly" in ln for ln in lines)
    noise = [ln for ln in lines if "noise" in ln]
    assert noise and "indistinguishable" in text
    assert V.mean_pm(built["json"]["gap"]).split(" (")[0] in text
    assert lines[-1].startswith("report:") and "report.html" in text


def test_paired_deltas_in_the_table(built):
    ctx = built["ctx"]
    for o in OPTS:
        if o == "adam":
            assert ("gap", o) not in ctx["deltas"]
            continue
        ci, p = ctx["deltas"][("gap", o)]
        # The planted shift is 0.5: the paired interval holds it and excludes 0.
        assert ci.lo > 0 and ci.lo < 0.5 < ci.hi and p < 0.05
    v = ctx["verdicts"]["noise"]
    for o in v.tied[1:]:
        assert ctx["deltas"][("noise", o)][1] >= 0.05
    assert "Δ vs best" in built["html"]
    # summary.md carries the same paired differences (it had no such column)
    md = built["md"]
    assert "| Δ vs best (p) |" in md
    for o in OPTS:
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| gap | {o}"))
        cell = row.split("|")[5].strip()
        if o == "adam":
            assert cell == "—"
        else:
            ci, pv = ctx["deltas"][("gap", o)]
            assert cell.startswith(f"{ci.mean:+.3g} ± {ci.half_width:.2g} (p"), cell


def test_runs_that_reached_a_known_optimum_tie():
    """Through records: the floor comes from the problem's optimum (train_loss - gap) and
    its starting validation loss, so two optimizers at 1e-30 and 1e-200 tie, and the
    terminal/JSON verdict names both; a run at 1e-3 stays out of the group."""
    rng = random.Random(5)
    recs = []
    for o, v in {"adam": 1e-30, "rmsprop": 1e-200, "sgd": 1e-3}.items():
        for s in SEEDS:
            r = rec("ravine", o, BEST_LR, s, v * rng.uniform(0.5, 2.0),
                    "sweep" if s == 0 else "seeds")
            r.final["gap"] = r.final["train_loss"]          # optimum 0
            recs.append(r)
    assert V.floors(recs)["ravine"] == pytest.approx(2.0 * 2.0 ** -23)
    v = V.verdicts(recs)["ravine"]
    assert v.best == "rmsprop" and v.tied == ["rmsprop", "adam"] and "sgd" not in v.tied
    for r in recs:
        r.final["gap"] = None                               # optimum unknown: no floor
    assert V.verdicts(recs)["ravine"].tied == ["rmsprop"]


@pytest.mark.parametrize("vals, tested, words", [
    # --seeds 1: one trained seed each, no test possible
    ({"adam": [0.21], "sgd": [0.25]}, False, "adam, sgd — not enough seeds to compare"),
    ({"adam": [0.21], "sgd": [None]}, False, "adam — best: every other optimizer failed"),
    ({"adam": [0.21, 0.22, 0.20], "sgd": [0.25, 0.27, 0.26]}, True, "adam — significantly best"),
])
def test_one_seed_gives_no_interval_no_test_and_no_best(tmp_path, vals, tested, words):
    """With one seed: no '± 0' and no JSON interval [m, m], no "indistinguishable (paired
    max-t, ...)" verdict and no ★ in the tables (a test needs 2 seeds)."""
    recs = [rec("p", o, BEST_LR, s, v, "sweep" if s == 0 else "seeds")
            for o, vs in vals.items() for s, v in enumerate(vs)]
    row = V.rows(V.verdicts(recs), A.select_best(recs), {"p": "quadratic"})[0]
    assert row["tested"] is tested and row["text"].startswith(words)
    assert (row["ci"] is None) is (not tested)
    assert ("±" in V.mean_pm(row)) is tested
    buf = io.StringIO()
    V.print_table([row], file=buf)
    assert ("indistinguishable" not in buf.getvalue()) and ("± 0 " not in buf.getvalue())
    _report_of(tmp_path, recs)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    table = [ln for ln in md.splitlines() if ln.startswith("| p | adam")]
    assert table and ("★" in table[0]) is (tested or "failed" in words)
    assert words in _html.unescape(re.sub(r"<[^>]+>", "",
                                          (tmp_path / "report.html").read_text("utf-8")))


#: The QA's rosenbrock (sgd, adam, rmsprop, 4 seeds): rmsprop's mean is the worst, but its
#: spread is so wide that the test cannot tell it from adam, while sgd (a better mean) is
#: significantly worse.
WIDE = {"adam": [1.90e-5, 1.95e-5, 1.92e-5, 1.94e-5], "sgd": [0.0640, 0.0645, 0.0641, 0.0643],
        "rmsprop": [0.153, 0.903, 0.181, 0.182]}


def test_ranks_and_the_answer_follow_the_seed_means(tmp_path):
    """'Indistinguishable from the best' is not transitive: rmsprop is neither co-best
    nor ranked ahead of sgd, whose mean is better; it is named apart (wide spread)."""
    recs = [rec("rosen", o, BEST_LR, s, v, "sweep" if s == 0 else "seeds")
            for o, vs in WIDE.items() for s, v in enumerate(vs)]
    v = V.verdicts(recs)["rosen"]
    assert v.pvalues["rmsprop"] >= 0.05 > v.pvalues["sgd"]
    assert v.tied == ["adam"] and v.unresolved == ["rmsprop"] and not v.significant
    ranks = V.rank_table({"rosen": v})["rosen"]
    assert ranks == {"adam": 1.0, "sgd": 2.0, "rmsprop": 3.0}
    kind = V.per_kind({"rosen": ranks}, {"rosen": "2-D"}, {"rosen": v}, A.select_best(recs))
    assert kind["2-D"]["leaders"] == ["adam"]
    row = V.rows({"rosen": v}, A.select_best(recs), {"rosen": "2-D"})[0]
    assert row["tied"] == ["adam"] and row["named"] == ["adam"]
    assert "significantly best" not in row["text"] and "indistinguishable" not in row["text"]
    assert "not distinguishable from the best (wide spread): rmsprop" in row["text"]
    _report_of(tmp_path, recs)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    ans = " ".join(_html.unescape(re.sub(r"<[^>]+>", " ", _section(page, "answer"))).split())
    assert "adam, rmsprop" not in ans and "rmsprop — " not in ans and "(shared)" not in ans
    assert "wide spread" in ans
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "rmsprop ≈" not in md and "| rosen | rmsprop |" in md
    assert _section(page, "table").count('class="tied"') == 1


def test_one_seed_comparisons_are_untested_not_ties(tmp_path):
    """--seeds 1: no comparison was tested, so none is a tie with p = 1, no shared rank
    and no co-best card; the Δ column says "no test"."""
    vals = {("rav", "sgd"): 0.030, ("rav", "momentum"): 0.066,
            ("five", "sgd"): 0.60, ("five", "momentum"): 0.58}
    recs = [rec(p, o, BEST_LR, 0, v, "sweep") for (p, o), v in vals.items()]
    vs = V.verdicts(recs)
    for v in vs.values():
        assert v.tied == [v.best] and v.untested == v.order[1:] and not v.significant
        assert all(v.pvalues[o] is None for o in v.untested)
    assert V.rank_table(vs) == {}
    kinds = {"rav": "2-D", "five": "2-D"}
    card = V.per_kind(V.rank_table(vs), kinds, vs, A.select_best(recs))["2-D"]
    assert card["optimizer"] is None and card["untested"] and not card["failed"]
    _report_of(tmp_path, recs, problem_info={p: {"kind": "2-D", "description": p} for p in kinds})
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    ans = " ".join(_html.unescape(re.sub(r"<[^>]+>", " ", _section(page, "answer"))).split())
    assert "(shared)" not in ans and "mean tie-aware rank 1" not in ans
    assert "no test not enough seeds to compare on its 2 problems" in ans
    table = _section(page, "table")
    assert "(p 1)" not in table and "no test: 1 seed" in table
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "no test (not enough seeds to compare)" in md


def test_a_best_singled_out_by_failures_is_not_called_significant(tmp_path):
    """Every sgd run diverged, adam trained 4 seeds: adam is the best because the others
    failed, not by a test; no renderer says "significantly best"."""
    vals = {"adam": [0.21, 0.22, 0.20, 0.23], "sgd": [None] * 4}
    recs = [rec("q", o, BEST_LR, s, v, "sweep" if s == 0 else "seeds")
            for o, vs in vals.items() for s, v in enumerate(vs)]
    row = V.rows(V.verdicts(recs), A.select_best(recs), {"q": "quadratic"})[0]
    assert row["tested"] and row["significant"] and row["by_failures"]
    assert row["text"] == "adam — best: every other optimizer failed (no test)"
    buf = io.StringIO()
    V.print_table([row], file=buf)
    assert "every other optimizer failed" in buf.getvalue()
    _report_of(tmp_path, recs)
    page = _html.unescape((tmp_path / "report.html").read_text("utf-8"))
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    for text in (buf.getvalue(), page, md):
        assert "significantly best" not in text
    assert "**adam** — best: every other optimizer failed (no test)" in md
