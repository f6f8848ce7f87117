"""The multi-tensor route of :mod:`.passes_shards`: a rule's traced graph run as batched
torch ops (:mod:`.passes_torch`) on the local shards of one bucket, where the generated C
passes are not available (no C compiler, :data:`.passes.compiled` off; with them,
:mod:`.passes_shards_c`).

Each value that sums over a sharded dimension is this rank's part of the sum, completed by
``all_reduce`` over the mesh dimensions :mod:`.shard_layout` names (and divided by the global
count for a mean). The partial sums of a bucket are completed together where the graph
allows: the per-tensor scalars that read one wait until a per-element or torch value needs
them, and later means whose arguments are known join them, so Adafactor's matrices make two
``all_reduce`` calls a step (RMS(p) with the column sums and mean(R); RMS(U)) and its
vectors one (RMS(p) with RMS(U)). On top of :mod:`.passes_torch`: x^2 is computed once for
all means of x (Adafactor's row and column means of g^2), and the parameter's update
``p - step`` is subtracted in place from each shard (``_foreach_sub_``), so ``p``, read
otherwise only by norms (``_foreach_norm``), is neither stacked nor copied back.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _reduce
from . import passes_torch
from .passes_trace import REDUCTIONS


class ShardRunner(passes_torch.TorchRunner):
    """:class:`.passes_torch.TorchRunner` on the local shards of one bucket, its partial
    sums completed over the mesh."""

    def __init__(self, prog, layout, locals_, grads, h, sums, mesh):
        super().__init__(prog, layout, locals_, h)
        self.sums, self.grads = sums, grads
        self.groups = {i: [mesh.get_group(k) for k in ks] for i, ks in sums.mesh_dims.items()}

    def run(self):
        """The per-tensor values of the program's returns (an estimate's partial sums)."""
        with np.errstate(all="ignore"):
            return _ShardGroup(self, self.params).run()


class _ShardGroup(passes_torch._Group):
    def __init__(self, runner, params):
        super().__init__(runner, params)
        self.grads = runner.grads
        self.squares: dict = {}
        self.pending: list = []  # (node index, this rank's part of its sum, count to divide by)
        self.waiting: list = []  # per-tensor scalars that read a pending sum, in graph order
        self.unsettled: set = set()
        self.early: set = set()  # means evaluated ahead of their place (_ahead)

    def _tensors(self, name):
        return self.grads if name == "grad" else super()._tensors(name)

    def _add_up(self, n, t: torch.Tensor, count=None) -> torch.Tensor:
        """``t``, this rank's part of the sum of node ``n``: completed over the ranks (and
        divided by ``count``) in place, with the other sums pending, once a value that is
        not a per-tensor scalar reads one of them (:meth:`_later`)."""
        self.pending.append((n.index, t, count))
        self.unsettled.add(n.index)
        return t

    def _later(self, n) -> bool:
        """Per-tensor scalars of a pending sum wait (Adafactor's alpha from RMS(p) waits for the
        column sums); anything else that reads one settles every pending sum with one
        ``all_reduce``. The graph alone decides, the same on every rank. (Only per-tensor
        scalars move: they hold no workspace buffer whose reuse the graph order decides.)"""
        if n.index in self.early:
            return True
        if not any(a.index in self.unsettled for a in n.args):
            return False
        if n.kind == "S" and n.op not in REDUCTIONS:
            self.waiting.append(n)
            self.unsettled.add(n.index)
            return True
        self._ahead(n)
        self._settle()
        return False

    def _ahead(self, n) -> None:
        """Before a settle: the later means that span ranks whose arguments are known now
        (Adafactor's mean(R), known once R is) join it, one ``all_reduce`` fewer. They are
        small torch values, no workspace buffer, read where they are."""
        for m in self.prog.graph.nodes[n.index + 1:]:
            if (m.index in self.runner.sums.means and m.index in self.prog.level and m.index not in self.v
                    and all(a.index in self.v and a.index not in self.unsettled for a in m.args)):
                self.v[m.index] = self._torch_value(m)
                self.early.add(m.index)

    def _settle(self) -> None:
        by_groups: dict = {}
        for index, t, count in self.pending:
            by_groups.setdefault(tuple(map(id, self.runner.groups[index])), []).append((index, t, count))
        for entries in by_groups.values():
            flat = torch.cat([t.reshape(-1).to(torch.float64) for _, t, _ in entries])
            for pg in self.runner.groups[entries[0][0]]:
                torch.distributed.all_reduce(flat, group=pg)
            offset = 0
            for _, t, count in entries:
                t.copy_(flat[offset:offset + t.numel()].view(t.shape))
                offset += t.numel()
                if count is not None:
                    t.div_(count)
        self.pending.clear()
        for n in self.waiting:
            self.v[n.index] = self._scalar(n)
        self.waiting.clear()
        self.unsettled.clear()

    def _direct(self) -> dict:
        """Besides :meth:`.passes_torch._Group._direct`: with several params, an output
        ``x - y`` of the input ``x`` of its own name (the parameter's ``p - step``) is
        subtracted in place from each destination (no stacked result to copy back), in one
        pass with ``alpha`` where ``y = s * u`` is read only there (as the one-param path's
        ``torch.sub(x, u, alpha=s)``); and that input, where nothing else reads it but norms,
        is not stacked at all."""
        out = super()._direct()
        self.in_place, self.unstacked, self.products = {}, set(), {}
        if self.nt == 1:
            return out
        readers: dict = {}
        for n in self.prog.graph.nodes:
            if n.index in self.prog.level:
                for a in n.args:
                    readers.setdefault(a.index, []).append(n)
        for key, n in self.prog.elem_outputs.items():
            x = n.args[0] if n.op == "sub" else None
            if (x is None or x.op != "ein" or x.name != key or n.args[1].kind != "E" or n.args[1] is x
                    or self._tensors(key)[0].dtype != self.compute or self.last.get(x.index) != n.index):
                continue
            self.in_place[n.index] = key
            out[n.index] = None  # written here, not copied back after the step
            if all(r is n or r.op == "red_sumsq" for r in readers.get(x.index, ())):
                self.unstacked.add(x.index)
            m = n.args[1]  # x - s * y, the product read only here: sub_(y, alpha=s), one pass
            if (m.op == "mul" and self.last.get(m.index) == n.index and x not in m.args
                    and sorted(a.kind for a in m.args) == ["E", "S"]):
                self.products[m.index] = m.args if m.args[0].kind == "S" else m.args[::-1]
                for a in m.args:  # read at n, not at m
                    if self.last.get(a.index) == m.index:
                        self.last[a.index] = n.index
        return out

    def _element(self, n):
        if n.index in self.unstacked:  # read by norms and the in-place update only
            return self._tensors(n.name)
        if n.index in self.products:  # evaluated by its reader
            return None
        key = self.in_place.get(n.index)
        if key is None:
            return super()._element(n)
        dests, m = self._tensors(key), n.args[1]
        if m.index not in self.products:
            torch._foreach_sub_(dests, list(self.v[m.index].unbind(0)))
            return None
        s, y = (self.v[a.index] for a in self.products[m.index])
        ys = y.unbind(0)
        if not isinstance(s, np.ndarray) or s.ndim == 0 or (s == s[0]).all():
            torch._foreach_sub_(dests, list(ys), alpha=float(np.asarray(s).reshape(-1)[0]))
        else:
            for d, yi, si in zip(dests, ys, s.tolist()):
                d.sub_(yi, alpha=si)
        return None

    def _reduction(self, n):
        if n.args[0].index in self.unstacked:  # red_sumsq of the unstacked input
            norms = torch._foreach_norm(self.v[n.args[0].index])
            r = torch.stack(norms).to(torch.float64).square().numpy()
        else:
            r = super()._reduction(n)
        if n.index in self.runner.groups:
            r = np.ascontiguousarray(r)
            self._add_up(n, torch.from_numpy(r))  # completed in place (shares r's memory)
        return r

    def _square(self, a):
        """x * x of the value of node ``a``, computed once for all means of it (Adafactor's
        row and column means of g^2), into a workspace buffer."""
        sq = self.squares.get(a.index)
        if sq is None:
            x = self.v[a.index]
            full = tuple(x.shape[1:]) == tuple(self.params[0].shape) and x.dtype == self.compute
            sq = self.squares[a.index] = torch.mul(x, x, out=self._buffer(None, x.dtype)) if full else x * x
        return sq

    def _mean_square(self, n):
        sq, dim = self._square(n.args[0]), dict(n.fn[2])["dim"]
        return sq.sum(dim=dim, keepdim=True).div_(sq.size(dim))  # an unsharded dim

    def _torch_value(self, n):
        mean = self.runner.sums.means.get(n.index)
        if mean is None:
            return super()._torch_value(n)
        dims, count = mean
        x = self.v[n.args[0].index]
        if n.fn[0] is _reduce.mean_square:
            x = self._square(n.args[0])
        if n.fn[2] and dict(n.fn[2]).get("dim") is not None:
            total = x.sum(dim=dims, keepdim=True)
        else:  # a 0-dim value per tensor
            total = x.reshape(self.nt, -1).sum(dim=1) if x.numel() else x.new_zeros(self.nt)
        return self._add_up(n, total.contiguous(), count)


__all__ = ["ShardRunner"]
