"""Compile generated C into a shared library, cache it on disk, load it with ctypes.

Cache: ``$OPTIMLAB_CACHE`` or ``~/.cache/optimlab/kernels``; a library is named by the
hash of its source, the compiler command, torch's version and the CPU (``-march=native``
code is machine specific). It is compiled to a temporary name and renamed into place,
so processes compiling the same kernel at once never see a partial file.

Threads: the kernels call back into ``pool.c`` (compiled and cached the same way), whose
address the runner passes with every call. It is built against the libgomp torch
loaded, so its OpenMP regions use torch's own thread team, with pthread helpers as the
fallback on a busy machine (and when torch has no libgomp).

Compiler: ``$OPTIMLAB_CC``, else ``$CC``, else ``cc``. Any failure raises
:class:`BuildError`; the caller warns once and uses the reference path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading

import torch

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fno-trapping-math",
         "-fPIC", "-shared", "-std=gnu11", "-pthread"]
_ARGTYPES = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
             ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_lock = threading.Lock()


class BuildError(RuntimeError):
    """The kernel could not be compiled or loaded."""


def compiler() -> list[str]:
    return shlex.split(os.environ.get("OPTIMLAB_CC") or os.environ.get("CC") or "cc")


def cache_dir() -> str:
    return os.environ.get("OPTIMLAB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "optimlab", "kernels")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _command(src: str, out: str, extra=()) -> list[str]:
    return compiler() + FLAGS + [src, "-o", out, "-lm", *extra]


def _torch_openmp() -> list[str]:
    """Flags to build against the libgomp torch loaded (same runtime, same threads), or []."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if "OpenMP" not in torch.__config__.parallel_info() or not os.path.exists(lib):
        return []
    return ["-fopenmp", lib, f"-Wl,-rpath,{os.path.dirname(lib)}"]


def _library(source: str, extra=()):
    tag = "\0".join([source, " ".join(_command("x.c", "x.so", extra)), torch.__version__, _cpu()])
    name = "k" + hashlib.sha256(tag.encode()).hexdigest()[:24]
    directory = cache_dir()
    path = os.path.join(directory, name + ".so")
    with _lock:
        if not os.path.exists(path):
            _compile(source, directory, name, extra)
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            raise BuildError(f"could not load {path}: {e}") from e


def load(source: str, symbol: str = "optimlab_step"):
    """The ctypes function ``symbol`` of ``source``, compiled (or found in the cache)."""
    try:
        fn = getattr(_library(source), symbol)
    except AttributeError as e:
        raise BuildError(str(e)) from e
    fn.argtypes = _ARGTYPES
    fn.restype = None
    return fn


_pool: list = []


def pool() -> int:
    """Address of ``optimlab_pool_run`` (see ``pool.c``), the kernels' thread pool."""
    if not _pool:
        with open(os.path.join(os.path.dirname(__file__), "pool.c")) as f:
            source = f.read()
        try:
            lib = _library(source, _torch_openmp())
        except BuildError:
            lib = _library(source)  # pthread helpers only
        _pool.append((lib, ctypes.cast(lib.optimlab_pool_run, ctypes.c_void_p).value))
    return _pool[0][1]



def _compile(source: str, directory: str, name: str, extra=()) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp_c = tempfile.mkstemp(prefix=name, suffix=".c", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(source)
        tmp_so = tmp_c[:-2] + ".so"
    except OSError as e:
        raise BuildError(f"cannot write to the kernel cache {directory!r}: {e}") from e
    try:
        try:
            r = subprocess.run(_command(tmp_c, tmp_so, extra), capture_output=True, text=True,
                               timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"C compiler {compiler()[0]!r} could not run: {e}") from e
        if r.returncode != 0:
            raise BuildError("C compiler failed:\n" + r.stderr.strip()[-2000:])
        os.replace(tmp_so, os.path.join(directory, name + ".so"))
        os.replace(tmp_c, os.path.join(directory, name + ".c"))
    finally:
        for leftover in (tmp_c, tmp_so):
            if os.path.exists(leftover):
                os.unlink(leftover)
