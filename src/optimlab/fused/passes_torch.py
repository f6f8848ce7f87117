"""A :class:`~.passes.Program`'s graph run with batched torch ops: the multi-tensor path of
the rules with reductions (LAMB, LARS, Adafactor, Muon, Prodigy's estimate) where the
generated C passes are not available (no C compiler).

Nothing here knows a rule: it evaluates the traced graph of :mod:`.passes_trace`, node by
node in creation order, on all params of one shape and dtype at once, stacked along a new
leading dimension (a view when there is one param, no copy):

* ``E`` nodes (per element) are the same torch functions the reference path calls
  (:data:`.passes_trace.TORCH_OPS`) on the stacked tensors, one call per node for the
  whole group; per-tensor scalars meet them as ``(n, 1, ..., 1)`` tensors;
* ``T`` nodes (torch values of another shape) replay their recorded call on the stacked
  values when the call is element-wise, a matrix product of matrices or a mean along a
  negative dimension (Adafactor's row and column means and their outer product: one call
  each for the group), else once per tensor, as the reference path does;
* ``S`` nodes (one number per tensor) are evaluated in double with NumPy; whole-tensor sums
  (``norm``, ``sum_``, ``dot``) are one batched reduction in the compute dtype (as the
  reference path takes them; torch's double-accumulating forms are several times slower).

The outputs (parameter, state of any shape, 0-dim state) are written back after the whole
graph is evaluated, so every value reads the inputs of this step, as in the passes.
"""

from __future__ import annotations

import operator
import weakref

import numpy as np
import torch

from .. import _reduce
from .passes_eval import _NP
from .passes_trace import REDUCTIONS, TORCH_OPS, _to, call

#: per-element operators as torch functions that write into a given buffer (``out=``): the
#: same kernels as the operators of the reference path, without allocating a full-size
#: result per operation (a fresh large tensor costs more in page faults than the operation)
_OUT = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
        "neg": torch.neg, "sqrt": torch.sqrt, "abs": torch.abs, "max": torch.maximum,
        "min": torch.minimum, "sign": torch.sign, "clamp_min": torch.clamp_min,
        "clamp_max": torch.clamp_max, "where": torch.where, "and": torch.logical_and,
        **{op: getattr(torch, op) for op in ("gt", "ge", "lt", "le", "eq", "ne")}}
#: params of this many elements or more are evaluated one by one (views, no stacking)
GROUP_NUMEL = 1 << 16
_MASKS = {"and", "gt", "ge", "lt", "le", "eq", "ne"}
#: optimizer -> {(program, shape, number of params): {(shape, dtype): [buffers]}}
_workspaces: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

#: recorded calls that give the same values on a stacked (n, ...) tensor as per tensor
_STACKABLE = set(TORCH_OPS.values()) | {_reduce.lerp, _reduce.low_precision, _to}
_ALONG_NEGATIVE_DIM = {_reduce.mean, _reduce.mean_square}


class TorchRunner:
    """One step of ``prog`` (traced without passes) on ``params`` of any shapes; the params
    of one shape are evaluated together (see the module docstring)."""

    def __init__(self, prog, optimizer, params, h):
        self.prog, self.h, self.optimizer = prog, h, optimizer
        self.params = params
        self.hps = {name: (key, index) for name, key, index in prog.hps}

    def run(self):
        groups: dict = {}
        for p in self.params:  # large params alone: stacking them would cost a copy each
            key = tuple(p.shape) if p.numel() < GROUP_NUMEL else (tuple(p.shape), id(p))
            groups.setdefault(key, []).append(p)
        with np.errstate(all="ignore"):
            out = [_Group(self, ps).run() for ps in groups.values()]
        return [np.concatenate([o[i] for o in out]) for i in range(len(self.prog.returns))]


class _Group:
    """The params of one shape (see :class:`TorchRunner`)."""

    def __init__(self, runner, params):
        self.runner, self.params = runner, params
        self.prog, self.h = runner.prog, runner.h
        self.states = [runner.optimizer.state[p] for p in params]
        self.nt = len(params)
        self.rank = params[0].dim()
        self.compute = self.prog.graph.compute
        self.v: dict = {}  # node index -> float | (nt,) float64 array | stacked tensor
        spaces = _workspaces.setdefault(runner.optimizer, {})
        self.buffers = spaces.setdefault((id(self.prog), tuple(params[0].shape), self.nt), {})
        self.free = {k: list(v) for k, v in self.buffers.items()}
        self.owned: dict = {}  # node index -> its buffer, given back after the node's last use

    def _buffer(self, n, dtype):
        """A full-size buffer of this group's workspace for the value of ``n`` (None: kept
        to the end of the step)."""
        shape = (self.nt,) + tuple(self.params[0].shape)
        free = self.free.setdefault((shape, dtype), [])
        buf = free.pop() if free else None
        if buf is None:
            buf = torch.empty(shape, dtype=dtype)
            self.buffers.setdefault((shape, dtype), []).append(buf)
        if n is not None:
            self.owned[n.index] = buf
        return buf

    # ---- inputs
    def _stack(self, ts, n=None):
        if self.nt == 1 and ts[0].dtype == self.compute:
            return ts[0].unsqueeze(0)
        if n is None:  # small (a 'T' input)
            x = torch.stack(ts)
            return x if x.dtype == self.compute else x.to(self.compute)
        buf = self._buffer(n, self.compute)
        if ts[0].dtype == self.compute:
            return torch.stack(ts, out=buf)
        torch._foreach_copy_(list(buf.unbind(0)), ts)
        return buf

    def _tensors(self, name):
        if name == "param":
            return self.params
        if name == "grad":
            return [p.grad for p in self.params]
        return [st[name] for st in self.states]

    def _scalar(self, n):
        if n.op == "const":
            return n.value
        if n.op == "hp":
            key, index = self.runner.hps[n.name]
            v = getattr(self.h, key)
            return float(v if index is None else v[index])
        if n.op == "sin":
            return torch.stack([st[n.name] for st in self.states]).to(torch.float64).reshape(-1).numpy()
        return _NP[n.op](*(self.v[a.index] for a in n.args))  # under run()'s np.errstate

    # ---- stacked values
    def _rank(self, n) -> int:
        """The rank of ``n``'s value per tensor."""
        return 0 if n.kind == "S" else self.rank if n.kind == "E" else n.meta.dim()

    def _arg(self, a, rank: int, dtype, mask: bool = False):
        """``a``'s value as an operand of a per-tensor value of ``rank`` dimensions."""
        v = self.v[a.index]
        if a.kind == "S":
            if isinstance(v, np.ndarray) and v.ndim and (v == v[0]).all():
                v = v[0]  # one number for the group (a step count, a bias correction)
            if not isinstance(v, np.ndarray) or v.ndim == 0:
                return bool(v) if mask else float(v)
            t = torch.from_numpy(np.ascontiguousarray(v))
            t = t != 0 if mask else t.to(dtype)
            return t.view((self.nt,) + (1,) * rank)
        extra = rank - self._rank(a)
        if extra > 0:
            v = v.view((self.nt,) + (1,) * extra + tuple(v.shape[1:]))
        return v

    def _elementwise(self, n, fn, rank: int):
        dtype = self.compute if n.kind == "E" else n.meta.dtype
        mask = {0} if n.op == "where" else {0, 1} if n.op == "and" else set()
        values = [self._arg(a, rank, dtype, i in mask) for i, a in enumerate(n.args)]
        if n.op == "where" and not any(isinstance(x, torch.Tensor) for x in values[1:]):
            values[1] = torch.tensor(values[1], dtype=dtype)
        return fn(*values) if fn is not None else call(n, values)

    def _stacked_call(self, n) -> bool:
        f, _, kws = n.fn
        if f in _STACKABLE:
            return True
        if f is operator.matmul:
            return all(self._rank(a) >= 2 for a in n.args)
        dim = dict(kws).get("dim")
        return f in _ALONG_NEGATIVE_DIM and isinstance(dim, int) and dim < 0

    def _mean_square(self, n):
        """mean(x^2) along a dimension as a sum of squares: torch's contiguous reduction,
        several times faster than the reference's ``norm(x, dim)^2`` along the rows of a
        matrix (the same sum, rounded once more or less: ~1 ulp of the compute dtype)."""
        x, dim = self.v[n.args[0].index], dict(n.fn[2])["dim"]
        if tuple(x.shape[1:]) == tuple(self.params[0].shape) and x.dtype == self.compute:
            sq = self._buffer(n, x.dtype)
            torch.mul(x, x, out=sq)
            del self.owned[n.index]
            self.free[(tuple(sq.shape), sq.dtype)].append(sq)  # read below, free after
        else:
            sq = x * x
        return sq.sum(dim=dim, keepdim=True).div_(x.size(dim))

    def _torch_value(self, n):
        if n.op == "tin":
            return self._stack(self._tensors(n.name))
        if self._stacked_call(n):
            f, full = n.fn[0], tuple(n.meta.shape) == self.prog.graph.shape  # (global: shards)
            if f is operator.matmul and full:  # Adafactor's R C^T, into a buffer
                a, b = (self.v[a.index] for a in n.args)
                out = self._buffer(n, n.meta.dtype)
                if a.shape[-1] == 1:  # an outer product: each element is one product
                    return torch.mul(a, b, out=out)
                return torch.matmul(a, b, out=out)
            if f is _reduce.mean_square:
                return self._mean_square(n)
            return self._elementwise(n, None, n.meta.dim())
        outs = []
        for i in range(self.nt):
            values = []
            for a in n.args:
                v = self.v[a.index]
                if a.kind == "S":
                    values.append(float(v[i]) if isinstance(v, np.ndarray) and v.ndim else float(v))
                else:
                    values.append(v[i])
            outs.append(call(n, values))
        return torch.stack(outs)

    def _scaled(self, n):
        """``x + s * y`` / ``x - s * y`` whose product is read only here and whose ``s`` is
        one number for the group: (x, y, s) for torch's ``add``/``sub`` with ``alpha``
        (one pass fewer: the product is not stored)."""
        if n.op not in ("add", "sub") or self.nt != 1:
            return None
        x, m = n.args
        if m.op != "mul" or m.index not in self.deferred or x.kind != "E":
            return None
        s, y = m.args if m.args[0].kind == "S" else m.args[::-1]
        return self.v[x.index], self.v[y.index], float(np.asarray(self.v[s.index]).reshape(-1)[0])

    def _element(self, n):
        if n.op == "ein":
            return self._stack(self._tensors(n.name), n)
        if n.index in self.deferred:  # evaluated with its user (see _scaled)
            return None
        scaled = self._scaled(n)
        if scaled is not None:
            x, y, alpha = scaled
            out = self.direct.get(n.index)
            if out is None:
                out = self._reused(n, self.compute)
            if out is None:
                out = self._buffer(n, self.compute)
            return _OUT[n.op](x, y, alpha=alpha, out=out)
        if n.op == "float32":
            return self.v[n.args[0].index].to(torch.float32).to(self.compute)
        mask = {0} if n.op == "where" else {0, 1} if n.op == "and" else set()
        values = [self._arg(a, self.rank, self.compute, i in mask) for i, a in enumerate(n.args)]
        first = 1 if n.op == "where" else 0
        # max(x, c) with one number c for the group: torch.clamp_min (the same values, NaN
        # included; a fifth faster than maximum with a 0-dim tensor)
        bound = (n.op in ("max", "min") and isinstance(values[0], torch.Tensor)
                 and isinstance(values[1], float))
        for i in range(first, len(values) if not bound else 0):
            if not isinstance(values[i], torch.Tensor) and (i == first or n.op in ("where", "max", "min")):
                values[i] = torch.tensor(values[i], dtype=self.compute)
        dtype = torch.bool if n.op in _MASKS else self.compute
        out = self.direct.get(n.index)
        if out is None:
            out = self._reused(n, dtype)
        if out is None:
            out = self._buffer(n, dtype)
        if n.op == "where" and isinstance(values[0], bool):  # one condition for the group
            return out.copy_(values[1] if values[0] else values[2])
        if bound:
            return _OUT["clamp_min" if n.op == "max" else "clamp_max"](*values, out=out)
        return _OUT[n.op](*values, out=out)

    def _reused(self, n, dtype):
        """The buffer of an argument whose last use is ``n`` (the operation runs in place)."""
        for a in n.args:
            buf = self.owned.get(a.index)
            if buf is not None and self.last.get(a.index) == n.index and buf.dtype == dtype:
                del self.owned[a.index]
                self.owned[n.index] = buf
                return buf
        return None

    def _direct(self) -> dict:
        """Outputs computed straight into their destination (one param of the compute dtype):
        {node index: the destination as a (1, ...) view}, where nothing reads the old
        value after the output's node."""
        if self.nt != 1:
            return {}
        out, inputs = {}, {n.name: n for n in self.prog.graph.nodes if n.op == "ein"}
        for key, n in self.prog.elem_outputs.items():
            t = self._tensors(key)[0]
            old = inputs.get(key)
            if (n.op == "ein" or n.index in out or t.dtype != self.compute or not t.is_contiguous()
                    or (old is not None and old.index in self.last and (self.last[old.index] or 0) > n.index)):
                continue
            out[n.index] = t.unsqueeze(0)
        return out

    def _reduction(self, n):
        """A whole-tensor sum per param, taken in the compute dtype as the reference path
        takes it (``vector_norm``, ``sum``, ``dot``), then carried in double."""
        x = [self.v[a.index] for a in n.args]
        x = [v.reshape(self.nt, -1) if v.numel() else v.new_zeros(self.nt, 0) for v in x]  # an empty shard
        if n.op == "red_sumsq":
            r = torch.linalg.vector_norm(x[0], dim=1).to(torch.float64).square()
        elif n.op == "red_sum":
            r = x[0].sum(dim=1).to(torch.float64)
        else:
            r = torch.linalg.vecdot(x[0], x[1], dim=1).to(torch.float64)
        return r.numpy()

    # ---- the step
    def _later(self, n) -> bool:
        """Whether ``n`` is evaluated later than in graph order (see :mod:`.passes_shards`,
        whose sums wait for other ranks); then :meth:`_settle` evaluates it."""
        return False

    def _settle(self) -> None:
        """Evaluate what :meth:`_later` put off (called before the outputs are written)."""

    def run(self):
        prog = self.prog
        last = self.last = {}  # node index -> the last node that reads it (None: an output)
        for n in prog.graph.nodes:
            if n.index in prog.level:
                for a in n.args:
                    last[a.index] = n.index
        self.direct = self._direct()
        self.deferred = set()  # products read once, by an add/sub with alpha (see _scaled)
        if self.nt == 1:
            for n in prog.graph.nodes:
                if n.index in prog.level and n.op in ("add", "sub") and n.args[1].op == "mul":
                    m = n.args[1]
                    if (last.get(m.index) == n.index and n.args[0].kind == "E"
                            and sorted(a.kind for a in m.args) == ["E", "S"]):
                        self.deferred.add(m.index)
                        for a in m.args:  # read at n, not at m
                            if last.get(a.index) == m.index:
                                last[a.index] = n.index
        for n in (list(prog.elem_outputs.values()) + list(prog.tensor_outputs.values())
                  + list(prog.scalar_outputs.values()) + list(prog.returns)):
            last[n.index] = None  # kept to the end
        with torch.no_grad():
            for n in prog.graph.nodes:
                if n.index not in prog.level or self._later(n):
                    continue
                if n.op in REDUCTIONS:
                    self.v[n.index] = self._reduction(n)
                elif n.kind == "S":
                    self.v[n.index] = self._scalar(n)
                elif n.kind == "E":
                    self.v[n.index] = self._element(n)
                else:
                    self.v[n.index] = self._torch_value(n)
                for a in n.args:
                    if last.get(a.index) == n.index and a.index in self.owned:
                        buf = self.owned.pop(a.index)
                        self.free[(tuple(buf.shape), buf.dtype)].append(buf)
            self._settle()
            outputs = []
            for key, n in list(prog.elem_outputs.items()) + list(prog.tensor_outputs.items()):
                if n.index not in self.direct:
                    outputs.append((self._tensors(key), self.v[n.index]))
            for key, n in prog.scalar_outputs.items():
                v = np.broadcast_to(np.asarray(self.v[n.index], dtype=np.float64), (self.nt,))
                outputs.append(([st[key] for st in self.states], torch.from_numpy(np.array(v))))
            for targets, value in outputs:  # value: (nt,) + each target's shape
                if self.nt == 1:
                    targets[0].copy_(value[0])
                else:
                    torch._foreach_copy_(targets, value.unbind(0))
        return [self._per_tensor(n) for n in prog.returns]

    def _per_tensor(self, n) -> np.ndarray:
        v = self.v[n.index]
        if n.kind == "S":
            return np.broadcast_to(np.asarray(v, dtype=np.float64), (self.nt,)).copy()
        return v.reshape(self.nt).to(torch.float64).numpy()
