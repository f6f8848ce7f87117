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
    with Store(tmp_path / "results.sqlite") as store:
        for r in recs:
            store.put(r)
        for k, v in META.items():
            store.set_meta(k, v)
    build_report(tmp_path)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    table = [ln for ln in md.splitlines() if ln.startswith("| p | adam")]
    assert table and ("★" in table[0]) is (tested or "failed" in words)
    assert words in _html.unescape(re.sub(r"<[^>]+>", "",
                                          (tmp_path / "report.html").read_text("utf-8")))
