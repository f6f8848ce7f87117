"""The ``optimlab`` command line's arguments: the parser of every command and the checked
argument types (a bad value is one line, ``optimlab: error: ...``, never a traceback)."""

from __future__ import annotations

import argparse
import math
import re

import optimlab

from .executor import default_workers

PROG = "optimlab"


class UsageError(Exception):
    """A command-line error, reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No option looks like a number, so "-1e-3" (or "-1,2") is a value, not an
        # unknown option: --lrs -1e-3 then says why the lr is bad.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message):  # argparse would print the usage block and exit
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------- arguments

#: Largest values of the integer options: far past any sensible comparison, and small
#: enough that a typo (--seeds 99999999999999999999) is refused at once instead of
#: planning runs until memory runs out.
MAX_SEEDS, MAX_STEPS, MAX_WORKERS, MAX_RETRIES = 10_000, 100_000_000, 4096, 100


def _int_at_least(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {text}")
        return value
    return parse


def _positive(text: str, what: str = "must be positive") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isinf(value) and "inf" not in text.lower():
        raise argparse.ArgumentTypeError(f"{text!r} overflows to inf (the largest float is "
                                         f"about 1.8e308)")
    mantissa = text.strip().lower().split("e")[0]
    if value == 0 and not mantissa.startswith("-") and re.search(r"[1-9]", mantissa):
        raise argparse.ArgumentTypeError(f"{text!r} underflows to 0 (the smallest positive "
                                         f"float is about 5e-324)")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
    return value


def _items(text: str, what: str) -> list:
    """The comma-separated items of ``text``; none is an error that names ``what``."""
    items = [n.strip() for n in text.split(",") if n.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"no {what} in {text!r}")
    return items


def _names(text: str) -> list:
    return _items(text, "names")


def _lrs(text: str) -> list:
    """The learning rates in ``text``, each once (0.01,0.010,1e-2 is one lr)."""
    lrs = [_positive(item, "learning rates must be positive")
           for item in _items(text, "learning rates")]
    return list(dict.fromkeys(lrs))


def parser() -> argparse.ArgumentParser:
    """The parser of every ``optimlab`` command; bad input raises :class:`UsageError`."""
    top = _Parser(prog=PROG, description="Compare first-order optimizers fairly.")
    top.add_argument("--version", action="version", version=f"optimlab {optimlab.__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compare", help="search lrs, rerun the best with more seeds, pick "
                       "on validation",
                       description="Every optimizer gets the same lr search (a shared log "
                                   "grid 1e-4..1, extended past an edge within 1e-6..10, "
                                   "refined to 4 points per decade around the best), the "
                                   "same initial weights and batch order; the best 3 lrs "
                                   "are rerun with a second seed, those within noise of "
                                   "the leader with all seeds, and the lr with the lowest "
                                   "seed-mean validation loss is selected. "
                                   "Names are case-insensitive. Each comparison in --out gets "
                                   "its own report; index.html lists them.")
    c.add_argument("--problems", type=_names,
                   help="comma-separated problem names (see 'optimlab problems')")
    c.add_argument("--problem", action="append", default=[], metavar="PKG.MODULE:FACTORY",
                   help="a custom problem factory (repeatable)")
    c.add_argument("--suite", choices=("default", "full"),
                   help="problem suite when no problem is named with --problems "
                        "(default: default); a --problem factory is added to it")
    c.add_argument("--optimizers", type=_names, metavar="NAMES",
                   help="comma-separated optimizer names and named sets, mixed freely: "
                        + "; ".join(f"{k} ({', '.join(v) if k != 'all' else 'every one'})"
                                    for k, v in optimlab.sets().items())
                        + " (default: classic, the articles' eleven)")
    c.add_argument("--lrs", type=_lrs, help="comma-separated learning rates: a fixed grid, "
                   "no extension or refinement (default: the adaptive search from 1e-4 .. 1, "
                   "one per decade; the report lists every lr tried)")
    c.add_argument("--seeds", type=_int_at_least(1, MAX_SEEDS), default=5,
                   help="seeds in total for the leading candidate lrs; the selected lr "
                        "always has them all (default: %(default)s)")
    c.add_argument("--steps", type=_int_at_least(1, MAX_STEPS),
                   help="steps per run (default: each problem's budget)")
    c.add_argument("--schedule", default="constant", help="lr schedule (default: constant)")
    c.add_argument("--workers", type=_int_at_least(1, MAX_WORKERS),
                   default=default_workers(),
                   help=f"parallel worker processes, or Ray tasks in flight (default: "
                        f"{default_workers()})")
    c.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where runs execute: local worker processes (default) or Ray tasks "
                        "(pip install \"optimlab[ray]\"); the store stays in --out either way")
    c.add_argument("--ray-address", metavar="ADDRESS",
                   help="with --executor ray: join this cluster (auto, HOST:PORT of the head "
                        "node, or ray://HOST:PORT) instead of starting a local Ray instance")
    c.add_argument("--ray-cpus-per-run", type=_positive, metavar="N",
                   help="with --executor ray: CPUs each run's task asks for (default: 1)")
    c.add_argument("--ray-retries", type=_int_at_least(0, MAX_RETRIES), metavar="N",
                   help="with --executor ray: retries of a run whose worker died before it "
                        "is recorded as failed (default: 3)")
    c.add_argument("--out", default="optimlab-results", help="output directory "
                   "(default: ./optimlab-results)")
    c.add_argument("--json", action="store_true",
                   help="print a JSON summary of every run on stdout")
    c.add_argument("--no-report", dest="report", action="store_false",
                   help="skip building the report (build it later with 'optimlab report DIR')")

    sub.add_parser("problems", help="list the available problems")

    r = sub.add_parser("report", help="rebuild the reports from a results directory",
                       description="Rebuild every comparison's report in DIR (report-<id>.html "
                                   "and summary-<id>.md; report.html and summary.md for the "
                                   "latest; index.html), or one comparison's.")
    r.add_argument("dir", help="a directory written by 'optimlab compare'")
    r.add_argument("--comparison", metavar="ID",
                   help="rebuild only this comparison's report (an id from index.html, or a "
                        "unique prefix of one)")
    return top
