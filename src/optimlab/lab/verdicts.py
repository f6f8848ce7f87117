"""Per-problem verdicts from run records: who is best, who is tied with it, or no verdict.

The one place where the records of the selected runs become statistics; the report
(answer, results table, ranks, heatmap), ``compare --json`` ``verdicts`` and the
terminal table all read from here, so they cannot disagree.

Runs come only from ``analysis.select_best`` / ``analysis.best_runs`` (the selected lr
of each (problem, optimizer), all its seeds); a seed's score is ``analysis.score``
(final validation loss, inf for a failed run). The statistics are in
:mod:`optimlab.lab.stats` (Student-t intervals, step-down max-t tests vs the best).
"""

from __future__ import annotations

import errno
import math
import sys
from collections import defaultdict

from . import analysis as A
from . import stats as S
from .ranks import tie_ranks

ALPHA = 0.05
LEVEL = 0.95
#: Short method tag for answers and tables.
TAG = f"paired max-t, step-down, {int(LEVEL * 100)}%"
NO_VERDICT = "no verdict"


def scores(records, selections=None) -> dict:
    """{problem: {optimizer: {seed: val score}}} of the selected runs (inf = failed)."""
    selections = A.select_best(records) if selections is None else selections
    out = defaultdict(dict)
    for (p, o), rs in A.best_runs(records, selections).items():
        out[p][o] = {r.spec.seed: A.score(r) for r in rs}
    for (p, o) in selections:  # a pair with no stored run still shows up (as failed)
        out[p].setdefault(o, {})
    return dict(out)


def floors(records) -> dict:
    """{problem: stats.optimum_floor}: the known optimum and the median starting
    validation loss of the problem's runs (seeds share initial weights across
    optimizers, so every optimizer gets the same floor). One computation for the
    verdicts, the claims, the lr width and the figures: :func:`analysis.floors`."""
    return A.floors(records)


def verdicts(records, selections=None, alpha: float = ALPHA) -> dict:
    """{problem: stats.Verdict} (see stats.compare_to_best for the test; losses that
    reached a known optimum tie, see :func:`floors`)."""
    fl = floors(records)
    return {p: S.compare_to_best(sc, alpha=alpha, level=LEVEL, floor=fl.get(p, -math.inf))
            for p, sc in sorted(scores(records, selections).items())}


def deltas(vs: dict, sc: dict) -> dict:
    """{(problem, optimizer): (stats.CI of the paired difference optimizer - best on the
    seeds where both trained, adjusted p vs best)} for every non-best optimizer of
    a problem with a verdict. The per-optimizer intervals can overlap while this one
    excludes 0: seeds share initial weights and batches, and the pairing removes that
    shared part of the spread."""
    out = {}
    for p, v in vs.items():
        if v.status == NO_VERDICT:
            continue
        for o in v.order[1:]:
            d = S.paired(sc[p][o], sc[p][v.best])
            out[(p, o)] = (S.mean_ci(d, LEVEL), v.pvalues.get(o))
    return out


def rank_table(vs: dict) -> dict:
    """{problem: {optimizer: tie-aware rank}}: seed means equal to stats.RTOL share a
    rank (a seed with a failure makes the mean inf), and the tied group (contiguous in
    mean order) shares one rank (fractional ranking, ranks.tie_ranks). Problems without
    a decided verdict (:func:`decided`) are left out: nothing tested orders them."""
    return {p: tie_ranks(v.means, groups=[v.tied], rtol=S.RTOL)
            for p, v in vs.items() if decided(v)}


def per_kind(ranks: dict, kinds: dict, vs: dict, selections: dict) -> dict:
    """{kind: {"optimizer", "leaders", "mean_rank", "problems", "lrs", "leader_lrs",
    "failed"}}; lrs: {problem: lr} of optimizer, leader_lrs: the same per leader.

    Lowest mean tie-aware rank over the kind's ranked problems (:func:`rank_table`);
    ``leaders`` lists every optimizer sharing that mean rank (optimizer = the first
    alphabetically). A kind with no ranked problem gets optimizer None, and failed True
    when every run failed, else untested True (too few seeds for any test).
    """
    by_kind = defaultdict(list)
    for p in vs:
        by_kind[kinds.get(p, "unknown")].append(p)
    out = {}
    for kind, ps in sorted(by_kind.items()):
        acc = defaultdict(list)
        for p in ps:
            for o, r in ranks.get(p, {}).items():
                acc[o].append(r)
        mr = {o: sum(v) / len(v) for o, v in acc.items()}
        if not mr:
            dead = all(vs[p].status == NO_VERDICT for p in ps)
            out[kind] = {"optimizer": None, "leaders": [], "mean_rank": None,
                         "problems": sorted(ps), "lrs": {}, "failed": dead,
                         "untested": not dead}
            continue
        ps = [p for p in ps if p in ranks]
        low = min(mr.values())
        leaders = sorted(o for o, r in mr.items() if math.isclose(r, low, abs_tol=1e-9))
        w = leaders[0]
        lrs = {o: {p: selections[(p, o)].lr for p in sorted(ps) if (p, o) in selections}
               for o in leaders}
        out[kind] = {"optimizer": w, "leaders": leaders, "mean_rank": low,
                     "problems": sorted(ps), "lrs": lrs[w], "leader_lrs": lrs,
                     "failed": False}
    return out


#: Fewest trained seeds for a paired test (a spread needs two values).
MIN_SEEDS = 2


def testable(v) -> bool:
    """Whether the best has MIN_SEEDS trained seeds, so that a test could run. Without
    (``--seeds 1``), only failures order optimizers: the lowest single loss is not called
    the best, and no interval is shown."""
    return v.status != NO_VERDICT and v.cis[v.best].n >= MIN_SEEDS


def decided(v) -> bool:
    """Whether the verdict orders the optimizers: a test could run (:func:`testable`),
    or the failure rules singled out the best."""
    return v.status != NO_VERDICT and (testable(v) or v.significant)


def by_failures(v) -> bool:
    """Whether the best is singled out by the others' failures alone (no test ran)."""
    return v.significant and all(v.basis.get(o) == "failure" for o in v.order[1:])


def phrase(v) -> tuple:
    """(names, words, caveats) of a verdict: the optimizers it names (best first), what
    it says of them, and what it says of the rest that are not significantly worse
    ('' when nothing); :func:`sentence` joins them, the report renders them."""
    if v.status == NO_VERDICT:
        return [], "no verdict — every run failed", ""
    if by_failures(v):
        seeds = "" if testable(v) else "1 trained seed, "
        return [v.best], f"best: every other optimizer failed ({seeds}no test)", ""
    if len(v.order) > 1 and not testable(v):
        return ([o for o in v.order if o in v.tied or o in v.untested or o in v.unresolved],
                f"not enough seeds to compare (1 trained seed; a test needs {MIN_SEEDS})", "")
    caveats = []
    if v.unresolved:
        caveats.append(f"not distinguishable from the best (wide spread): "
                       f"{', '.join(v.unresolved)}")
    if v.untested:
        caveats.append(f"no test (fewer than {MIN_SEEDS} seeds trained on both sides): "
                       f"{', '.join(v.untested)}")
    caveats = "; ".join(caveats)
    if v.significant:
        return [v.best], f"significantly best ({TAG})", ""
    if len(v.order) == 1:
        return [v.best], "the only optimizer", ""
    if len(v.tied) > 1:
        return list(v.tied), f"indistinguishable ({TAG})", caveats
    return [v.best], f"lowest mean ({TAG})", caveats


def says(v) -> str:
    """What the verdict says of the optimizers it names (:func:`phrase`), caveats
    included."""
    _, words, caveats = phrase(v)
    return f"{words}; {caveats}" if caveats else words


def sentence(v) -> str:
    """The verdict in words, e.g. 'adam, rmsprop — indistinguishable (paired max-t, step-down, 95%)'."""
    names = phrase(v)[0]
    return f"{', '.join(names)} — {says(v)}" if names else says(v)


def rows(vs: dict, selections: dict, kinds: dict) -> list:
    """The ``--json`` ``verdicts``: one dict per problem.

    problem, kind, status ("verdict" | "no verdict"), best (None without a verdict),
    tied (the indistinguishable group incl. best, [] without a verdict), significant,
    lr (best's selected lr), mean (best's mean over the seeds that trained), ci
    ([lo, hi], 95% t-interval; None with < 2 trained seeds), n (trained seeds),
    failed (failed seeds of best), tested (:func:`testable`), unresolved and untested
    (see stats.Verdict), by_failures (:func:`by_failures`), named and says (the
    sentence's names and words, :func:`phrase`), text (the sentence).
    """
    out = []
    for p, v in vs.items():
        b = v.best
        ci = v.cis.get(b) if b else None
        ok = ci is not None and ci.n > 0
        out.append({"problem": p, "kind": kinds.get(p, "unknown"), "status": v.status,
                    "best": b, "tied": list(v.tied), "significant": bool(v.significant),
                    "lr": selections[(p, b)].lr if b and (p, b) in selections else None,
                    "mean": ci.mean if ok else None,
                    "ci": [ci.lo, ci.hi] if ok and ci.n >= MIN_SEEDS else None,
                    "n": ci.n if ci else 0, "failed": v.failed.get(b, 0) if b else None,
                    "tested": testable(v), "unresolved": list(v.unresolved),
                    "untested": list(v.untested), "by_failures": by_failures(v),
                    "named": phrase(v)[0], "says": says(v), "text": sentence(v)})
    return out


def _fmt(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def mean_pm(row) -> str:
    """'mean ± half-width (n=5)' of a verdict row; 'mean (n=1, no CI)' with one trained
    seed; '—' when nothing trained."""
    if row["mean"] is None:
        return "—"
    fail = f", {row['failed']} failed" if row.get("failed") else ""
    if row["ci"] is None:
        return f"{_fmt(row['mean'])} (n={row['n']}{fail}, no CI)"
    lo, hi = row["ci"]
    return f"{_fmt(row['mean'])} ± {0.5 * (hi - lo):.2g} (n={row['n']}{fail})"


def _broken_pipe() -> None:
    raise BrokenPipeError(errno.EPIPE, "the reader of the verdict table is gone")


def print_table(vrows: list, report=None, file=None) -> None:
    """The verdict table on the terminal (rich), then the report path."""
    from rich.console import Console
    from rich.table import Table

    file = file or sys.stderr
    tty = hasattr(file, "isatty") and file.isatty()
    # Piped or captured output gets one line per problem instead of rich's 80 columns.
    console = Console(file=file, highlight=False, soft_wrap=False,
                      width=None if tty else 200)
    console.on_broken_pipe = _broken_pipe   # rich would exit(1); the CLI exits 141, quietly
    t = Table(title=f"Verdicts (validation loss, mean ± 95% CI over seeds; {TAG})",
              title_justify="left")
    for col, kw in (("problem", {}), ("kind", {}), ("verdict", {"overflow": "fold"}),
                    ("lr", {"justify": "right"}), ("mean ± CI", {"justify": "right"})):
        t.add_column(col, **kw)
    for r in vrows:
        if r["status"] == NO_VERDICT:
            verdict = "[bold red]✗ no verdict[/] (every run failed)"
        else:
            style = "bold green" if r["significant"] and not r["by_failures"] else "bold"
            names = ", ".join(_esc(o) for o in r["named"])
            verdict = f"[{style}]{names}[/] — {_esc(r['says'].replace(f' ({TAG})', ''))}"
        t.add_row(_esc(r["problem"]), _esc(r["kind"]), verdict,
                  _fmt(r["lr"]), mean_pm(r))
    console.print(t)
    if report is not None:
        console.print(f"report: {_esc(str(report))}")


def _esc(s) -> str:
    from rich.markup import escape
    return escape(str(s))
