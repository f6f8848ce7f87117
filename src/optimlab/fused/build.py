"""Compile generated C into a shared library, cache it on disk, load it with ctypes.

Cache: ``$OPTIMLAB_CACHE`` or ``~/.cache/optimlab/kernels``; a library is named by the
hash of its source, the compiler command, torch's version and the CPU (``-march=native``
code is machine specific). It is compiled to a temporary name and renamed into place,
so processes compiling the same kernel at once never see a partial file. Next to it,
``<name>.sha256`` holds the digest of the library as compiled; a library whose bytes do not
match it (truncated by a full disk or an interrupted copy of the cache: ``dlopen`` maps it and
the process dies of SIGBUS; overwritten) or that has none is compiled again before it is loaded.

Threads: the kernels call back into ``pool.c`` (compiled and cached the same way), whose
address the runner passes with every call. It is built against the libgomp torch
loaded, so its OpenMP regions use torch's own thread team (pthread helpers when torch
has no libgomp).

Compiler: ``$OPTIMLAB_CC``, else ``$CC``, else ``cc``. Any failure raises
:class:`BuildError`; the caller warns once and uses the reference path.

The optional per-step helper ``gather.cpp`` is C++ against torch's headers, compiled with
``$OPTIMLAB_CXX``, else ``$CXX``, else ``c++``; see :func:`gatherer`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings

import numpy as np
import torch

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fno-trapping-math",
         "-fPIC", "-shared", "-std=gnu11", "-pthread"]
_ARGTYPES = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
             ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_lock = threading.Lock()


class BuildError(RuntimeError):
    """The kernel could not be compiled or loaded."""


_warned: set = set()


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside optimlab and torch: the user's line."""
    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def warn_unavailable(error: BuildError) -> None:
    """One warning per process and failure (not per kernel, class or instance): without a
    compiler or a writable cache every kernel fails alike."""
    message = (f"optimlab: no C kernels ({error}); optimizers step without them, with the same "
               "update: torch's fused kernels where torch has the rule, else the multi-tensor "
               "path (the reference path for foreach=False), and the rules with reductions run "
               "their generated passes as torch ops")
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=_caller_level())


CXX_FLAGS = ["-O2", "-std=c++20", "-fPIC", "-shared", "-w"]


def compiler() -> list[str]:
    return shlex.split(os.environ.get("OPTIMLAB_CC") or os.environ.get("CC") or "cc")


def cxx_compiler() -> list[str]:
    return shlex.split(os.environ.get("OPTIMLAB_CXX") or os.environ.get("CXX") or "c++")


def cache_dir() -> str:
    return os.environ.get("OPTIMLAB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "optimlab", "kernels")


@functools.lru_cache(maxsize=None)
def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _command(src: str, out: str, extra=(), cxx=False) -> list[str]:
    if cxx:
        return cxx_compiler() + CXX_FLAGS + [src, "-o", out, *extra]
    return compiler() + FLAGS + [src, "-o", out, "-lm", *extra]


def _torch_openmp() -> list[str]:
    """Flags to build against the libgomp torch loaded (same runtime, same threads), or []."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if "OpenMP" not in torch.__config__.parallel_info() or not os.path.exists(lib):
        return []
    return ["-fopenmp", lib, f"-Wl,-rpath,{os.path.dirname(lib)}"]


def _library_path(source: str, extra=(), cxx=False) -> str:
    tag = "\0".join([source, " ".join(_command("x.c", "x.so", extra, cxx)), torch.__version__, _cpu()])
    return os.path.join(cache_dir(), "k" + hashlib.sha256(tag.encode()).hexdigest()[:24] + ".so")


def _library(source: str, extra=(), cxx=False, compile=True, loader=ctypes.CDLL):
    """The loaded library of ``source``, compiled first if needed (or, with
    ``compile=False``, None when it is not in the cache yet)."""
    path = _library_path(source, extra, cxx)
    with _lock:
        if not _intact(path):
            if not compile:
                return None
            _compile(source, os.path.dirname(path), os.path.basename(path)[:-3], extra, cxx)
        try:
            return loader(path)
        except OSError as e:
            raise BuildError(f"could not load {path}: {e}") from e


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _intact(path: str) -> bool:
    """The cached library exists and its bytes are those it was compiled with."""
    try:
        with open(path[:-3] + ".sha256") as f:
            return f.read().strip() == _digest(path)
    except OSError:
        return False


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


_gather: dict = {}


def _gather_flags() -> list[str]:
    torch_dir = os.path.dirname(torch.__file__)
    lib = os.path.join(torch_dir, "lib")
    return ["-I" + os.path.join(torch_dir, "include"), "-I" + sysconfig.get_paths()["include"],
            "-L" + lib, "-lc10", "-Wl,-rpath," + lib]


@functools.lru_cache(maxsize=None)
def _gather_source() -> str:
    with open(os.path.join(os.path.dirname(__file__), "gather.cpp")) as f:
        return f.read()


def gatherer(compile: bool):
    """``optimlab_gather`` of ``gather.cpp`` (the steady-state step bookkeeping in one
    call), or None: not in the cache and ``compile`` is False, no working C++ compiler or
    torch headers, or torch's object layout is not the one it was written for."""
    if "fn" in _gather:
        return _gather["fn"]
    try:
        lib = _library(_gather_source(), _gather_flags(), cxx=True, compile=compile, loader=ctypes.PyDLL)
    except (OSError, BuildError):
        lib = False
    if lib is None:
        return None  # not built yet: a later, larger group may build it
    _gather["fn"] = _verified(lib) if lib else None
    if _gather["fn"]:
        _gather["pointers"] = _verified_pointers(lib)
        _gather["state"] = _verified_state(lib)
    return _gather["fn"]


def pointers(compile: bool = True):
    """``optimlab_pointers`` of ``gather.cpp`` (the custom op's pointer tables in one call), or
    None where :func:`gatherer` is None."""
    gatherer(compile)
    return _gather.get("pointers")


def state_checker(compile: bool = False):
    """``(optimlab_state_positions, optimlab_state_same)`` of ``gather.cpp`` (a plan's check
    that ``optimizer.state`` is as it read it, :mod:`.state_snapshot`), or None where
    :func:`gatherer` is None."""
    gatherer(compile)
    return _gather.get("state")


def _verified_state(lib):
    positions, same = lib.optimlab_state_positions, lib.optimlab_state_same
    positions.argtypes = [ctypes.py_object, ctypes.py_object, ctypes.c_void_p, ctypes.c_int64]
    positions.restype = ctypes.c_int64
    same.argtypes = [ctypes.py_object, ctypes.c_void_p]
    same.restype = ctypes.c_int64
    from .state_snapshot import StateSnapshot

    a, b, c = torch.zeros(1), torch.zeros(1), torch.zeros(1)
    state = {c: {}, a: {"x": a}}
    snapshot = StateSnapshot(state, [a, b], checker=(positions, same))
    kept = state[a]  # alive: a freed dict's address could be the new one's
    ok = list(snapshot.positions) == [1, -1] and snapshot.holds(state)
    kept["x"] = b
    ok = ok and not snapshot.holds(state)
    kept["x"] = a
    ok = ok and snapshot.holds(state) and not snapshot.holds(dict(state))
    state[a] = {"x": a}
    ok = ok and not snapshot.holds(state)
    return (positions, same) if ok else None


def _verified_pointers(lib):
    fn = lib.optimlab_pointers
    fn.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int64
    a, b = torch.zeros(3), torch.zeros(2, 2)
    out = np.zeros(3, dtype=np.uint64)
    version = a._version, b._version
    ok = (fn(([a], [b]), out.ctypes.data, 3, 1) == 2 and list(out[:2]) == [a.data_ptr(), b.data_ptr()]
          and (a._version, b._version) == (version[0] + 1, version[1])
          and fn(([a, b], [a, b]), out.ctypes.data, 3, 0) == -1)
    return fn if ok else None


def _verified(lib):
    """The gather function, if it reads torch's objects right (layout and a round trip)."""
    impl_of = lib.optimlab_impl_of
    impl_of.argtypes, impl_of.restype = [ctypes.py_object], ctypes.c_uint64
    fn = lib.optimlab_gather
    fn.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.py_object, ctypes.c_void_p]
    fn.restype = ctypes.c_int64
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    if any(impl_of(t) != t._cdata for t in (p, p.grad, torch.zeros(2))):
        return None
    objs = np.array([id(p)], dtype=np.uint64)
    pptrs = np.array([p.data_ptr()], dtype=np.uint64)
    out = np.zeros(1, dtype=np.uint64)
    dest = np.array([out.ctypes.data], dtype=np.uint64)
    version = p._version
    ok = (fn([p], objs.ctypes.data, pptrs.ctypes.data, dest.ctypes.data, 1, None, None) == 0
          and int(out[0]) == p.grad.data_ptr() and p._version == version + 1
          and fn([p], objs.ctypes.data, pptrs.ctypes.data, dest.ctypes.data, 2, None, None) == 3)
    return fn if ok else None


def _compile(source: str, directory: str, name: str, extra=(), cxx=False) -> None:
    suffix = ".cpp" if cxx else ".c"
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp_c = tempfile.mkstemp(prefix=name, suffix=suffix, dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(source)
        tmp_so = tmp_c[: -len(suffix)] + ".so"
    except OSError as e:  # the reason alone (not the file's name): one warning for all kernels
        raise BuildError(f"cannot write to the kernel cache {directory!r}: {e.strerror or e}") from e
    command = _command(tmp_c, tmp_so, extra, cxx)
    try:
        try:
            r = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"compiler {command[0]!r} could not run: {e}") from e
        if r.returncode != 0:
            details = r.stderr.strip()[-2000:]
            raise BuildError(f"compiler {command[0]!r} failed (exit status {r.returncode})"
                             + (":\n" + details if details else ""))
        tmp_sum = tmp_c[: -len(suffix)] + ".sha256"
        with open(tmp_sum, "w") as f:
            f.write(_digest(tmp_so))
        # digest first: a reader between the two renames sees a mismatch and compiles too
        os.replace(tmp_sum, os.path.join(directory, name + ".sha256"))
        os.replace(tmp_so, os.path.join(directory, name + ".so"))
        os.replace(tmp_c, os.path.join(directory, name + suffix))
    except OSError as e:
        raise BuildError(f"cannot write to the kernel cache {directory!r}: {e.strerror or e}") from e
    finally:
        for leftover in (tmp_c, tmp_so, tmp_c[: -len(suffix)] + ".sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)
