"""The ``optimlab`` command line: compare, problems, report.

Bad input never shows a traceback: it ends with one line ``optimlab: error: ...`` on
stderr and exit status 2. An interrupted compare (Ctrl-C, or SIGTERM) ends with one line
and exits 130 (143); the store keeps every run that had finished, and re-running the same
command completes the rest. A closed stdout pipe (``| head``) exits 141 without a word.
With ``--json`` stdout carries only the JSON summary; progress and notes go to stderr.

Every comparison written to an ``--out`` directory has an id (a hash of its plan, so the
same command resumes the same comparison) and its own meta and report
(``report-<id>.html``, ``summary-<id>.md``); ``report.html``/``summary.md`` are the
latest comparison's and ``index.html`` lists them all. Runs are shared between them.
Problem, optimizer and schedule names are case-insensitive; a typo gets "did you mean".

``--executor ray`` runs each run as a Ray task (:mod:`.ray_executor`); the store is
still written only here, on the driver, so everything above holds on a cluster too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import optimlab

from . import runner, sweep
from .cli_args import PROG, UsageError, parser
from .executor import SweepError
from .store import Store, StoreError, comparison_id
from .summary import _kinds, summary, verdict_rows
from .wording import canonical, plural

STORE_NAME = "results.sqlite"


# ---------------------------------------------------------------------- commands

def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _problem_sources(args) -> tuple:
    from . import problems

    if args.problem and os.getcwd() not in sys.path and "" not in sys.path:
        # "mymodule:factory" next to the user, as with `python -m`; spawned workers
        # inherit sys.path, so they find it too.
        sys.path.append(os.getcwd())
    if args.suite and args.problems:
        raise UsageError(f"--suite {args.suite} and --problems both choose the problems: "
                         f"give one of them")
    known = problems.names()
    named = [n if ":" in n else canonical(n, known, "problem", "see 'optimlab problems'")
             for n in (args.problems or [])]
    sources = named + list(args.problem)
    suite = args.suite or ("default" if not sources else None)
    if suite:
        sources = list(problems.FULL_SUITE if suite == "full" else problems.DEFAULT_SUITE) + sources
    return _unique(sources), suite


def _optimizer_names(given) -> list:
    """Registry names of the optimizers asked for (case-insensitive, aliases allowed), a
    named set standing for its members; the default is the classic set."""
    from optimlab.registry import ENTRIES

    sets = optimlab.sets()
    known = optimlab.names() + sorted(a for e in ENTRIES for a in e.aliases) + list(sets)
    out = []
    for name in given or ["classic"]:
        key = canonical(name, known, "optimizer")
        out += sets[key] if key in sets else [optimlab.lookup(key).name]
    if not out:
        raise ValueError(f"no optimizers in {', '.join(given)} (the set is empty in this build)")
    return _unique(out)


def _schedule_name(name: str) -> str:
    """The schedule's canonical name (it enters the run ids, so "Cosine" == "cosine")."""
    if name.strip().lower() == "constant":
        return "constant"
    schedules = getattr(optimlab, "schedules", None)
    if getattr(schedules, "by_name", None) is None:
        raise ValueError("lr schedules are not available in this optimlab build")
    key = canonical(name.strip().replace("-", "_"), schedules.NAMES, "schedule")
    schedules.by_name(key, 10)
    return key


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _build_report(out: Path, comparisons=None, missing=False, announce=True) -> Path | None:
    """Build the reports of ``comparisons`` (None: all) and the index; returns the path
    of the first report written, None when the report module is unavailable. ``announce``
    False: the caller prints the path (compare's verdict table ends with it)."""
    try:
        from .report import build_reports
    except ImportError as exc:
        _say(f"note: the report module is not available ({exc}); results are in "
             f"{out / STORE_NAME}")
        return None
    built = build_reports(out, comparisons=comparisons, missing=missing)
    if announce:
        for cid, path in built.reports.items():
            also = " (also report.html, the latest)" if cid == built.latest_id else ""
            _say(f"report: {path}{also}")
        if not built.reports and built.latest is not None:
            _say(f"report: {built.latest}")
    for cid in built.unfinished:
        _say(f"note: comparison {cid} did not finish; its report says so and shows "
             f"provisional results (re-run its command to finish it)")
    _say(f"index: {built.index} ({plural(len(built.comparisons), 'comparison')})")
    wanted = [built.reports[c] for c in (comparisons or ()) if c in built.reports]
    return (wanted or [built.latest or built.index])[0]


def cmd_compare(args, argv) -> int:
    _check_executor_args(args)
    sources, suite = _problem_sources(args)
    optimizers = _optimizer_names(args.optimizers)
    schedule = _schedule_name(args.schedule)
    plan = sweep.Plan.build(sources, optimizers, lrs=args.lrs, seeds=args.seeds,
                            steps=args.steps, schedule=schedule)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".optimlab-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to the output directory {out} "
                      f"({exc.strerror or exc}); choose another with --out") from None
    store, executor = Store(out / STORE_NAME), None
    try:
        progress = sys.stderr.isatty()
        executor = _executor(args, store, plan, progress)
        described = plan.describe()
        cid = store.stored_id(comparison_id(described))
        others = [c for c in store.comparisons() if c != cid]
        resumed = cid in store.comparisons()
        store.use(cid)   # set_meta/meta now refer to this comparison only
        old = store.meta()
        _say(f"comparison {cid}" + (" (resumed)" if resumed else "")
             + (f"; {out} also holds {plural(len(others), 'other comparison')} (each "
                f"keeps its own report; index.html lists them)" if others else ""))
        for key, value in described.items():
            store.set_meta(key, value)
        store.set_meta("command", shlex.join([PROG, *argv]))
        store.set_meta("argv", list(argv))
        store.set_meta("suite", suite)
        store.set_meta("versions", runner.versions())
        store.set_meta("workers", args.workers)
        store.set_meta("executor", args.executor if args.ray_address is None
                       else f"ray {args.ray_address}")
        if "created" not in old:
            store.set_meta("created", _now())
        # How and where it ran, for the report's protocol (bookkeeping: not in the id).
        store.set_meta("machine", runner.machine())
        store.set_meta("data_sizes", {n: p.sizes for n, p in plan.problems.items()
                                      if getattr(p, "sizes", None)})
        store.set_meta("started", _now())
        load = {"start": runner.load_average()}
        store.set_meta("load", load)
        began = time.perf_counter()
        # With --json, stdout is reserved for the summary: anything else goes to stderr.
        quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
        with quiet:
            selections = sweep.compare(plan, store, workers=args.workers, progress=progress,
                                       log=_say, executor=executor)
            ids = {s.run_id for s in plan.all_specs(selections)}
            store.set_meta("runs", sorted(ids))
            store.set_meta("finished", _now())
            store.set_meta("wall_seconds", round(time.perf_counter() - began, 1))
            store.set_meta("load", {**load, "end": runner.load_average()})
            edge = sorted(f"{p}/{o}" for (p, o), s in selections.items() if s.on_edge)
            if edge:
                _say(f"note: best lr on the grid's edge for {plural(len(edge), 'pair')}: "
                     f"{', '.join(edge[:8])}{' ...' if len(edge) > 8 else ''}")
            status, path = 0, None
            try:
                if args.report:
                    path = _build_report(out, [cid], missing=True, announce=False)
            except Exception as exc:  # the results are safe in the store either way
                _say(f"{PROG}: error: building the report failed ({type(exc).__name__}: "
                     f"{exc}); rebuild with '{PROG} report {out}'")
                status = 1
        records = [r for r in store.records() if r.run_id in ids]
        # The verdict table ends the run: stderr, so that --json keeps stdout clean.
        from . import verdicts
        verdicts.print_table(verdict_rows(records, selections, _kinds(records, store.meta())),
                             report=path, file=sys.stderr if args.json else sys.stdout)
        if args.json:
            payload = summary(records, selections, store.meta())
            payload["comparison"] = cid
            json.dump(payload, sys.stdout, allow_nan=False)
            sys.stdout.write("\n")
        return status
    finally:
        if executor is not None:   # compare closed it; not if it never got there
            executor.close(cancel=True)
        store.close()


def _check_executor_args(args) -> None:
    if args.executor != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address),
                                          ("--ray-retries", args.ray_retries),
                                          ("--ray-cpus-per-run", args.ray_cpus_per_run))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} needs --executor ray")
        return
    from .ray_executor import _import_ray, check_address

    _import_ray()   # one line naming the install command when Ray is missing
    if args.ray_address is not None:
        check_address(args.ray_address)


def _executor(args, store, plan, progress):
    """The Ray executor, connected (None: the local one, which compare builds)."""
    if args.executor != "ray":
        return None
    from .ray_executor import DEFAULT_RETRIES, RayExecutor

    executor = RayExecutor(store, plan.sources, args.workers, progress, plan.problems,
                           address=args.ray_address, cpus_per_run=args.ray_cpus_per_run or 1.0,
                           max_retries=DEFAULT_RETRIES if args.ray_retries is None
                           else args.ray_retries, log=_say)
    executor.connect()
    return executor


def cmd_problems(args) -> int:
    from . import problems

    rows = []
    for name in problems.names():
        p = problems.get(name)
        rows.append((p.name, p.kind, str(p.default_steps), p.description))
    head = ("name", "kind", "steps", "description")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    for row in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_report(args) -> int:
    out = Path(args.dir)
    path = out / STORE_NAME
    if not path.is_file():
        raise ValueError(f"no results store at {path} (run '{PROG} compare --out {out}')")
    # Schema check (a one-line StoreError if incompatible); never creates one.
    with Store(path, create=False) as store:
        known = store.comparisons()
    if not known:
        raise ValueError(f"no comparisons in {path} (run '{PROG} compare --out {out}')")
    wanted = None
    if args.comparison is not None:
        from .report import resolve_comparison   # ValueError: one line listing the known ids

        wanted = [resolve_comparison(args.comparison, known, str(out))]
    return 0 if _build_report(out, wanted) is not None else 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so that the same cleanup runs (workers
    stopped, store closed) and the same one-line message ends the command."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` inside the block (main thread only; the
    previous handler is restored after)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout (and stderr) at /dev/null after a broken pipe, so that flushing them
    at exit cannot raise again (the recipe of Python's signal documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def main(argv=None) -> int:
    """Entry point of the ``optimlab`` console script; returns the exit status."""
    with _sigterm_as_interrupt():
        return _main(argv)


def _main(argv) -> int:
    args = None
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser().parse_args(argv)
        if args.command == "compare":
            status = cmd_compare(args, argv)
        elif args.command == "problems":
            status = cmd_problems(args)
        else:
            status = cmd_report(args)
        sys.stdout.flush()   # a closed pipe raises here, not at exit
        return status
    except BrokenPipeError:   # `optimlab ... | head`: the reader has all it wanted
        _silence_stdout()
        return 141   # 128 + SIGPIPE, what a shell reports for a writer killed by it
    except UsageError as exc:
        _say(f"{PROG}: error: {exc}")
        return 2
    except (StoreError, ValueError, OSError) as exc:
        _say(f"{PROG}: error: {_one_line(exc)}")
        return 2
    except SweepError as exc:
        _say(f"{PROG}: error: {_one_line(exc)}")
        return 1
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        what = "terminated" if signum == signal.SIGTERM else "interrupted"
        out = getattr(args, "out", None) if getattr(args, "command", None) == "compare" else None
        report = f", or `{PROG} report {shlex.quote(str(out))}` for a report of them so far" if out else ""
        _say(f"{PROG}: {what}; the store keeps every finished run "
             f"(re-run the same command to continue{report})")
        return 128 + signum
    except Exception as exc:
        if os.environ.get("OPTIMLAB_DEBUG"):
            raise
        _say(f"{PROG}: error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
             f"set OPTIMLAB_DEBUG=1 for a traceback")
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
