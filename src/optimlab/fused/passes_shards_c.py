"""The generated C passes of a rule with reductions, run on the local shards of DTensor params.

:mod:`.passes_shards` decides which DTensor params run their rule's graph on their shards
(traced for the *global* shape, so every count in it is the global one) and which sums of
it span ranks (:mod:`.shard_layout`). Here that graph runs as the plain-tensor path runs it
(:class:`.passes_eval.Runner`): its per-element chains as the generated C passes over the
local shards (``to_local()`` of an FSDP2 param is a plain contiguous CPU tensor; a pass
sees elements, never shapes), its torch values between passes once for the bucket's
stacked values, its per-tensor scalars in double with NumPy. What differs:

* a whole-tensor sum that a pass accumulates (``norm``, ``sum_``, ``dot``: Adafactor's
  RMS(p) and RMS(U)) is this rank's part of it;
* a mean along a dimension that spans ranks (Adafactor's column means of g^2 and mean(R),
  rows being sharded) is taken as this rank's sum (of squares, for ``mean_square``),
  divided by the global count once completed; a mean along an unsharded dimension (the
  row means) is local as it is. The sums of g^2 of a matrix along both dimensions are
  taken together, tensor by tensor, in blocks of rows that stay in cache (one read of g,
  no full-size g^2: :meth:`ShardRunner._matrix_sums`);
* a value that reads an incomplete sum waits (:meth:`ShardRunner._wait`): the runner yields,
  after evaluating the later means whose arguments are known (mean(R) joins the column
  sums).

All buckets of a step run together (:func:`run`): each round, every bucket runs up to its
next wait, then one ``all_reduce`` per set of process groups completes every bucket's
pending sums (in float64), so Adafactor's step makes two calls for the whole model (the
column sums and mean(R) of every matrix; then RMS(p) and RMS(U) of every param), whatever
the number of shapes. The rounds, and the sizes of the sums in each, follow from the graphs
and global shapes alone, the same on every rank. Full-size intermediates (stacked inputs,
their squares, where the graph needs them) live in a workspace kept between
steps (a fresh large tensor costs more in page faults than the operation). Adafactor's
R C^T is no such intermediate: the passes multiply R[i] * C[j] themselves
(:func:`.passes_rewrite.outer_products`).
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from .. import _reduce
from . import build, passes, shard_layout
from .passes_batch import padded
from .passes_codegen import chunk_size
from .passes_eval import Runner
from .passes_trace import call
from .trace import TraceError

_MEANS = (_reduce.mean, _reduce.mean_square)
#: elements of a block of rows summed while in cache (:meth:`ShardRunner._matrix_sums`)
BLOCK = 1 << 16
#: (id(program), global shape, sharding) -> its shard_layout.Sums (None: no local form)
_sums: dict = {}


def program(optimizer, bucket, phase, h):
    """The bucket's program cut into C passes (traced for its global shape) and where its
    sums span ranks; None where there are none (no C compiler, :data:`.passes.compiled`
    off, a graph that does not cut or has no local form)."""
    if not passes.compiled:
        return None
    p, key = bucket.params[0], bucket.key[:-1]  # the plain path's key: without "torch"
    try:
        prog = passes.program(key, h) or passes._traced(
            key, optimizer.rule, phase, h, tuple(p.shape), p.dtype, bucket.layout)
    except (TraceError, build.BuildError) as e:
        passes._warn(optimizer, e, "the multi-tensor path")
        return None
    memo = (id(prog), tuple(p.shape), bucket.sharding)
    if memo not in _sums:
        _sums[memo] = shard_layout.plan(prog, tuple(p.shape), bucket.sharding)
    return None if _sums[memo] is None else (prog, _sums[memo])


class ShardRunner(Runner):
    """:class:`.passes_eval.Runner` on the local shards ``locals_`` of one bucket (``layout``:
    the stand-in optimizer whose ``state`` maps a local shard to its local state)."""

    def __init__(self, prog, sums, layout, locals_, grads, h, mesh):
        super().__init__(prog, layout, locals_, h, torch.get_num_threads(), chunk_size)
        self.grads, self.sums = grads, sums
        self.groups = {i: [mesh.get_group(k) for k in ks] for i, ks in sums.mesh_dims.items()}
        self.shape = tuple(locals_[0].shape)
        # workspaces: values kept across a wait are this runner's own; the rest is shared by
        # the layout's runners, and forgotten at each wait (another runner may write it)
        self.own = layout.spaces.setdefault(("own", id(prog), id(locals_[0])), {})
        self.shared = layout.spaces.setdefault("shared", {})
        self.transient: set = set()  # node indices whose stacked value is in a shared buffer
        self.pending: list = []  # (node index, this rank's part of its sum, count to divide by)
        self.unsettled: set = set()
        self.early: set = set()  # means evaluated ahead of their place
        self.squares: dict = {}
        self.matrix_sums: dict = {}

    def _raw(self, name, i):
        return self.grads[i] if name == "grad" else super()._raw(name, i)

    def _buffer(self, key, shape, dtype, own=False):
        """A workspace buffer, the same one every step: this runner's own, or (x^2, stacked
        inputs: read only before the next wait) shared by the layout's runners."""
        space, key = (self.own, key) if own else (self.shared, key + (tuple(shape), dtype))
        buf = space.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = space[key] = torch.empty(shape, dtype=dtype)
        return buf

    # ---- waiting for sums over the ranks
    def _wait(self, nodes):
        if any(a.index in self.unsettled for a in nodes):
            self._ahead()
            yield
            self.squares.clear()
            for i in self.transient:
                del self.stacked[i]
            self.transient.clear()

    def _ahead(self) -> None:
        """The means that span ranks whose arguments are complete now join this wait."""
        for level in self.prog.schedule:
            for m in level:
                if (m.index in self.sums.means and m.index not in self.stacked
                        and all(self._known(a) and a.index not in self.unsettled for a in m.args)):
                    self._torch_value(m)
                    self.early.add(m.index)

    def _known(self, a) -> bool:
        return a.op == "ein" or a.index in self.stacked or a.index in self.tv or a.index in self.sv

    def steps(self):
        yield from super().steps()
        if self.unsettled:  # an estimate's partial sums
            yield

    # ---- torch values, batched
    def _stacked(self, a):
        """The value of ``a`` stacked over the bucket (padded to the program's rank)."""
        v = self.stacked.get(a.index)
        if v is not None:
            return v
        if a.op in ("ein", "tin"):
            ts = [self._input(a.name, i) for i in range(self.nt)]
            shape = padded(self.shape if a.kind == "E" else ts[0].shape, self.nt, self.prog.rank)
            if self.nt == 1:
                v = ts[0].view(shape)
            elif a.kind == "E":
                v = torch.stack(ts, out=self._buffer(("stack", a.index), (self.nt,) + self.shape, self.compute)).view(shape)
                self.transient.add(a.index)
            else:
                v = torch.stack(ts).view(shape)
        else:
            v = torch.stack(self.tv[a.index]).view(padded(self.tv[a.index][0].shape, self.nt, self.prog.rank))
        self.stacked[a.index] = v
        return v

    def _square(self, a):
        """x * x of ``a``'s value, once for all means of it (Adafactor's row and column means)."""
        sq = self.squares.get(a.index)
        if sq is None:
            x = self._stacked(a)
            sq = self.squares[a.index] = torch.mul(x, x, out=self._buffer(("square", a.index), x.shape, x.dtype))
        return sq

    def _matrix_sums(self, a):
        """{dim: the sums of x^2 along ``dim`` (-1, -2), stacked}, for every ``mean_square``
        of the input ``a`` of a matrix parameter (Adafactor's row and column means of g^2),
        or None where another form is needed. Each tensor is read once, in blocks of rows
        that stay in cache while their square is summed both ways: no stacked copy, no
        full-size x^2 (the column sums are added block by block)."""
        if a.index in self.matrix_sums:
            return self.matrix_sums[a.index]
        dims = {dict(m.fn[2] or ()).get("dim") for m in self.prog.graph.nodes if m.index in self.prog.level
                and m.op == "call" and m.fn[0] is _reduce.mean_square and m.args[0] is a}
        out = None
        if a.op == "ein" and len(self.shape) == 2 and dims and dims <= {-1, -2} and self.prog.rank == 2:
            n, m = self.shape
            out = {d: torch.zeros((self.nt, n, 1) if d == -1 else (self.nt, 1, m), dtype=self.compute) for d in dims}
            rows = max(1, BLOCK // max(m, 1))
            sq = self._buffer(("block", a.index), (min(rows, n), m), self.compute)
            for i in range(self.nt):
                x = self._input(a.name, i)
                for r in range(0, n, rows):
                    xb = x[r:r + rows]
                    sqb = torch.mul(xb, xb, out=sq[:xb.shape[0]])
                    if -1 in out:
                        torch.sum(sqb, dim=-1, keepdim=True, out=out[-1][i, r:r + rows])
                    if -2 in out:
                        out[-2][i].add_(sqb.sum(dim=-2, keepdim=True))
        self.matrix_sums[a.index] = out
        return out

    def _torch_value(self, n) -> None:
        if n.index in self.early:
            return
        f, kws = n.fn[0], dict(n.fn[2] or ())
        mean, dim = self.sums.means.get(n.index), kws.get("dim")
        sums = self._matrix_sums(n.args[0]) if f is _reduce.mean_square else None
        if sums is not None:  # this rank's sums; along a dimension it holds whole, the mean
            if mean is not None:
                self.pending.append((n.index, sums[dim], mean[1]))
                self.unsettled.add(n.index)
                self.stacked[n.index] = sums[dim]
            else:
                self.stacked[n.index] = sums[dim] / self.shape[dim]
        elif mean is not None:  # this rank's sum: completed, then divided by the global count
            dims, count = mean
            x = self._square(n.args[0]) if f is _reduce.mean_square else self._stacked(n.args[0])
            if dim is not None:
                total = x.sum(dim=dims, keepdim=True)
            else:  # one number per tensor
                total = x.reshape(self.nt, -1).sum(dim=1) if x.numel() else x.new_zeros(self.nt)
                total = total.view(padded((), self.nt, self.prog.rank))
            self.pending.append((n.index, total, count))
            self.unsettled.add(n.index)
            self.stacked[n.index] = total
        elif f in _MEANS and isinstance(dim, int) and dim < 0:  # along a dimension this rank holds whole
            x = self._stacked(n.args[0])
            if f is _reduce.mean_square:
                self.stacked[n.index] = self._square(n.args[0]).sum(dim=dim, keepdim=True).div_(x.size(dim))
            else:
                self.stacked[n.index] = x.mean(dim=dim, keepdim=True)
        elif f is operator.matmul and self._outer(n):
            a, b = (self._stacked(a) for a in n.args)  # an outer product: one product an element
            shape = torch.broadcast_shapes(a.shape, b.shape)
            self.stacked[n.index] = torch.mul(a, b, out=self._buffer(("product", n.index), shape, a.dtype, own=True))
        elif n.op == "tin":
            self._stacked(n)
        elif f in shard_layout._ELEMENTWISE and all(self._uniform(a) for a in n.args if a.kind == "S"):
            self.stacked[n.index] = call(n, [self._number(a) if a.kind == "S" else self._stacked(a) for a in n.args])
        else:
            super()._torch_value(n)

    def _outer(self, n) -> bool:
        """``n`` is ``a @ b`` of T values, an outer product: (..., k, 1) @ (..., 1, l)."""
        a, b = (self.prog.graph.meta_of(x) for x in n.args)
        return (all(x.kind == "T" for x in n.args) and a.dim() >= 2 and b.dim() >= 2
                and a.shape[-1] == 1 and b.shape[-2] == 1)

    def _uniform(self, a) -> bool:
        v = self.sv[a.index]
        return not isinstance(v, np.ndarray) or v.ndim == 0 or bool((v.view(np.uint64) == v.view(np.uint64)[0]).all())

    def _number(self, a) -> float:
        """The per-tensor scalar ``a``, the same for every tensor, as the Python number the
        per-tensor call gets."""
        return float(np.asarray(self.sv[a.index]).reshape(-1)[0])

    def _pass(self, ps) -> None:
        super()._pass(ps)
        for n in ps.reductions:  # this rank's parts of the whole-tensor sums
            if n.index in self.groups:
                v = self.sv[n.index] = np.ascontiguousarray(self.sv[n.index], dtype=np.float64)
                self.pending.append((n.index, torch.from_numpy(v), None))
                self.unsettled.add(n.index)


def run(runners) -> list:
    """Step ``runners`` together (module docstring); each one's :meth:`~.Runner.finish`."""
    live = [(r, r.steps()) for r in runners]
    with np.errstate(all="ignore"):
        while live:
            waiting = []
            for r, steps in live:
                for _ in steps:  # up to its next wait, if any
                    waiting.append((r, steps))
                    break
            _settle([r for r, _ in waiting])
            live = waiting
        return [r.finish() for r in runners]


def _settle(runners) -> None:
    """Completes the pending sums of ``runners``: one ``all_reduce`` per set of process groups."""
    by_groups: dict = {}
    for r in runners:
        for index, t, count in r.pending:
            pgs = r.groups[index]
            by_groups.setdefault(tuple(map(id, pgs)), (pgs, []))[1].append((t, count))
        r.pending.clear()
        r.unsettled.clear()
    for pgs, entries in by_groups.values():
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t, _ in entries])
        for pg in pgs:
            torch.distributed.all_reduce(flat, group=pg)
        offset = 0
        for t, count in entries:
            t.copy_(flat[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()
            if count is not None:
                t.div_(count)


__all__ = ["program", "run", "ShardRunner"]
