"""The report: a pure function of the store.

``render(records, meta)`` turns one comparison's run records and meta into (html,
markdown, images). ``build_report(out_dir)`` reads ``out_dir/results.sqlite`` and writes,
for every comparison in it, ``report-<id>.html`` (self-contained) and ``summary-<id>.md``;
the latest comparison's also as ``report.html`` and ``summary.md``; and ``index.html``,
which lists them all. Finished runs are shared between comparisons; each comparison's
meta names its own (``runs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import context, html, index, markdown

__all__ = ["render", "build_report", "build_reports", "resolve_comparison",
           "comparison_records", "Built"]

STORE_NAME = "results.sqlite"


def render(records, meta, problems=None):
    """(html_str, markdown_str, {name: PNG bytes}) for one comparison's records and meta.

    problems: optional {name: Problem} overriding the problems package lookup
    (kind, description, optimum and 2-D surfaces come from there).
    """
    ctx = context.build(list(records), meta, problems)
    images = context.images(ctx)
    return html.page(ctx, images), markdown.summary(ctx), images


def comparison_records(records, meta) -> list:
    """The records of the comparison described by ``meta``: those listed in its ``runs``
    (an old-format meta without ``runs`` takes every record)."""
    if "runs" not in (meta or {}):
        return list(records)
    wanted = set(meta["runs"] or ())
    return [r for r in records if r.run_id in wanted]


def resolve_comparison(given: str, known, where="the store") -> str:
    """The comparison id ``given`` names: an exact id or a unique prefix of one.
    ValueError (one line, listing the known ids) otherwise."""
    known = list(known)
    if given in known:
        return given
    matches = [c for c in known if c.startswith(given)] if given else []
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(known) if known else "none"
    what = "is ambiguous" if len(matches) > 1 else "is not"
    raise ValueError(f"comparison {given!r} {what} in {where}; known comparisons: {listed}")


def report_name(comparison: str) -> str:
    return f"report-{comparison}.html"


def summary_name(comparison: str) -> str:
    return f"summary-{comparison}.md"


@dataclass
class Built:
    """What :func:`build_reports` wrote."""

    reports: dict = field(default_factory=dict)   # comparison id -> report-<id>.html
    latest: Path | None = None                    # report.html, when (re)written
    latest_id: str | None = None                  # the latest comparison's id
    index: Path | None = None                     # index.html
    comparisons: list = field(default_factory=list)   # every id in the store, oldest first
    unfinished: list = field(default_factory=list)    # ids built whose reports say incomplete


def build_reports(out_dir, problems=None, comparisons=None, missing=False) -> Built:
    """Write the reports of ``comparisons`` (ids or unique prefixes; None: every one)
    found in ``out_dir/results.sqlite``, ``report.html``/``summary.md`` when the latest
    comparison is among them, and ``index.html``. ``missing``: also build every other
    comparison whose ``report-<id>.html`` does not exist yet (e.g. the one comparison of a
    store written before comparisons had ids)."""
    from ..store import Store

    out = Path(out_dir)
    db = out / STORE_NAME
    if not db.exists():
        raise FileNotFoundError(f"no results store at {db}; run `optimlab compare` first")
    with Store(db, create=False) as store:
        ids, latest = store.comparisons(), store.latest()
        metas = {c: store.comparison_meta(c) for c in ids}
        records = store.records()
    if comparisons is None:
        targets = list(ids)
    else:
        targets = list(dict.fromkeys(resolve_comparison(c, ids, str(db)) for c in comparisons))
    if missing:
        targets += [c for c in ids if c not in targets and not (out / report_name(c)).exists()]
    built = Built(comparisons=list(ids), latest_id=latest)
    runs = {}
    for cid in ids:
        runs[cid] = comparison_records(records, metas[cid])
    for cid in targets:
        page, summary, _ = render(runs[cid], {**metas[cid], "comparison": cid}, problems)
        path = out / report_name(cid)
        path.write_text(page, encoding="utf-8")
        (out / summary_name(cid)).write_text(summary, encoding="utf-8")
        built.reports[cid] = path
        if context.progress(metas[cid], runs[cid]) is not None:
            built.unfinished.append(cid)
        if cid == latest:
            built.latest = out / "report.html"
            built.latest.write_text(page, encoding="utf-8")
            (out / "summary.md").write_text(summary, encoding="utf-8")
    if not ids:   # an empty store still gets an (empty) report
        page, summary, _ = render([], {}, problems)
        built.latest = out / "report.html"
        built.latest.write_text(page, encoding="utf-8")
        (out / "summary.md").write_text(summary, encoding="utf-8")
    entries = [index.Entry(cid, metas[cid], len(runs[cid]),
                           report_name(cid) if (out / report_name(cid)).exists() else None,
                           summary_name(cid) if (out / summary_name(cid)).exists() else None)
               for cid in ids]
    built.index = out / "index.html"
    built.index.write_text(index.page(entries, latest), encoding="utf-8")
    return built


def build_report(out_dir, problems=None, comparison=None) -> Path:
    """Rebuild every comparison's report (``comparison`` None; returns the path of
    ``report.html``, the latest) or one comparison's (returns ``report-<id>.html``)."""
    if comparison is None:
        built = build_reports(out_dir, problems)
        return built.latest or Path(out_dir) / "report.html"
    built = build_reports(out_dir, problems, [comparison])
    return next(iter(built.reports.values()))
