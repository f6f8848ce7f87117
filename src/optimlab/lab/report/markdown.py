"""summary.md: the answer, the best-lr table, mean ranks, protocol and command."""

from __future__ import annotations

import re

from . import claims
from . import text as T
from . import viewer
from . import protocol as P
from .verdicts import _flag_md, answer_md, delta_text, marked, steps_text


#: Characters that Markdown could read as markup: backslash-escaped (CommonMark shows
#: the character itself), never HTML-escaped, so "Dolan & Moré" stays as written. An
#: underscore inside a word ("bias_correction") is not emphasis and stays as it is.
_MARKUP = re.compile(r"([\\`*\[\]<>|]|(?<!\w)_|_(?!\w))")
#: "&" only when it would start a character reference such as "&lt;" or "&#60;".
_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")


def md(s) -> str:
    """Escape a store string for one line of Markdown, e.g. a table cell (one line, no
    raw HTML, no pipes, no character references)."""
    text = _MARKUP.sub(r"\\\1", " ".join(str(s).split()))
    return _ENTITY.sub(r"\\&", text)


def _fence(s: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}\n{s}\n{f}"


def _table_order(ctx):
    """Selections by problem, each problem's rows in its verdict order (best first)."""
    out = []
    for p in sorted({p for p, _ in ctx["selections"]}):
        v = ctx["verdicts"].get(p)
        pos = {o: i for i, o in enumerate(v.order)} if v else {}
        keys = sorted((o for pp, o in ctx["selections"] if pp == p),
                      key=lambda o: (pos.get(o, len(pos)), o))
        out += [((p, o), ctx["selections"][(p, o)]) for o in keys]
    return out


def _mark(ctx, p, o) -> str:
    v = ctx["verdicts"].get(p)
    if v is None:
        return ""
    if v.best is None:
        return " ✗"
    if not marked(v):   # --seeds 1: no test, no best
        return ""
    return " ★" if o == v.best else (" ≈" if o in v.tied else "")


def summary(ctx) -> str:
    """The Markdown summary as one string."""
    cid = ctx["meta"].get("comparison")
    where = f" · comparison `{cid}` ([all comparisons](index.html))" if cid else ""
    out = ["# optimlab report", "", md(T.counts(ctx)) + where, ""]
    warning = T.incomplete(ctx)
    if warning:
        out += [f"> **⚠ Incomplete:** {md(warning)}", "",
                "## Answer (provisional: from the runs stored so far)", ""]
    else:
        out += ["## Answer", ""]
    out += answer_md(ctx, md)
    out += ["", "## Best learning rates and final metrics", "",
            "Mean ± 95% CI half-width over seeds; ★ best, ≈ indistinguishable from it, "
            "✗ no verdict (every run failed).", "",
            "| problem | optimizer | best lr | val loss | Δ vs best (p) | test loss "
            "| steps to target | seeds (failed) | lr width (dec.) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (p, o), s in _table_order(ctx):
        a = ctx["aggregate"].get((p, o), {})
        sens = ctx["sensitivity"].get((p, o))
        edge = _flag_md(ctx, p, o)
        out.append(f"| {md(p)} | {md(o)}{_mark(ctx, p, o)} | {T.num(s.lr)}{edge} "
                   f"| {T.stat(a.get('val_loss'))} "
                   f"| {md(delta_text(ctx, p, o))} "
                   f"| {T.stat(a.get('test_loss'))} "
                   f"| {md(steps_text(a, ctx['info'][p].get('target') is not None))} "
                   f"| {a.get('seeds', 0)} ({a.get('diverged', 0)}) "
                   f"| {'—' if sens is None else f'{sens.width:.2f}'} |")
    notes = [P.targets(ctx)] + [f"⚙ {p} is {P.deterministic_note(ctx, p)}"
                                for p in ctx["problems"] if P.deterministic_note(ctx, p)]
    out += [""] + [md(n) for n in notes if n]
    out += ["", "## Mean rank (1 = best seed-mean val loss; tie-aware)", "",
            "| optimizer | mean rank |",
            "|---|---:|"]
    for o, r in sorted(ctx["mean_ranks"].items(), key=lambda t: t[1]):
        out.append(f"| {md(o)} | {r:.2f} |")
    out += viewer.markdown(ctx)  # where the 2-D trajectories are shown
    out += claims.markdown_section(ctx)
    out += ["", "## Protocol", ""] + [f"- {md(s)}" for s in T.protocol(ctx)]
    out += ["", "## Reproduce", "", _fence(T.command(ctx["meta"])), ""]
    vers = ctx["meta"].get("versions") or next(
        (r.versions for r in ctx["records"] if r.versions), {})
    if vers:
        out += ["Versions: " + ", ".join(f"{md(k)} {md(v)}" for k, v in sorted(vers.items())),
                ""]
    return "\n".join(out)
