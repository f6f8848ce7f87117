"""The report: a pure function of the store.

``render(records, meta)`` turns run records into (html, markdown, images);
``build_report(out_dir)`` reads ``out_dir/results.sqlite`` and writes
``out_dir/report.html`` (self-contained) and ``out_dir/summary.md``.
"""

from __future__ import annotations

from pathlib import Path

from . import context, html, markdown

__all__ = ["render", "build_report"]


def render(records, meta, problems=None):
    """(html_str, markdown_str, {name: PNG bytes}) for the records and store meta.

    problems: optional {name: Problem} overriding the problems package lookup
    (kind, description, optimum and 2-D surfaces come from there).
    """
    ctx = context.build(list(records), meta, problems)
    images = context.images(ctx)
    return html.page(ctx, images), markdown.summary(ctx), images


def build_report(out_dir, problems=None) -> Path:
    """Write report.html and summary.md next to results.sqlite; returns the HTML path."""
    from ..store import Store

    out = Path(out_dir)
    db = out / "results.sqlite"
    if not db.exists():
        raise FileNotFoundError(f"no results store at {db}; run `optimlab compare` first")
    with Store(db) as store:
        records, meta = store.records(), store.meta()
    if meta.get("runs"):  # this comparison's runs, not older ones sharing the directory
        wanted = set(meta["runs"])
        records = [r for r in records if r.run_id in wanted]
    page, summary, _ = render(records, meta, problems)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    (out / "summary.md").write_text(summary, encoding="utf-8")
    return path
