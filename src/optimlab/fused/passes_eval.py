"""Running a :class:`~.passes.Program` on the params of one bucket (same shape and dtype).

Per level: the per-tensor scalars known by then are evaluated in double with NumPy (one
value per tensor, as the reference path's Python floats; those that depend on
hyperparameters only are kept between steps), the torch calls are replayed on the values
the reference path would give them (once for the whole bucket where the call has a batched
form, :mod:`.passes_batch`; else per tensor), then the level's C pass runs over all
tensors of the bucket. After the last pass: 0-dim state and state of another
shape are written back, and the partial sums of an estimate are returned.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import build, passes_batch
from .passes_trace import _call, call, tbuf_dtype


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
        #: T node, E input or E temporary -> the bucket's values stacked (see :mod:`.passes_batch`)
        self.stacked: dict = {}
        self.hps = {name: (key, index) for name, key, index in prog.hps}
        self.offs = np.zeros(self.nt + 1, dtype=np.int64)
        self.offs[1:] = np.cumsum([p.numel() for p in params])
        self.compute = prog.graph.compute
        #: the shape of each param (:mod:`.passes_shards_c`: a local shard's, not the graph's)
        self.shape = prog.graph.shape

    # ---- values as the reference path sees them
    def _raw(self, name: str, i: int):
        """Tensor ``i``'s input ``name`` (the param, its grad or a state), as stored."""
        p = self.params[i]
        return p if name == "param" else p.grad if name == "grad" else self.states[i][name]

    def _input(self, name: str, i: int):
        t = self._raw(name, i)
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

    def _item(self, a, i: int):
        """The value of the T or E (not input) node ``a`` for tensor ``i``."""
        if a.index in self.stacked:
            v = self.stacked[a.index][i]  # (1, ..., 1) + its shape: the padding dropped
            return v.view(v.shape[v.dim() - (a.meta.dim() if a.kind == "T" else len(self.shape)):])
        return self.tv[a.index][i]

    def _tensor(self, n, i: int):
        if n.op == "tin":
            return self._input(n.name, i)
        values = []
        for a in n.args:
            if a.kind == "S":
                v = self.sv[a.index]
                values.append(float(v[i]) if isinstance(v, np.ndarray) else v)
            elif a.op == "ein":
                values.append(self._input(a.name, i))
            else:
                values.append(self._item(a, i))
        return call(n, values)

    def _batched(self, n):
        """The call of ``n`` once on the stacked values, or None where it must run per tensor
        (no batched form, or a per-tensor scalar argument that differs between tensors)."""
        fn = self.prog.batch.get(n.index)
        if fn is None:
            return None
        values = []
        for a in n.args:
            if a.kind == "S":
                v = self.sv[a.index]
                if isinstance(v, np.ndarray):
                    bits = np.ascontiguousarray(v, dtype=np.float64).view(np.uint64)
                    if not (bits == bits[0]).all():
                        return None
                    v = float(v[0])
                values.append(v)
            elif a.op == "ein":
                if a.index not in self.stacked:
                    shape = passes_batch.padded(self.shape, self.nt, self.prog.rank)
                    ts = [self._input(a.name, i) for i in range(self.nt)]
                    if self.nt == 1:
                        self.stacked[a.index] = ts[0].view(shape)  # a view, no copy
                    elif ts[0].numel() >= passes_batch.STACK_NUMEL:
                        return None  # large: a copy of each would cost more than the calls
                    else:
                        self.stacked[a.index] = torch.stack(ts).view(shape)
                values.append(self.stacked[a.index])
            elif a.index in self.stacked:
                values.append(self.stacked[a.index])
            elif a.op == "tin":  # small state of another shape (passes_batch.plan): stacked
                shape = passes_batch.padded(tuple(a.meta.shape), self.nt, self.prog.rank)
                self.stacked[a.index] = torch.stack(self.tv[a.index]).view(shape)
                values.append(self.stacked[a.index])
            else:
                return None
        return _call(fn, values)

    def _per_tensor(self, n) -> np.ndarray:
        if n.kind == "S":
            return np.broadcast_to(np.asarray(self.sv[n.index], dtype=np.float64), (self.nt,))
        if n.index in self.stacked:
            return self.stacked[n.index].reshape(self.nt).double().numpy()
        return np.array([float(t) for t in self.tv[n.index]], dtype=np.float64)

    # ---- one pass
    def _tbuf(self, n):
        return tbuf_dtype(n.meta.dtype, self.compute)

    def _pass(self, ps) -> None:
        nt = self.nt
        bufs = np.zeros((max(len(ps.buffers), 1), nt), dtype=np.uint64)
        keep = []
        for b, (kind, what) in enumerate(ps.buffers):
            if kind == "ein":
                ts = [self._raw(what, i) for i in range(nt)]
            elif kind in ("rows", "cols") and what.index in self.stacked:
                # an outer product's factor for the bucket: tensor i's at i * (its numel)
                flat = self.stacked[what.index].to(self._tbuf(what)).contiguous()
                keep.append(flat)
                step = flat.numel() // nt * flat.element_size()
                bufs[b] = flat.data_ptr() + np.arange(nt, dtype=np.uint64) * np.uint64(step)
                continue
            elif kind == "tmp" or (kind == "tbuf" and what.index in self.stacked):
                # one buffer for the bucket, tensor i at element offs[i]
                if kind == "tmp":
                    narrow = what.index in self.prog.aliases.values()
                    flat = torch.empty(int(self.offs[-1]), dtype=torch.bfloat16 if narrow else self.compute)
                    shape = passes_batch.padded(self.shape, nt, self.prog.rank)
                    self.stacked[what.index] = flat.view(shape)
                else:
                    flat = self.stacked[what.index].to(self._tbuf(what)).contiguous()
                keep.append(flat)
                bufs[b] = flat.data_ptr() + self.offs[:-1].astype(np.uint64) * flat.element_size()
                continue
            else:
                ts = [t.to(self._tbuf(what)).contiguous() for t in self.tv[what.index]]
            keep.append(ts)
            bufs[b] = [t.data_ptr() for t in ts]
        cols = [self.sv[n.index] if n.kind == "S" else self._per_tensor(n) for n in ps.scalars]
        if all(not isinstance(c, np.ndarray) for c in cols):  # the same for every tensor
            scratch = np.empty((nt, max(len(cols), 1)), dtype=np.float64)
            scratch[:, :len(cols)] = cols
        else:
            scratch = np.zeros((nt, max(len(cols), 1)), dtype=np.float64)
            for j, c in enumerate(cols):
                scratch[:, j] = c
        total = int(self.offs[-1])
        chunk = self.chunk_size(total, self.nthreads)
        nslots = -(-total // chunk) + nt
        red = np.zeros((max(len(ps.reductions), 1), nslots), dtype=np.float64)
        t0 = time.perf_counter()
        ps.fn(nt, bufs.ctypes.data, scratch.ctypes.data, self.offs.ctypes.data, red.ctypes.data,
              chunk, nslots, self.nthreads, build.pool(), int(self.shape[-1]) if self.shape else 1)
        if Runner.profile is not None:
            Runner.profile.append((time.perf_counter() - t0, sum(ps.traffic) * total))
        starts = self.offs[:-1] // chunk + np.arange(nt)
        for r, n in enumerate(ps.reductions):
            self.sv[n.index] = np.add.reduceat(red[r], starts) if total else np.zeros(nt)

    def run(self):
        with np.errstate(all="ignore"):
            for _ in self.steps():
                pass
            return self.finish()

    def _wait(self, nodes):
        """Before a value that reads ``nodes``: a generator, empty here
        (:mod:`.passes_shards_c` yields while a sum over the ranks is pending)."""
        return ()

    def _torch_value(self, n) -> None:
        """The T node ``n``: once for the bucket where it has a batched form, else per tensor."""
        value = self._batched(n)
        if value is not None:
            self.stacked[n.index] = value
        else:
            self.tv[n.index] = [self._tensor(n, i) for i in range(self.nt)]

    def steps(self):
        """The step up to its outputs, level by level (a generator: see :meth:`_wait`)."""
        prog = self.prog
        # the values of the scalars that depend on hyperparameters only, for these ones
        key = tuple(self._scalar(n) for n in prog.graph.nodes if n.op == "hp" and n.index in prog.constant)
        if prog.constants[0] != key:
            prog.constants = (key, {})
        known = prog.constants[1]
        for level, todo in enumerate(prog.schedule):
            for n in todo:
                if n.index in prog.products:  # computed by the passes
                    continue
                yield from self._wait(n.args)
                if n.kind == "S":
                    if n.index in known:
                        self.sv[n.index] = known[n.index]
                    else:
                        self.sv[n.index] = self._scalar(n)
                        if n.index in prog.constant:
                            known[n.index] = self.sv[n.index]
                elif n.index in prog.aliases:  # written by the last pass (passes_rewrite.narrowed)
                    self.stacked[n.index] = self.stacked[prog.aliases[n.index]]
                else:
                    self._torch_value(n)
            if level < len(prog.passes) and prog.passes[level] is not None:
                ps = prog.passes[level]
                yield from self._wait(ps.scalars + [w for k, w in ps.buffers if k in ("tbuf", "rows", "cols")])
                self._pass(ps)

    def finish(self):
        """Writes the outputs the passes do not (0-dim state, state of another shape); the
        per-tensor values of the returns (an estimate's partial sums)."""
        prog = self.prog
        if prog.elem_outputs:
            torch._C._increment_version(self.params)
        for key, n in prog.scalar_outputs.items():
            values = torch.from_numpy(np.array(self._per_tensor(n), dtype=np.float64))
            torch._foreach_copy_([st[key] for st in self.states], list(values.unbind(0)))
        for key, n in prog.tensor_outputs.items():
            targets = [st[key] for st in self.states]
            if n.index in self.stacked:  # one shape in the bucket: the padding dropped at once
                values = self.stacked[n.index].view((self.nt,) + tuple(targets[0].shape)).unbind(0)
            else:
                values = [self._item(n, i) for i in range(self.nt)]
            torch._foreach_copy_(targets, list(values))
        return [self._per_tensor(n) for n in prog.returns]
