"""One shared writer for BENCHMARKS.md: each benchmark owns a section between two markers
and replaces only that section, so the benchmarks can be rerun in any order."""

from __future__ import annotations

import os


def replace_section(path: str, begin: str, end: str, body: str) -> None:
    """Write ``body`` (which starts with ``begin`` and ends with ``end``) into ``path`` in
    place of the old section between those markers, or append it if there is none."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_table(path: str, begin: str, end: str, title: str, intro: str, header: list,
                rows: list) -> None:
    """A section of one table: ``## title``, the ``intro`` paragraph (machine, run, command,
    what the columns mean), then the table of ``header`` and ``rows`` (Markdown lines)."""
    lines = [begin, f"## {title}", "", intro, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header), *rows, "", end]
    replace_section(path, begin, end, "\n".join(lines))
    print("wrote", path)
