"""Entry point of the ``optimlab`` console script (``[project.scripts]`` in
pyproject.toml): :func:`optimlab.lab.cli.main`, imported under a Ctrl-C guard.

It lives outside the optimlab package on purpose: importing anything in it imports
optimlab and torch (about a second), and a Ctrl-C or SIGTERM during that second must end
as one during a command does (one line, exit 130 or 143), not with a traceback.
"""

import os
import signal
import sys


def _stop(signum, frame):
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    print(f"optimlab: {what} while starting; nothing was run", file=sys.stderr, flush=True)
    # Exit at once, not by raising: an exception raised inside an import can be swallowed
    # (numpy's, under load), and the command would then run on half-imported modules.
    # Nothing is open yet that needs closing.
    os._exit(128 + signum)


def main() -> int:
    """Import the command line with Ctrl-C and SIGTERM ending it quietly, then run it."""
    # A signal ignored by whoever started us (a background job's SIGINT) stays ignored.
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        from optimlab.lab.cli import main as cli_main
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
