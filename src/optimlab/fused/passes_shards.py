"""Rules with reductions (Adafactor, LAMB, LARS) on DTensor params, on their local shards.

The element-wise rules step a DTensor on its local shard as they would a plain tensor
(:mod:`.shards`). A rule that reads whole tensors cannot: Adafactor's column means of g^2
and RMS(p) span every rank's rows. Its graph (:mod:`.passes_trace`) is still the one to
run: traced for the *global* shape, so every count in it (``x.numel()``, ``x.size(d)``) is
the global one, and run by :mod:`.passes_torch` on the local shards, where each value that
sums over a sharded dimension is a partial sum that one ``all_reduce`` completes:

* a whole-tensor sum of a per-element value (``norm``, ``sum_``, ``dot``: RMS(p), RMS(u))
  is added over the mesh dimensions that shard the parameter;
* a mean along a dimension (``mean``, ``mean_square``) is a local sum, added over the mesh
  dimensions that shard that dimension (none for Adafactor's row means: FSDP2 shards rows),
  divided by the global count.

Which values are local blocks, and which graphs have a local form at all, follows from
global shapes and placements alone (:mod:`.shard_layout`), the same on every rank, so the
ranks call the same collectives in the same order. Adafactor's ``row_var`` (n, 1) is
sharded like the rows, ``col_var`` (1, m) replicated (every rank adds the same column
sums); the state stays DTensor, redistributed once to that layout where it was created in
another, so ``state_dict()``, ``get_optimizer_state_dict`` and DCP read it as the step
keeps it. Anything else goes to the reference path, which runs on the DTensors themselves.

Cost: the params of one global shape are stacked as in :mod:`.passes_torch` (large ones
run alone, as views); on top of it, x^2 is computed once for all means of x (Adafactor's
row and column means of g^2), and the parameter's update ``p - step`` is subtracted in
place from each shard (``_foreach_sub_``), so ``p``, read otherwise only by norms
(``_foreach_norm``), is neither stacked nor copied back. The partial sums of a bucket
are completed together where the graph allows: the per-tensor scalars that read one wait
until a per-element or torch value needs them, and later means whose arguments are known
join them, so Adafactor's matrices make two ``all_reduce`` calls a step (RMS(p) with the
column sums and mean(R); RMS(U)) and its vectors one (RMS(p) with RMS(U)).
"""

from __future__ import annotations

import operator
import weakref

import numpy as np
import torch

from .. import _reduce
from . import passes, passes_shards_c, passes_torch, shard_layout, shards
from .passes_trace import REDUCTIONS

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_grad = operator.attrgetter("grad")
_spec = operator.attrgetter("_spec")
_local_tensor = operator.attrgetter("_local_tensor")
#: optimizer -> {(id(group), phase): _Layout}
_layouts: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: (id(program), shape, sharding) -> its shard_layout.Sums, or None where the program cannot run on shards
_sums: dict = {}


class _Bucket:
    """DTensor params of one global shape, dtype, state layout and sharding: one program."""

    def __init__(self, key, layout, sharding):
        self.key, self.layout, self.sharding = key, layout, sharding
        self.params: list = []
        self.locals: list = []
        self.specs: list = []


class _Layout:
    """A group's DTensor params sorted into buckets, their local state, and the params left
    to the reference path; a stand-in optimizer for :class:`.passes_torch.TorchRunner`
    (``state``: local param -> its local state). Kept while the params with grads, the
    hyperparameters' flags and ``optimizer.state`` (the object and its size) are the same:
    ``load_state_dict`` replaces it."""

    def __init__(self, optimizer, key):
        self.state: dict = {}
        self.buckets: list = []
        self.rest: list = []
        self.key, self.source = key, optimizer.state
        self.spaces: dict = {}  # workspaces of :mod:`.passes_shards_c`

    def current(self, optimizer, key) -> bool:
        return self.key == key and self.source is optimizer.state


def _lay_out(optimizer, params, h, hk, dtensor, phase) -> _Layout:
    out = _Layout(optimizer, None)
    fills = optimizer.rule.tensors(h)
    buckets: dict = {}
    for p in params:
        sharding = shard_layout.sharding(p) if isinstance(p, dtensor) else None
        if (sharding is None or p.dtype not in _DTYPES or p.device_mesh.device_type != "cpu"
                or p.is_complex()):
            out.rest.append(p)
            continue
        st = optimizer.init_state(p, h)
        layout, ok = {}, True
        for key in fills:
            v = st.get(key)
            if v is None:
                layout[key] = None
                continue
            if not isinstance(v, dtensor) or v.device_mesh != p.device_mesh:
                ok = False
                break
            layout[key] = "E" if v.shape == p.shape else "T"
            if layout[key] == "T":
                layout[("shape", key)] = tuple(v.shape)
        if not ok:
            out.rest.append(p)
            continue
        key = passes._key(optimizer.rule, phase, hk, tuple(p.shape), p.dtype, layout) + ("torch",)
        bkey = (key, sharding, id(p.device_mesh))
        bucket = buckets.get(bkey)
        if bucket is None:
            bucket = buckets[bkey] = _Bucket(key, layout, sharding)
        bucket.params.append(p)
    for bucket in buckets.values():
        p = bucket.params[0]
        try:
            prog = _program(optimizer, bucket, phase, h)
        except passes.TraceError as e:
            passes._warn(optimizer, e)
            out.rest.extend(bucket.params)
            continue
        memo = (id(prog), tuple(p.shape), bucket.sharding)
        if memo not in _sums:
            _sums[memo] = shard_layout.plan(prog, tuple(p.shape), bucket.sharding)
        if _sums[memo] is None:
            out.rest.extend(bucket.params)
            continue
        for q in bucket.params:
            st = optimizer.state[q]
            for key, kind in bucket.layout.items():
                if not isinstance(key, str) or kind is None:
                    continue
                want = (q.placements if kind == "E" else
                        shard_layout.placements(tuple(st[key].shape), q, bucket.sharding))
                if tuple(st[key].placements) != tuple(want):  # the same choice on every rank
                    st[key] = st[key].redistribute(q.device_mesh, want)
            local = q._local_tensor
            bucket.locals.append(local)
            bucket.specs.append(q._spec)
            out.state[local] = {k: v._local_tensor if isinstance(v, dtensor) else v for k, v in st.items()}
        out.buckets.append(bucket)
    return out


def _program(optimizer, bucket, phase, h):
    """The bucket's traced pass program (memoised by :mod:`.passes`), for its global shape."""
    p = bucket.params[0]
    return passes.program(bucket.key, h) or passes._traced(
        bucket.key, optimizer.rule, phase, h, tuple(p.shape), p.dtype, bucket.layout)


def _same_layout(a, b) -> bool:
    """Two DTensor specs with one mesh, placements, global shape and dtype (a grad made by
    ``DTensor.from_local`` has its own spec object)."""
    return a is b or ((a.mesh is b.mesh or a.mesh == b.mesh) and a.placements == b.placements
                      and a.shape == b.shape and a.tensor_meta.dtype == b.tensor_meta.dtype)


def _local_grads(bucket, dtensor):
    """The local grads of the bucket's params, and which params they fit (None: all):
    a DTensor grad with its param's mesh, placements, global shape and dtype."""
    grads = list(map(_grad, bucket.params))
    try:
        specs = list(map(_spec, grads))
        if all(map(operator.is_, specs, bucket.specs)):  # FSDP2's grads share the param's spec
            return list(map(_local_tensor, grads)), None
    except AttributeError:  # a plain grad
        pass
    fits = [isinstance(g, dtensor) and _same_layout(g._spec, spec)
            for g, spec in zip(grads, bucket.specs)]
    return [g._local_tensor for g, ok in zip(grads, fits) if ok], None if all(fits) else fits


def step(optimizer, group, params, h) -> list:
    """One step of a whole-tensor rule for the DTensor params of ``params`` (with grads)
    whose graph runs on their shards; returns the other params."""
    return _run(optimizer, group, params, h, "update")[0]


def estimate(optimizer, group, params, h):
    """Phase 1 of a two-phase rule (Prodigy) for the DTensor params whose graph runs on
    their shards: (the other params, the sums of their partial sums or None)."""
    rest, sums = _run(optimizer, group, params, h, "estimate")
    if not sums:
        return rest, None
    return rest, [float(np.sum(np.concatenate([s[i] for s in sums]))) for i in range(len(sums[0]))]


def _run(optimizer, group, params, h, phase):
    if not shards.any_dtensor(params) or not passes._wanted(group):
        return params, []
    dtensor = shards._dtensor_type()
    hk = (passes.hkey(h), passes._extra_key(h))
    layouts = _layouts.setdefault(optimizer, {})
    layout = layouts.get((id(group), phase))
    key = (tuple(map(id, params)), hk, len(optimizer.state))
    if layout is None or not layout.current(optimizer, key):
        layout = layouts[(id(group), phase)] = _lay_out(optimizer, params, h, hk, dtensor, phase)
        layout.key = (key[0], key[1], len(optimizer.state))  # with the state just created
    rest, sums, stepped, runners = list(layout.rest), [], [], []
    for bucket in layout.buckets:
        grads, fits = _local_grads(bucket, dtensor)
        ps, locals_ = bucket.params, bucket.locals
        if fits is not None:  # the same on every rank: placements and shapes only
            rest.extend(p for p, ok in zip(ps, fits) if not ok)
            ps = [p for p, ok in zip(ps, fits) if ok]
            locals_ = [t for t, ok in zip(locals_, fits) if ok]
        if not ps:
            continue
        mesh, compiled = ps[0].device_mesh, passes_shards_c.program(optimizer, bucket, phase, h)
        if compiled is None:
            prog = _program(optimizer, bucket, phase, h)
            plan = _sums[(id(prog), tuple(ps[0].shape), bucket.sharding)]
        # large params one by one, as passes_torch does (views, no stacked copies); decided on
        # the global size, so that every rank makes the same collectives
        n = 1 if ps[0].numel() // mesh.size() >= passes_torch.GROUP_NUMEL else len(ps)
        for i in range(0, len(ps), n):
            if compiled is not None:  # the C passes, all buckets together below
                runners.append(passes_shards_c.ShardRunner(*compiled, layout, locals_[i:i + n], grads[i:i + n], h, mesh))
            else:
                sums.append(_ShardRunner(prog, layout, locals_[i:i + n], grads[i:i + n], h, plan, mesh).run())
        stepped.extend(ps)
    sums.extend(passes_shards_c.run(runners))
    if stepped and phase == "update":
        torch._C._increment_version(stepped)
    return rest, sums


class _ShardRunner(passes_torch.TorchRunner):
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


__all__ = ["step", "estimate"]
