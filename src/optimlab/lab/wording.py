"""Words for people: counts with the right plural, and "did you mean" for mistyped names."""

from __future__ import annotations

import difflib


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 problem', '2 problems', '0 problems' (``nouns``: an irregular plural)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def canonical(name: str, choices, what: str, hint: str = "") -> str:
    """The entry of ``choices`` equal to ``name`` ignoring case and surrounding blanks;
    otherwise ValueError in one line: "unknown <what> 'x'; did you mean 'y'?" with the
    closest choices (difflib), or the valid names when none is close."""
    choices = list(choices)
    key = name.strip().lower()
    by_key = {c.lower(): c for c in choices}
    if key in by_key:
        return by_key[key]
    close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.6)
    if close:
        quoted = [repr(by_key[c]) for c in close]
        options = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        msg = f"unknown {what} {name!r}; did you mean {options}?"
    else:
        msg = f"unknown {what} {name!r}; valid names: {', '.join(choices)}"
    raise ValueError(msg + (f" ({hint})" if hint else ""))
