"""The report says what its data supports: the search's hard bound, the schedules each run
used, deterministic problems, the protocol's facts (machine, wall time, load, splits,
evaluation resolution, targets, phases), readable settings and failed runs.

Synthetic records (nothing trains) except the last test, a tiny in-process compare.
"""

import math
import sys
from pathlib import Path

from optimlab.lab.report import render
from optimlab.lab.spec import RunRecord, RunSpec

STEPS = 50
LONG = ("coarse log grid 0.0001..1 (one per decade, shared); extended one decade at a time "
        "past an edge while the best sits there (hard bounds 1e-06..10); then refined around "
        "the best to quarter-decade spacing (4 per decade, best x 10^±0.25, ±0.5) <b>")
META = {"command": "optimlab compare", "grid": [0.01, 0.1, 1.0], "seeds": 3, "steps": None,
        "steps_per_problem": {"quad": STEPS, "line": STEPS}, "suite": None,
        "schedule": "constant", "grid_spacing": LONG, "selection": "lr search " + LONG,
        "search": {"adaptive": True, "bounds": [1e-6, 10.0]},
        "created": "2026-01-01T10:00:00+00:00", "started": "2026-01-01T10:00:00+00:00",
        "finished": "2026-01-01T10:03:20+00:00", "workers": 2, "executor": "local",
        "machine": {"cpu": "Fake CPU 9000 <i>", "logical_cpus": 8, "usable_cpus": 4,
                    "torch_threads_per_run": 1, "platform": "Linux-test"},
        "wall_seconds": 200.0, "load": {"start": 0.25, "end": 2.5},
        "data_sizes": {"line": {"train": 600, "val": 200, "test": 200, "batch": 32}}}


def problems():
    from optimlab.lab.problems.base import Problem
    quad = Problem("quad", "quadratic", "a quadratic", STEPS, None, None, None, None,
                   optimum=0.0, target=0.05)
    line = Problem("line", "least-squares", "a line fit", STEPS, None, None, None, None,
                   optimum=0.5, target=0.51)
    return {"quad": quad, "line": line}


def rec(problem, opt, lr, val, seed, phase=None, schedule="constant", hps=(),
        status="ok", diverged_at=None):
    phase = phase or ("sweep" if seed == 0 else "seeds")
    spec = RunSpec(problem, opt, lr, seed, STEPS, schedule=schedule, hyperparameters=hps,
                   phase=phase)
    steps = list(range(0, STEPS + 1, 2))
    if status != "ok":
        final = {"train_loss": math.inf, "val_loss": math.inf, "test_loss": math.inf,
                 "gap": None, "steps_to_target": None, "diverged_at": diverged_at,
                 "error": None}
        return RunRecord(spec, status, final, {"step": [0], "train_loss": [7.5]}, 0.1, 1e-4)
    train = [1.0 + val * i / len(steps) for i in range(len(steps))]
    final = {"train_loss": val, "val_loss": val, "test_loss": val, "gap": val,
             "steps_to_target": 20, "diverged_at": None, "error": None}
    return RunRecord(spec, "ok", final, {"step": steps, "train_loss": train}, 1.0, 1e-4)


def records():
    out = []
    for seed in range(3):
        noise = 0.01 * seed
        # quad: sgd's best lr is 10, the search's hard bound; adam's is inside.
        for lr, v in ((1.0, 0.5), (3.16, 0.3), (10.0, 0.1)):
            out.append(rec("quad", "sgd", lr, v + noise, seed))
        for lr, v in ((0.01, 0.4), (0.1, 0.2), (1.0, 0.6)):
            out.append(rec("quad", "adam", lr, v + noise, seed))
        # line: deterministic (every seed the same run).
        for lr, v in ((0.01, 0.56), (0.1, 0.52), (1.0, 0.58)):
            out.append(rec("line", "sgd", lr, v, seed))
            out.append(rec("line", "adam", lr, v + 0.01, seed))
        for sch in ("step", "cosine"):
            out.append(rec("quad", "sgd", 10.0, 0.09, seed, "schedules", sch))
    for b2 in (0.999, 0.9999):
        for lr in (0.1, 1.0):
            out.append(rec("quad", "adam", lr, None, 0, "bias-correction",
                           hps=(("betas", (0.9, b2)), ("bias_correction", False)),
                           status="diverged", diverged_at=3))
    return out


def rendered(meta=META):
    page, md, _ = render(records(), meta, problems())
    return page, md


def section(page, sid):
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


def test_a_best_lr_at_the_search_bound_is_flagged_as_such_in_the_table_and_answer():
    page, md = rendered()
    table, answer = section(page, "table"), section(page, "answer")
    assert "10 <span class=\"edge\"" in table and "⚑ hard bound" in table
    assert "⚠ edge</span></td>" not in table          # not "widen it": it cannot be widened
    assert "⚑ hard bound" in answer                    # the answer's lr of the best, too
    assert "--lrs" in answer and "cannot" in table
    assert "| 10 ⚑ (at the search's hard bound) |" in md
    # a fixed grid (no adaptive search): the same lr is an edge to widen
    fixed = {**META, "search": {"adaptive": False, "bounds": [0.01, 10.0]}}
    page, md = rendered(fixed)
    assert "⚑ hard bound" not in page and "⚠ edge" in section(page, "table")
    assert "10 (edge)" in md


def test_the_schedule_section_says_which_runs_use_which_schedule():
    page, md = rendered()
    sch = section(page, "schedule")
    assert "All runs use" not in sch
    for name, runs in (("constant", 40), ("step", 3), ("cosine", 3)):
        assert f"<tr><td>{name}</td>" in sch and f"<td>{runs}</td>" in sch, name
    assert "schedules 3" in sch and "<img" in sch
    assert "step (×0.1 after each third of the run): 3 runs (schedules 3)" in md


def test_a_deterministic_problem_is_labelled_and_its_p_values_explained():
    page, md = rendered()
    table = section(page, "table")
    line = table[table.index(">line <"):table.index(">quad <")]
    assert "Deterministic: every seed gave a bit-identical run" in line
    assert "Deterministic" not in table[table.index(">quad <"):]
    assert "p-value" in line
    assert "deterministic problem" in section(page, "answer")
    assert "line is deterministic" in md and "quad is deterministic" not in md


def test_the_protocol_states_machine_time_load_splits_resolution_targets_and_phases():
    page, md = rendered()
    proto = section(page, "protocol")
    for needle in ("Fake CPU 9000 &lt;i&gt;", "8 logical CPUs (4 usable", "2 runs in parallel",
                   "Wall time: 3 min 20 s", "load average was 0.25", "and 2.5 when",
                   "line: train 600, val 200, test 200 rows, mini-batches of 32",
                   "every 2 of 50 steps (25 points)", "train loss (not the validation loss)",
                   "quad 0.05", "line 0.51", "Phase bias-correction (4 runs)",
                   "β2 ∈ {0.999, 0.9999}", "Phase schedules (6 runs)",
                   "steps per run by problem: quad 50, line 50"):
        assert needle in proto, needle
    assert "{'" not in page and "{&#x27;" not in page      # no Python dict reprs
    assert "Fake CPU 9000 \\<i\\>" in md
    # an older store without the machine says so rather than guessing
    old = {k: v for k, v in META.items() if k not in ("machine", "wall_seconds", "load",
                                                      "data_sizes", "started")}
    page, _ = rendered(old)
    proto = section(page, "protocol")
    assert "Hardware: not recorded" in proto and "Wall time: 3 min 20 s from creation" in proto
    assert "load during the measurements was not recorded" in proto
    assert "Data split sizes: not recorded" in proto


def test_run_settings_are_whole_and_readable():
    page, _ = rendered()
    rep = section(page, "reproduce")
    assert "<td>steps</td><td class='l' style='white-space:normal'>per problem" in rep
    assert "<td>suite</td><td class='l' style='white-space:normal'>none" in rep
    assert "None" not in rep and "…" not in rep
    assert LONG.replace("<b>", "&lt;b&gt;") in rep        # not cut, escaped
    assert "quad 50, line 50" in rep or "quad 50; line 50" in rep


def test_failed_runs_show_their_settings_and_the_step_they_diverged_at():
    page, _ = rendered()
    rep = section(page, "reproduce")
    fails = rep[rep.index("<h3>Failed runs"):]
    assert fails.count("β1 0.9, β2 0.9999, bias correction off") == 2
    assert fails.count("β1 0.9, β2 0.999, bias correction off") == 2
    assert fails.count("diverged at step 3") == 4 and "last finite train loss 7.5" in fails


def test_the_gap_column_says_it_is_a_train_loss_gap():
    page, _ = rendered()
    table = section(page, "table")
    assert "train gap to optimum</th>" in table and ">gap to optimum</th>" not in table
    assert "final train loss" in table and "It is the <i>train</i> split" in table


def test_compare_records_machine_time_load_and_splits_outside_the_id(tmp_path):
    """The meta written by compare holds what the protocol states; none of it enters
    the comparison id, so re-running the same command resumes the same comparison."""
    from optimlab.lab import cli
    from optimlab.lab.store import Store, comparison_id

    tests = str(Path(__file__).resolve().parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    args = ["compare", "--problem", "test_runner:noisy_quadratic", "--optimizers", "sgd",
            "--lrs", "0.01,0.1", "--seeds", "1", "--steps", "20", "--workers", "1",
            "--no-report", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    with Store(tmp_path / cli.STORE_NAME) as store:
        (cid,) = store.comparisons()
        meta = store.comparison_meta(cid)
    assert {"cpu", "logical_cpus", "usable_cpus"} <= set(meta["machine"])
    assert meta["wall_seconds"] >= 0 and "start" in meta["load"] and "end" in meta["load"]
    assert isinstance(meta["data_sizes"], dict) and meta["started"]
    assert comparison_id(meta) == cid
