"""Running a :class:`~.passes.Program` on the params of one bucket (same shape and dtype).

Per level: the per-tensor scalars known by then are evaluated in double with NumPy (one
value per tensor, as the reference path's Python floats), the torch calls are replayed per
tensor on the values the reference path would give them, then the level's C pass runs
over all tensors of the bucket. After the last pass: 0-dim state and state of another
shape are written back, and the partial sums of an estimate are returned.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import build
from .passes_trace import REDUCTIONS, call


def _sign(x):
    return np.where(np.isnan(x), 0.0, np.sign(x))


_NP = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
    "neg": np.negative, "sqrt": np.sqrt, "abs": np.abs, "max": np.maximum, "min": np.minimum,
    "sign": _sign, "clamp_min": lambda x, lo: np.where(x < lo, lo, x),
    "clamp_max": lambda x, hi: np.where(x > hi, hi, x),
    "where": lambda c, a, b: np.where(c != 0, a, b),
    "float32": lambda x: np.float64(np.float32(x)),
    "gt": lambda a, b: np.greater(a, b) * 1.0, "ge": lambda a, b: np.greater_equal(a, b) * 1.0,
    "lt": lambda a, b: np.less(a, b) * 1.0, "le": lambda a, b: np.less_equal(a, b) * 1.0,
    "eq": lambda a, b: np.equal(a, b) * 1.0, "ne": lambda a, b: np.not_equal(a, b) * 1.0,
    "and": lambda a, b: np.logical_and(a != 0, b != 0) * 1.0,
}


class Runner:
    """One step of ``prog`` on ``params`` (see the module docstring)."""

    #: benchmarks only: a list to which each pass appends (seconds in C, bytes moved)
    profile = None

    def __init__(self, prog, optimizer, params, h, nthreads: int, chunk_size):
        self.prog, self.params, self.h = prog, params, h
        self.states = [optimizer.state[p] for p in params]
        self.nthreads, self.chunk_size = nthreads, chunk_size
        self.nt = len(params)
        self.sv: dict = {}  # S node -> float or (nt,) float64 array
        self.tv: dict = {}  # T node -> list of tensors (one per param)
        self.temps: dict = {}  # E node written for a torch call -> list of tensors
        self.hps = {name: (key, index) for name, key, index in prog.hps}
        self.offs = np.zeros(self.nt + 1, dtype=np.int64)
        self.offs[1:] = np.cumsum([p.numel() for p in params])
        self.compute = prog.graph.compute
        self.optimizer, self.group = optimizer, None  # see _batched

    # ---- values as the reference path sees them
    def _input(self, name: str, i: int):
        p = self.params[i]
        t = p if name == "param" else p.grad if name == "grad" else self.states[i][name]
        return t.to(self.compute) if t.dtype != self.compute else t

    def _scalar(self, n):
        if n.op == "const":
            return n.value
        if n.op == "hp":
            key, index = self.hps[n.name]
            v = getattr(self.h, key)
            return float(v if index is None else v[index])
        if n.op == "sin":
            return np.array([st[n.name].item() for st in self.states], dtype=np.float64)
        return _NP[n.op](*(self.sv[a.index] for a in n.args))  # under run()'s np.errstate

    def _tensor(self, n, i: int):
        if n.op == "tin":
            return self._input(n.name, i)
        values = []
        for a in n.args:
            if a.kind == "S":
                v = self.sv[a.index]
                values.append(float(v[i]) if isinstance(v, np.ndarray) else v)
            elif a.kind == "T":
                values.append(self.tv[a.index][i])
            elif a.op == "ein":
                values.append(self._input(a.name, i))
            else:
                values.append(self.temps[a.index][i])
        return call(n, values)

    def _batched(self, n) -> list:
        """A torch value for every param of the bucket (all of one shape: a trace with torch
        values reads the shape), computed on the params stacked by :mod:`.passes_torch`:
        one call for the bucket where the call allows it (Adafactor's row and column means,
        their outer product), else per tensor."""
        if self.group is None:
            from .passes_torch import TorchRunner, _Group

            self.group = _Group(TorchRunner(self.prog, self.optimizer, self.params, self.h), self.params)
        group = self.group
        for a in n.args:
            if a.index in group.v:
                continue
            if a.kind == "S":
                group.v[a.index] = self.sv[a.index]
            elif a.op == "ein":
                group.v[a.index] = group._stack(group._tensors(a.name))
            elif a.kind == "E":
                group.v[a.index] = torch.stack(self.temps[a.index])
        out = group.v[n.index] = group._torch_value(n)
        return list(out.unbind(0))

    def _per_tensor(self, n) -> np.ndarray:
        if n.kind == "S":
            return np.broadcast_to(np.asarray(self.sv[n.index], dtype=np.float64), (self.nt,))
        return np.array([float(t) for t in self.tv[n.index]], dtype=np.float64)

    # ---- one pass
    def _pass(self, ps) -> None:
        nt = self.nt
        bufs = np.zeros((max(len(ps.buffers), 1), nt), dtype=np.uint64)
        keep = []
        for b, (kind, what) in enumerate(ps.buffers):
            if kind == "ein":
                ts = [p if what == "param" else p.grad if what == "grad" else st[what]
                      for p, st in zip(self.params, self.states)]
            elif kind == "tbuf":
                ts = [t.to(self.compute).contiguous() for t in self.tv[what.index]]
            else:
                ts = [torch.empty(p.shape, dtype=self.compute) for p in self.params]
                self.temps[what.index] = ts
            keep.append(ts)
            bufs[b] = [t.data_ptr() for t in ts]
        scratch = np.zeros((nt, max(len(ps.scalars), 1)), dtype=np.float64)
        for j, n in enumerate(ps.scalars):
            scratch[:, j] = self._per_tensor(n)
        total = int(self.offs[-1])
        chunk = self.chunk_size(total, self.nthreads)
        nslots = -(-total // chunk) + nt
        red = np.zeros((max(len(ps.reductions), 1), nslots), dtype=np.float64)
        t0 = time.perf_counter()
        ps.fn(nt, bufs.ctypes.data, scratch.ctypes.data, self.offs.ctypes.data, red.ctypes.data,
              chunk, nslots, self.nthreads, build.pool())
        if Runner.profile is not None:
            Runner.profile.append((time.perf_counter() - t0, sum(ps.traffic) * total))
        starts = self.offs[:-1] // chunk + np.arange(nt)
        for r, n in enumerate(ps.reductions):
            self.sv[n.index] = np.add.reduceat(red[r], starts) if total else np.zeros(nt)

    def run(self):
        with np.errstate(all="ignore"):
            return self._run()

    def _run(self):
        prog = self.prog
        nodes = [n for n in prog.graph.nodes if n.index in prog.level]
        top = max(prog.level.values(), default=0)
        for level in range(max(top, len(prog.passes) - 1) + 1):
            for n in nodes:
                if prog.level[n.index] != level or n.op in REDUCTIONS:
                    continue
                if n.kind == "S":
                    self.sv[n.index] = self._scalar(n)
                elif n.kind == "T":
                    self.tv[n.index] = self._batched(n)
            if level < len(prog.passes) and prog.passes[level] is not None:
                self._pass(prog.passes[level])
        if prog.elem_outputs:
            torch._C._increment_version(self.params)
        for key, n in prog.scalar_outputs.items():
            for st, v in zip(self.states, self._per_tensor(n)):
                st[key].fill_(float(v))
        for key, n in prog.tensor_outputs.items():
            torch._foreach_copy_([st[key] for st in self.states], self.tv[n.index])
        return [self._per_tensor(n) for n in prog.returns]
