"""Report section "What the articles say, and what we found" (HTML and Markdown).

The verdicts come from ``optimlab.lab.claims.evaluate`` (computed once per report and kept
in the context under "claims"); this module only lays them out: a table (claim,
experiment, verdict, evidence) and, per claim, a forest plot of the paired differences.
"""

from __future__ import annotations

import base64
import html as _html
import math

from .. import claims as C
from . import text as T

esc = _html.escape

COLORS = {C.SUPPORTED: "#15803d", C.CONTRADICTED: "#b91c1c", C.INCONCLUSIVE: "#a16207",
          C.NOT_RUN: "#64748b"}
METHOD = ("Each verdict is computed from this comparison's runs, under the verdicts' rules: "
          "a loss below a problem's optimum floor counts as the floor (two runs that reached "
          "the optimum tie) and seed means equal to 5 significant digits tie. Two optimizers "
          "or settings are compared paired by seed (same initial weights and batch order) with "
          "a two-sided paired t-test at α = 0.05 (one-sided at 0.025 each way). Δ is the mean "
          "paired difference a − b with its 95% t-interval (lower is better, so Δ < 0 favours "
          "a; failures enter Δ as the worst finite value of the pair): where both trained on "
          "every seed, a comparison is decided exactly when that interval excludes 0 (claim 4: "
          "lies within or outside the margin; claim 9's Bonferroni-corrected interval names "
          "its level). Where one side failed and the other trained, the failures decide it "
          "(the failing side is worse, as in the verdicts) and the row says \"decided by "
          "failures\"; claim 7, whose pairs span learning rates, is decided by its interval "
          "and called mixed when the pairs disagree. Too few seeds, zero spread on two, and "
          "zero spread of steps to a target (counted at evaluation points, censored where a "
          "seed never reached it) are inconclusive. A claim tested on several problems is "
          "supported when more than half of them support it, contradicted when more than half "
          "contradict it, inconclusive otherwise. \"not run\": the comparison lacks the "
          "optimizers, problems or phases the test needs.")


def results(ctx) -> list:
    """The claims' verdicts for this report (computed once, cached in ``ctx``)."""
    if "claims" not in ctx:
        ctx["claims"] = C.evaluate(ctx["records"], ctx["meta"], ctx.get("info"))
    return ctx["claims"]


def rows(c) -> list:
    """[(unit, comparison, diff {mean, lo, hi, n} or None, reference mean, verdict, note)];
    the note names the failed runs of the comparisons they decided."""
    out = []
    for unit, comp, nums, ref, v, note in _raw_rows(c):
        # nums: a test's numbers (with "diff" and the failed keys), or a bare diff.
        diff = nums.get("diff") if isinstance(nums, dict) and "n" in nums and "mean" not in nums \
            else nums
        out.append((unit, comp, diff, ref, v, "; ".join(x for x in (note, _notes(nums)) if x)))
    return out


def _raw_rows(c) -> list:
    """``rows`` with each comparison's test numbers (or a bare diff) in place of the diff."""
    cid, out = c["id"], []
    for u in c["evidence"].get("units", []):
        p = u.get("problem", "")
        po = f"{p} / {u['optimizer']}" if "optimizer" in u else p
        v = u.get("verdict")
        if cid == 1:
            dl = ", ".join(f"{o} at {T.num(x['lr'])}: {T.num(x['val_loss'])}"
                           for o, x in u["default_lr"].items())
            out.append((p, f"{u['adaptive']} vs {u['non_adaptive']}, val loss", u,
                        u.get("mean_b"), v, f"default lr (seed 0): {dl or '—'}; "
                        f"{u['non_adaptive']} tuned: {T.num(u['non_adaptive_tuned_seed0'])}"))
        elif cid == 2:
            q, s = u["quality_numbers"], u["spread_numbers"]
            lab = f"sgd ({u['sgd_schedule']}) vs adam ({u['adam_schedule']})"
            out.append((p, f"{lab}, val loss", q, q.get("mean_b"), u["quality"], ""))
            out.append((p, f"{lab}, |seed − median|", s, s.get("mean_b"), u["spread"],
                        s.get("note", "")))
        elif cid == 3:
            out.append((p, f"{u['adaptive']} vs {u['non_adaptive']}, steps to train loss "
                        f"{T.num(u['target'])}", u, u.get("mean_b"), v, u["target_from"]))
        elif cid == 4:
            for pr in u["pairs"]:
                dd = pr["diff"]
                out.append((p, f"{pr['a']} vs {pr['b']}, val loss",
                            {"mean": dd["mean"], "lo": dd["lo95"], "hi": dd["hi95"],
                             "n": dd["n"]}, u["means"].get(pr["b"]),
                            "equivalent" if pr["equivalent"] else
                            "different" if pr["different"] else "unclear",
                            f"margin ±{T.num(u['margin'])}" + _floor_note(u.get("floor"))))
        elif cid == 5:
            out.append((p, f"nadam vs {u['against']}, val loss", u, u.get("mean_b"), v, ""))
        elif cid == 6:
            out.append((p, f"momentum vs sgd, steps to train loss {T.num(u['target'])}",
                        u["speed_numbers"],
                        u["speed_numbers"].get("mean_b"), u["speed"], ""))
            pr = u["path_ratio"]
            out.append((p, "momentum vs sgd, y-step reversals", u["oscillation_numbers"],
                        u["oscillation_numbers"].get("mean_b"), u["oscillation"],
                        f"path/displacement: momentum {T.num(pr['momentum'])}, "
                        f"sgd {T.num(pr['sgd'])}"))
        elif cid == 7:
            for b in u["by_beta2"]:
                out.append((p, f"β2 = {b['beta2']:g}: with vs without correction, early loss",
                            b, b.get("mean_b"), b["verdict"], _lower_note(b)))
        elif cid == 8:
            big = ("diverged" if u["largest_status"] != "ok"
                   else f"bounce {T.num(u['largest_bounce'])}")
            out.append((po, f"lr {T.num(u['largest_lr'])}: {big}; lr {T.num(u['smallest_lr'])}"
                        f": {T.num(u['smallest_score'])} vs best {T.num(u['selected_score'])}",
                        None, None, "holds" if u["holds"] else "fails", ""))
        elif cid == 9:
            out.append((po, f"{u['best_schedule']} vs constant, val loss", u,
                        u.get("mean_b"), v, ""))
        elif cid == 10:
            out.append((po, f"layer decay {u['layer_decay']:g} vs uniform, val loss", u,
                        u.get("mean_b"), v, ""))
    return out


def _notes(nums) -> str:
    """What decided a comparison besides its interval: failures (and whether they
    decided it), ties under the verdicts' rules, censored steps, zero spread on a
    quantised measure, mixed evidence."""
    nums = nums if isinstance(nums, dict) else {}
    out = []
    fa, fb = nums.get("failed_a") or [], nums.get("failed_b") or []
    fails = "; ".join(f"{who} failed on {len(f)} ({', '.join(map(str, f[:4]))}"
                      f"{', …' if len(f) > 4 else ''})" for who, f in (("a", fa), ("b", fb)) if f)
    if fails:
        out.append(f"decided by failures: {fails}" if nums.get("decided_by") == "failures"
                   else f"failures counted as the pair's worst value: {fails}")
    if nums.get("tie") == "optimum":
        out.append("tie: both reached the optimum (below the floor)")
    elif nums.get("tie") == "resolution":
        out.append("tie: seed means equal to 5 significant digits")
    cen = nums.get("censored")
    if cen:
        out.append(f"seeds that never reached the target (censored at budget + one "
                   f"evaluation): a {len(cen['a'])}/{cen['n_a']}, b {len(cen['b'])}/{cen['n_b']}")
    if nums.get("zero_spread"):
        out.append("equal differences of a quantised measure: no test")
    if nums.get("mixed"):
        out.append("mixed: the pairs disagree with the interval's side")
    if nums.get("favoured"):
        out.append(f"b better, but the lr was tuned for the {nums['favoured']}: "
                   "this protocol cannot show the claim wrong")
    return "; ".join(out)


def _lower_note(b) -> str:
    """Claim 7's per-pair count, e.g. 'correction lower on 4 of 9 (lr, seed) pairs (1
    where the run without it failed), higher on 5'."""
    lw = b.get("lower")
    if not lw:
        return ""
    fw = f" ({lw['failed_without']} where the run without it failed)" \
        if lw["failed_without"] else ""
    fc = f" ({lw['failed_with']} where the run with it failed)" if lw["failed_with"] else ""
    return (f"correction lower on {lw['with']} of {lw['pairs']} (lr, seed) pairs{fw}, "
            f"higher on {lw['without']}{fc}")


def _floor_note(floor) -> str:
    return f", losses below the optimum floor {T.num(floor)} count as the floor" \
        if floor is not None and math.isfinite(floor) else ""


def _diff_text(d) -> str:
    """'Δ m [lo, hi], n=5', the interval's level named when it is not 95%."""
    if not d:
        return ""
    level = d.get("level", 0.95)
    named = "" if abs(level - 0.95) < 1e-9 else f" ({level:.1%} CI)"
    return f"Δ {T.num(d['mean'])} [{T.num(d['lo'])}, {T.num(d['hi'])}]{named}, n={d['n']}"


def summary_text(c) -> str:
    """One line of evidence for a claim (Markdown and tooltips)."""
    ev = c["evidence"]
    if c["verdict"] == C.NOT_RUN:
        return ev.get("reason", "")
    parts = [f"{u}: {comp} {_diff_text(d)} → {v}".replace("  ", " ")
             + (f" ({note})" if note else "") for u, comp, d, _, v, note in rows(c)]
    if c["id"] == 8 and ev.get("fraction"):
        f = ev["fraction"]
        parts.insert(0, f"holds on {_fraction(f)}")
    return "; ".join(parts)


def _fraction(f, what: str = "pairs") -> str:
    """'2 of 3 pairs (67%; exact binomial 95% CI 9%..99%)': claim 8's fraction."""
    k = f.get("k", round(f["mean"] * f["n"]))
    return (f"{k} of {f['n']} {what} ({f['mean']:.0%}; exact binomial 95% CI "
            f"{f['lo']:.0%}..{f['hi']:.0%})")


def forest(c) -> bytes | None:
    """Relative paired differences (a - b) / |mean b| with 95% CIs, one row per
    comparison; None when the claim has none."""
    pts = []
    for unit, comp, d, ref, v, _ in rows(c):
        if d and ref and math.isfinite(ref) and ref != 0 and \
                all(math.isfinite(d[k]) for k in ("mean", "lo", "hi")):
            pts.append((f"{unit}: {comp}", [100 * d[k] / abs(ref) for k in ("mean", "lo", "hi")],
                        v))
    if not pts:
        return None
    from .plots import _png, plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(pts) + 0.9))
    for i, (label, (m, lo, hi), v) in enumerate(pts):
        col = COLORS.get(v, "#1e293b")
        ax.errorbar([m], [i], xerr=[[max(m - lo, 0)], [max(hi - m, 0)]], fmt="o", color=col,
                    capsize=3)
    ax.axvline(0, color="#64748b", lw=1)
    # Store strings are plain text: a "$" must not start matplotlib mathtext.
    ax.set_yticks(range(len(pts)), [p[0].replace("$", r"\$") for p in pts], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference (a − b) in % of b's mean; < 0 favours a", fontsize=8)
    ax.grid(alpha=0.25)
    return _png(fig)


def _badge(v) -> str:
    return (f'<span style="color:#fff;background:{COLORS.get(v, "#64748b")};border-radius:4px;'
            f'padding:1px 7px;font-weight:600;white-space:nowrap">{esc(v)}</span>')


def html_section(ctx) -> str:
    """The HTML section (inline PNGs, every store string escaped)."""
    body = []
    for c in results(ctx):
        ev = c["evidence"]
        if c["verdict"] == C.NOT_RUN:
            evidence = f'<span style="color:var(--mute)">{esc(ev.get("reason", ""))}</span>'
        else:
            lines = "".join(
                f"<tr><td class='l'>{esc(u)}</td><td class='l'>{esc(comp)}</td>"
                f"<td>{esc(_diff_text(d))}</td><td class='l'>{esc(str(v))}</td>"
                f"<td class='l'>{esc(note)}</td></tr>" for u, comp, d, _, v, note in rows(c))
            frac = ""
            if c["id"] == 8 and ev.get("fraction"):
                f = ev["fraction"]
                frac = f"<p>Holds on {esc(_fraction(f, '(problem, optimizer) pairs'))}.</p>"
            png = forest(c)
            fig = (f'<img alt="claim {c["id"]} evidence" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode("ascii")}">' if png else "")
            tally = {}
            for *_, v, _ in rows(c):
                tally[v] = tally.get(v, 0) + 1
            counts = ", ".join(f"{n} {v}" for v, n in sorted(tally.items()))
            evidence = (f"<details><summary>{len(rows(c))} comparison(s): {esc(counts)}"
                        f"</summary>{frac}"
                        "<table><thead><tr><th class='l'>unit</th><th class='l'>comparison "
                        "(a vs b)</th><th>Δ [95% CI]</th><th class='l'>result</th>"
                        f"<th class='l'>note</th></tr></thead><tbody>{lines}</tbody></table>"
                        f"{fig}</details>")
        body.append(f"<tr><td>{c['id']}</td><td class='l'>{esc(c['claim'])}</td>"
                    f"<td class='l' style='font-size:12px'>{esc(ev.get('experiment', ''))}</td>"
                    f"<td class='l'>{_badge(c['verdict'])}</td><td class='l'>{evidence}</td>"
                    "</tr>")
    table = ("<table><thead><tr><th>#</th><th class='l'>claim</th><th class='l'>experiment"
             "</th><th class='l'>verdict</th><th class='l'>evidence</th></tr></thead><tbody>"
             + "".join(body) + "</tbody></table>")
    return (f'<section id="claims"><h2>What the articles say, and what we found</h2>'
            f'<p class="cap">{esc(METHOD)}</p>{table}</section>')


def markdown_section(ctx) -> list:
    """The Markdown lines of the section."""
    from .markdown import md

    out = ["", "## What the articles say, and what we found", "", md(METHOD), "",
           "| # | claim | experiment | verdict | evidence |", "|---:|---|---|---|---|"]
    for c in results(ctx):
        out.append(f"| {c['id']} | {md(c['claim'])} | {md(c['evidence'].get('experiment', ''))}"
                   f" | **{c['verdict']}** | {md(summary_text(c))} |")
    return out
