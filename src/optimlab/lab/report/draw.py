"""Draw the report's figures in two processes.

Rendering the figures (matplotlib, ~15 s of CPU for the default comparison) is most of
the report's time and runs after every training run has finished, on one core. Where
``fork`` is available (Linux), :func:`draw` forks one child that shares the figure list
with this process: both take the next undrawn figure from a shared counter until none is
left (so a slow figure does not leave the other process idle), and the child sends its
PNGs back through a pipe as plain length-prefixed bytes. Elsewhere, on one core, or for a
single figure, everything is drawn here. A figure the child failed to send (it raised, or
the child died) is drawn again in this process, so an error surfaces exactly as it would
without the child. The result does not depend on which process drew what.
"""

from __future__ import annotations

import os
import struct
import sys
import threading

_HEADER = struct.Struct("<iq")   # job index, length (-1: None, -2: raised)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether figures may be drawn in a forked child (Linux only: fork is unsafe on
    macOS once system frameworks are loaded, and absent on Windows)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def draw(jobs: dict, processes: int | None = None) -> dict:
    """{name: job()} for the zero-argument ``jobs`` ({name: callable returning PNG bytes
    or None}), drawn in order, in ``processes`` (default: 2 where there are 2 cores and
    fork is available, else 1)."""
    names = list(jobs)
    if processes is None:
        processes = 2 if _cores() >= 2 and can_fork() else 1
    if processes < 2 or len(names) < 2 or not can_fork():
        return {n: jobs[n]() for n in names}
    return _forked(jobs, names)


def _forked(jobs: dict, names: list) -> dict:
    import multiprocessing

    counter = multiprocessing.get_context("fork").Value("i", 0)

    def take():
        while True:
            with counter.get_lock():
                i = counter.value
                counter.value += 1
            if i >= len(names):
                return
            yield i

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:   # the child: draw, send, and leave without running any exit handler
        code = 0
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "wb") as out:
                for i in take():
                    try:
                        data = jobs[names[i]]()
                        n = -1 if data is None else len(data)
                    except BaseException:
                        data, n = None, -2
                    out.write(_HEADER.pack(i, n))
                    if data:
                        out.write(data)
                    out.flush()
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    os.close(write_fd)
    received: dict = {}

    def receive():
        with os.fdopen(read_fd, "rb") as pipe:
            while True:
                head = pipe.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    return
                i, n = _HEADER.unpack(head)
                data = pipe.read(n) if n > 0 else (b"" if n == 0 else None)
                if n >= 0 and (data is None or len(data) < n):
                    return   # the child died mid-figure: this one is redrawn here
                received[i] = (n, data)

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    out: dict = {}
    try:
        for i in take():
            out[names[i]] = jobs[names[i]]()
    finally:
        reader.join()
        os.waitpid(pid, 0)
    for i, (n, data) in received.items():
        if n != -2:
            out[names[i]] = data
    for name in names:   # what the child did not deliver (it raised, or died)
        if name not in out:
            out[name] = jobs[name]()
    return {n: out[n] for n in names}
