"""summary.md: the answer, the best-lr table, mean ranks, protocol and command."""

from __future__ import annotations

import html as _html
import re

from . import claims
from . import text as T


def md(s) -> str:
    """Escape a store string for a Markdown table cell (no raw HTML, no pipes)."""
    return _html.escape(" ".join(str(s).split()), quote=False).replace("|", "\\|")


def _fence(s: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}\n{s}\n{f}"


def summary(ctx) -> str:
    """The Markdown summary as one string."""
    out = ["# optimlab report", "",
           f"{len(ctx['records'])} runs · {len(ctx['problems'])} problems · "
           f"{len(ctx['optimizers'])} optimizers", "", "## Answer", "",
           "| kind | best optimizer | mean rank | lr per problem |", "|---|---|---:|---|"]
    for kind, w in ctx["per_kind"].items():
        lrs = ", ".join(f"{md(p)}: {T.num(lr)}" for p, lr in w["lrs"].items())
        out.append(f"| {md(kind)} | {md(w['optimizer'])} | {w['mean_rank']:.2f} | {lrs} |")
    out += ["", "## Best learning rates and final metrics", "",
            "| problem | optimizer | best lr | val loss | test loss | steps to target "
            "| seeds (failed) | lr width (dec.) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (p, o), s in sorted(ctx["selections"].items()):
        a = ctx["aggregate"].get((p, o), {})
        sens = ctx["sensitivity"].get((p, o))
        edge = " (edge)" if s.on_edge else ""
        out.append(f"| {md(p)} | {md(o)} | {T.num(s.lr)}{edge} | {T.stat(a.get('val_loss'))} "
                   f"| {T.stat(a.get('test_loss'))} "
                   f"| {T.stat(a.get('steps_to_target'), '{:.0f}')} "
                   f"| {a.get('seeds', 0)} ({a.get('diverged', 0)}) "
                   f"| {'—' if sens is None else f'{sens.width:.2f}'} |")
    out += ["", "## Mean rank (1 = best val loss)", "", "| optimizer | mean rank |",
            "|---|---:|"]
    for o, r in sorted(ctx["mean_ranks"].items(), key=lambda t: t[1]):
        out.append(f"| {md(o)} | {r:.2f} |")
    out += claims.markdown_section(ctx)
    out += ["", "## Protocol", ""] + [f"- {md(s)}" for s in T.protocol(ctx)]
    out += ["", "## Reproduce", "", _fence(T.command(ctx["meta"])), ""]
    vers = ctx["meta"].get("versions") or next(
        (r.versions for r in ctx["records"] if r.versions), {})
    if vers:
        out += ["Versions: " + ", ".join(f"{md(k)} {md(v)}" for k, v in sorted(vers.items())),
                ""]
    return "\n".join(out)
