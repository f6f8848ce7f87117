"""The report's verdicts: the answer section (HTML and Markdown) and the tie marks used
by the results table. Everything comes from ``ctx["verdicts"]`` / ``ctx["verdict_rows"]``
(lab/verdicts.py), the same rows ``compare --json`` prints, so the answer, the table and
the JSON agree by construction.
"""

from __future__ import annotations

import html as _html

from ..stats import METHOD
from ..verdicts import NO_VERDICT, TAG, by_failures, decided, mean_pm

esc = _html.escape

__all__ = ["TAG", "METHOD", "marked", "mark", "delta_td", "steps_text",
           "tied_class", "verdict_note", "answer_html", "answer_md", "protocol"]


def marked(v) -> bool:
    """Whether a problem's table rows get ★/≈: not without a verdict, nor when the best's
    seeds are too few for a test and no failure singled it out (``--seeds 1``)."""
    return v is not None and decided(v)


def mark(v, o) -> str:
    """' ★' for the best, ' ≈' for a member of its tied group, '' otherwise (HTML)."""
    if not marked(v):
        return ""
    if o == v.best:
        return ' <span class="tie" title="best (lowest seed-mean val loss)">★</span>'
    if o in v.tied:
        return (' <span class="tie" title="statistically indistinguishable from the best">'
                '≈</span>')
    return ""


def delta_parts(ctx, p, o):
    """(difference, '± CI' or '', '(adjusted p)' or '(no test: n seeds)') of the paired
    difference to the best, or None (the best itself, or nothing to pair)."""
    d = ctx.get("deltas", {}).get((p, o))
    if d is None or d[0].n == 0:
        return None
    ci, pv = d
    return (f"{ci.mean:+.3g}", f"± {ci.half_width:.2g}" if ci.n > 1 else "",
            f"({_p(pv) if pv is not None else no_test(ci.n)})")


def delta_td(ctx, p, o) -> str:
    """<td> with the paired difference to the best, '± CI' and the adjusted p."""
    parts = delta_parts(ctx, p, o)
    if parts is None:
        return "<td>—</td>"
    mean, h, ps = parts
    h = f' <span class="sd">{h}</span>' if h else ""
    return f'<td><span class="nw">{mean}</span>{h} <span class="sd">{ps}</span></td>'


def delta_text(ctx, p, o) -> str:
    """The same as plain text (Markdown), '—' where there is none."""
    parts = delta_parts(ctx, p, o)
    return "—" if parts is None else " ".join(x for x in parts if x)


def steps_text(a: dict, has_target: bool = True) -> str:
    """The steps-to-target cell of an ``analysis.aggregate`` row: mean ± 95% CI over the
    seeds that reached the target, then how many did, e.g. '376 ± 1e+02 (2/5 reached)';
    '— (0/5 reached)' when none did; '—' for a problem without a target."""
    from . import text as T

    n = a.get("seeds", 0) - a.get("diverged", 0)
    if not n or not has_target:
        return "—"
    return f"{T.stat(a.get('steps_to_target'), '{:.0f}')} ({a.get('reached', 0)}/{n} reached)"


def _p(p: float) -> str:
    return "p <0.001" if p < 0.001 else f"p {p:.2g}"


def no_test(n: int) -> str:
    """The Δ column's words for a comparison that had no test (``pvalues`` None)."""
    return f"no test: {n} seed{'' if n == 1 else 's'}"


def tied_class(v, o) -> str:
    return ' class="tied"' if marked(v) and o in v.tied else ""


def verdict_note(v) -> str:
    """The verdict after a problem's name in the results table (HTML)."""
    if v is None:
        return ""
    if v.status == NO_VERDICT:
        return '<span class="vd bad">✗ no verdict: every run failed</span>'
    if not marked(v):
        return '<span class="vd">not enough seeds to compare</span>'
    if by_failures(v):
        return (f'<span class="vd">★ {esc(v.best)} best: every other optimizer failed '
                '(no test)</span>')
    if v.significant:
        return f'<span class="vd">★ {esc(v.best)} significantly best</span>'
    out = (f'<span class="vd">★≈ tied group: {esc(", ".join(v.tied))}</span>'
           if len(v.tied) > 1 else "")
    if v.unresolved:
        out += (f'<span class="vd">not distinguishable from the best (wide spread): '
                f'{esc(", ".join(v.unresolved))}</span>')
    if v.untested:
        out += f'<span class="vd">no test: {esc(", ".join(v.untested))}</span>'
    return out


def _group_html(ctx, row) -> str:
    from .html import swatch

    if row["status"] == NO_VERDICT:
        return '<span class="bad">✗ no verdict</span> (every run failed)'
    names = " ".join(swatch(ctx, o) + ("" if i == len(row["named"]) - 1 else ",")
                     for i, o in enumerate(row["named"]))
    if row["tested"] or row["significant"]:
        names = f"<b>{names}</b>"
    return f"{names} — {esc(row['says'])}"


def answer_html(ctx) -> str:
    """The answer section: per-kind cards, then one verdict per problem."""
    from . import text as T
    from .html import bound_note, flag_html, section, swatch

    cards = []
    for kind, w in ctx["per_kind"].items():
        if w["optimizer"] is None and w.get("untested"):
            cards.append(f'<div class="card"><div class="k">{esc(kind)}</div>'
                         f'<div class="o">no test</div><div class="d">not enough seeds to '
                         f'compare on its {T.plural(len(w["problems"]), "problem")}</div></div>')
            continue
        if w["optimizer"] is None:
            cards.append(f'<div class="card"><div class="k">{esc(kind)}</div>'
                         f'<div class="o bad">✗ no verdict</div><div class="d">every run '
                         f'failed on its {T.plural(len(w["problems"]), "problem")}</div></div>')
            continue
        lrs = "; ".join(
            (f"{esc(o)}: " if len(w["leaders"]) > 1 else "")
            + ", ".join(f"{esc(p)} {T.num(lr)}{flag_html(ctx, ctx['selections'].get((p, o)))}"
                        for p, lr in w["leader_lrs"][o].items())
            for o in w["leaders"])
        also = " (shared)" if len(w["leaders"]) > 1 else ""
        head = swatch(ctx, w["optimizer"]) if len(w["leaders"]) == 1 else \
            '<span style="font-size:15px">' + ", ".join(
                swatch(ctx, o) for o in w["leaders"]) + "</span>"
        cards.append(f'<div class="card"><div class="k">{esc(kind)}</div>'
                     f'<div class="o">{head}</div>'
                     f'<div class="d">mean tie-aware rank {w["mean_rank"]:.2f}{also} over '
                     f'{T.plural(len(w["problems"]), "problem")}<br>lr {lrs}</div></div>')
    rows = []
    for r in ctx["verdict_rows"]:
        det = _deterministic(ctx, r)
        det = f'<br><span class="det">⚙ {esc(det)}</span>' if det else ""
        sel = ctx["selections"].get((r["problem"], r["best"]))
        rows.append(f'<tr><td>{esc(r["problem"])}</td><td class="l">{esc(r["kind"])}</td>'
                    f'<td class="l">{_group_html(ctx, r)}{det}</td>'
                    f'<td class="nw">{T.num(r["lr"])}{flag_html(ctx, sel)}</td>'
                    f'<td class="nw">{esc(mean_pm(r))}</td></tr>')
    table = ('<table><thead><tr><th>problem</th><th class="l">kind</th>'
             '<th class="l">verdict (best first)</th><th>lr of best</th>'
             '<th>val loss of best: mean ± 95% CI</th></tr></thead><tbody>'
             + "".join(rows) + "</tbody></table>")
    cap = ("Per problem: the group of optimizers statistically indistinguishable from the "
           "best (seed-mean validation loss at each optimizer's selected lr; "
           f"{esc(TAG)}), or one optimizer when it is significantly better than all "
           "others; <b>no verdict</b> when every run failed. The group is contiguous in "
           "seed-mean order: one not significantly worse than the best but behind one that "
           "is comes after it, as \"not distinguishable from the best (wide spread)\"; a "
           "comparison with fewer than 2 seeds on both sides is untested, never a tie. Per "
           "kind: the lowest mean tie-aware rank over the kind's tested problems (tied "
           "optimizers share a rank).")
    if ctx.get("progress"):
        cap = ("<b class='bad'>Provisional</b>: the comparison did not finish (see above), "
               "so these verdicts come from the runs stored so far. " + cap)
    title = "The answer (provisional)" if ctx.get("progress") else "The answer"
    return section("answer", title, cap,
                   f'<div class="cards">{"".join(cards)}</div><h3>Per problem</h3>{table}'
                   + bound_note(ctx))


def _deterministic(ctx, row) -> str | None:
    """'deterministic: the n seeds are one run repeated; ...' for a row whose problem's
    seeds replicate nothing (see protocol.deterministic)."""
    if row["problem"] not in ctx.get("deterministic", {}):
        return None
    return ("deterministic problem: the seeds are bit-identical repeats of one run, so "
            "± 0 is no measured spread and the verdict compares exact losses (p-values "
            "carry no seed-to-seed information)")


def answer_md(ctx, md) -> list:
    """The answer as Markdown lines; ``md`` escapes a table cell."""
    from . import text as T

    out = ["| kind | best optimizer (lowest mean tie-aware rank) | mean rank "
           "| lr (per optimizer, per problem) |", "|---|---|---:|---|"]
    for kind, w in ctx["per_kind"].items():
        if w["optimizer"] is None:
            why = ("no test (not enough seeds to compare)" if w.get("untested") else
                   "✗ no verdict (every run failed)")
            out.append(f"| {md(kind)} | {why} | — | — |")
            continue
        lrs = "; ".join(
            (f"{md(o)}: " if len(w["leaders"]) > 1 else "")
            + ", ".join(f"{md(p)} {T.num(lr)}{_flag_md(ctx, p, o)}"
                        for p, lr in w["leader_lrs"][o].items())
            for o in w["leaders"])
        lead = ", ".join(md(o) for o in w["leaders"])
        out.append(f"| {md(kind)} | {lead} | {w['mean_rank']:.2f} | {lrs} |")
    out += ["", f"Per problem ({md(TAG)}; best first):", "",
            "| problem | kind | verdict | lr of best | val loss of best (mean ± 95% CI) |",
            "|---|---|---|---:|---:|"]
    for r in ctx["verdict_rows"]:
        if r["status"] == NO_VERDICT:
            v = "✗ no verdict (every run failed)"
        else:
            names = md(", ".join(r["named"]))
            if r["tested"] or r["significant"]:
                names = f"**{names}**"
            v = f"{names} — {md(r['says'])}"
        det = _deterministic(ctx, r)
        v += f" (⚙ {md(det)})" if det else ""
        out.append(f"| {md(r['problem'])} | {md(r['kind'])} | {v} "
                   f"| {T.num(r['lr'])}{_flag_md(ctx, r['problem'], r['best'])} "
                   f"| {md(mean_pm(r))} |")
    note = T.bound_note(ctx)
    if note:
        out += ["", f"⚑ {md(note)}"]
    return out


def _flag_md(ctx, p, o) -> str:
    """' ⚑ (hard bound)' / ' (edge)' after a selected lr in Markdown."""
    from . import text as T
    flag = T.lr_flag(ctx, ctx["selections"].get((p, o)))
    return {"bound": " ⚑ (at the search's hard bound)", "edge": " (edge)"}.get(flag, "")


def protocol() -> list:
    """Protocol sentences on the statistics."""
    return [f"Statistics: {METHOD}. A problem's verdict names the group statistically "
            "indistinguishable from the best, or a single optimizer only when it is "
            "significantly better than every other; a problem on which every run failed "
            "has no verdict. The tied group is contiguous in seed-mean order (an "
            "optimizer joins it only if every one with a better mean did), so ranks never "
            "put an optimizer ahead of a better mean; one not significantly worse but "
            "outside it is named apart (wide spread). A comparison with fewer than 2 "
            "seeds trained on both sides is untested: no p-value, no tie, no shared rank. "
            "Ranks are tie-aware: equal seed means and the tied group share one "
            "(fractional) rank."]
