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

Which values are local blocks follows from their global shapes alone, right-aligned with
the parameter's: a dimension of the parameter's size that the parameter shards is this
rank's slice of it; a dimension of size 1 (a broadcast or reduced one) is whole on every
rank. So Adafactor's ``row_var`` (n, 1) is sharded like the rows and ``col_var`` (1, m) is
replicated: every rank adds the same column sums, so every rank holds the same, complete
``col_var``. The state stays DTensor; state created in another layout (``p.new_zeros``
makes both replicated; a checkpoint may hold any) is redistributed once to this one, so
``state_dict()``, ``get_optimizer_state_dict`` and DCP read the state as the step keeps it.

The graph is accepted only where this holds for each of its torch values: element-wise
calls, outer products (``(n, 1) @ (1, m)``), means along a dimension, state whose shape is
laid out as above. A parameter whose mesh placements are not ``Shard``/``Replicate`` (a
pending ``Partial``, FSDP2 + TP's strided shards), whose grad is not laid out like it, not
on CPU, or whose graph holds another call (Muon's Newton-Schulz), or a size-1 sharded
dimension with torch values in the graph (a (1, m) weight: its rows are on one rank only),
is left to the reference path, which runs on the DTensors themselves. Every choice here
depends on global shapes and placements only, the same on every rank, so the ranks call
the same collectives in the same order.
"""

from __future__ import annotations

import operator
import weakref

import numpy as np
import torch

from .. import _reduce
from . import passes, passes_torch, shards
from .passes_trace import REDUCTIONS, TORCH_OPS, _to

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: recorded calls whose value is element-wise in their arguments (a local block of local blocks)
_ELEMENTWISE = set(TORCH_OPS.values()) | {_reduce.lerp, _reduce.low_precision, _to}
_MEANS = (_reduce.mean, _reduce.mean_square)
#: optimizer -> {id(group): _Layout}
_layouts: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: (id(program), shape, sharding) -> _Sums, or None where the program cannot run on shards
_sums: dict = {}


def _sharding(p):
    """``((param dim, mesh dims that shard it), ...)`` of the DTensor ``p``, or None where a
    placement is neither ``Shard`` nor ``Replicate``."""
    from torch.distributed.tensor import Replicate, Shard

    dims: dict = {}
    for k, placement in enumerate(p.placements):
        if type(placement) is Shard:
            dims.setdefault(placement.dim % max(p.dim(), 1), []).append(k)
        elif type(placement) is not Replicate:
            return None
    return tuple((d, tuple(ks)) for d, ks in sorted(dims.items()))


def _aligned(shape, param_shape) -> bool:
    """``shape`` broadcasts to the parameter's, right-aligned, each dim its size or 1."""
    offset = len(param_shape) - len(shape)
    return offset >= 0 and all(s in (1, param_shape[offset + j]) for j, s in enumerate(shape))


def _split_dims(shape, param_shape, sharding) -> dict:
    """The dims (negative) of a value of global ``shape`` that are local slices on this
    rank: {dim: the mesh dims sharding it}."""
    out = {}
    for d, ks in sharding:
        i = d - len(param_shape)
        if -i <= len(shape) and shape[i] == param_shape[d] > 1:
            out[i] = ks
    return out


class _Sums:
    """Where a program's local values are partial sums: ``mesh_dims[node index]`` (the mesh
    dims to add over), ``means[node index] = (reduced dims, global count)`` for means along
    dims of a torch value that span ranks."""

    def __init__(self):
        self.mesh_dims: dict = {}
        self.means: dict = {}


def _plan(prog, shape, sharding) -> _Sums | None:
    """The partial sums of ``prog`` on shards of a parameter of global ``shape`` sharded as
    ``sharding``, or None where a value of its graph has no local form (module docstring)."""
    sums = _Sums()
    whole = tuple(sorted({k for _, ks in sharding for k in ks}))
    tiny = any(shape[d] == 1 for d, _ in sharding)
    for n in prog.graph.nodes:
        if n.index not in prog.level:
            continue
        if n.op in REDUCTIONS:
            if whole:
                sums.mesh_dims[n.index] = whole
            continue
        if n.kind != "T":
            continue
        if tiny or not _aligned(tuple(n.meta.shape), shape):
            return None
        if n.op == "tin" or (n.op != "call" and n.op in TORCH_OPS):
            continue
        f, _, kws = n.fn
        metas = [prog.graph.meta_of(a) for a in n.args]
        if f is operator.matmul:
            a, b = (m.shape for m in metas)
            if len(a) < 2 or len(b) < 2 or a[-1] != 1 or b[-2] != 1:
                return None  # not an outer product: a contraction over a sharded dim
        elif f in _MEANS:
            x = tuple(metas[0].shape)
            dim = dict(kws).get("dim")
            dims = tuple(range(-len(x), 0)) if dim is None else ((dim - len(x) if dim >= 0 else dim),)
            split = _split_dims(x, shape, sharding)
            ks = tuple(sorted({k for d in dims for k in split.get(d, ())}))
            if ks:
                sums.mesh_dims[n.index] = ks
                sums.means[n.index] = (dims, float(np.prod([x[d] for d in dims])))
        elif f not in _ELEMENTWISE:
            return None
    return sums


def _placements(shape, param, sharding):
    """The placements of a state of global ``shape`` laid out as the module docstring says."""
    from torch.distributed.tensor import Replicate, Shard

    out = [Replicate()] * param.device_mesh.ndim
    for i, ks in _split_dims(shape, tuple(param.shape), sharding).items():
        for k in ks:
            out[k] = Shard(len(shape) + i)
    return tuple(out)


class _Bucket:
    """DTensor params of one global shape, dtype, state layout and sharding: one program."""

    def __init__(self, key, layout, sharding):
        self.key, self.layout, self.sharding = key, layout, sharding
        self.params: list = []
        self.locals: list = []


class _Layout:
    """A group's DTensor params sorted into buckets, their local state, and the params left
    to the reference path; a stand-in optimizer for :class:`.passes_torch.TorchRunner`
    (``state``: local param -> its local state), kept from step to step."""

    def __init__(self):
        self.state: dict = {}
        self.buckets: list = []
        self.rest: list = []
        self.key = None
        self.signature = None


def _signature(optimizer, params) -> tuple:
    state = optimizer.state
    return tuple(tuple(map(id, state[p].values())) if p in state else None for p in params)


def _lay_out(optimizer, params, h, hk, dtensor) -> _Layout:
    out = _Layout()
    fills = optimizer.rule.tensors(h)
    buckets: dict = {}
    for p in params:
        sharding = _sharding(p) if isinstance(p, dtensor) else None
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
        key = passes._key(optimizer.rule, "update", hk, tuple(p.shape), p.dtype, layout) + ("torch",)
        bkey = (key, sharding, id(p.device_mesh))
        bucket = buckets.get(bkey)
        if bucket is None:
            bucket = buckets[bkey] = _Bucket(key, layout, sharding)
        bucket.params.append(p)
    for bucket in buckets.values():
        p = bucket.params[0]
        try:
            prog = passes.program(bucket.key, h) or passes._traced(
                bucket.key, optimizer.rule, "update", h, tuple(p.shape), p.dtype, bucket.layout)
        except passes.TraceError as e:
            passes._warn(optimizer, e)
            out.rest.extend(bucket.params)
            continue
        memo = (id(prog), tuple(p.shape), bucket.sharding)
        if memo not in _sums:
            _sums[memo] = _plan(prog, tuple(p.shape), bucket.sharding)
        if _sums[memo] is None:
            out.rest.extend(bucket.params)
            continue
        for q in bucket.params:
            st = optimizer.state[q]
            for key, kind in bucket.layout.items():
                if not isinstance(key, str) or kind is None:
                    continue
                want = q.placements if kind == "E" else _placements(tuple(st[key].shape), q, bucket.sharding)
                if tuple(st[key].placements) != tuple(want):  # the same choice on every rank
                    st[key] = st[key].redistribute(q.device_mesh, want)
            local = q._local_tensor
            bucket.locals.append(local)
            out.state[local] = {k: v._local_tensor if isinstance(v, dtensor) else v for k, v in st.items()}
        out.buckets.append(bucket)
    return out


def _grad_fits(p, dtensor) -> bool:
    g = p.grad
    return (isinstance(g, dtensor) and g.shape == p.shape and g.dtype == p.dtype
            and (g._spec is p._spec or (g.device_mesh == p.device_mesh and g.placements == p.placements)))


def step(optimizer, group, params, h) -> list:
    """One step of a whole-tensor rule for the DTensor params of ``params`` (with grads)
    whose graph runs on their shards; returns the other params."""
    if not shards.any_dtensor(params) or not passes._wanted(group):
        return params
    dtensor = shards._dtensor_type()
    hk = (passes.hkey(h), passes._extra_key(h))
    layouts = _layouts.setdefault(optimizer, {})
    layout = layouts.get(id(group))
    key = (tuple(map(id, params)), hk, len(optimizer.state))
    if layout is None or layout.key != key or layout.signature != _signature(optimizer, params):
        layout = layouts[id(group)] = _lay_out(optimizer, params, h, hk, dtensor)
        layout.key, layout.signature = key, _signature(optimizer, params)
    rest = list(layout.rest)
    stepped = []
    for bucket in layout.buckets:
        fits = [_grad_fits(p, dtensor) for p in bucket.params]
        ps = [p for p, ok in zip(bucket.params, fits) if ok]
        rest.extend(p for p, ok in zip(bucket.params, fits) if not ok)
        if not ps:
            continue
        locals_ = [t for t, ok in zip(bucket.locals, fits) if ok]
        prog = passes.program(bucket.key, h) or passes._traced(
            bucket.key, optimizer.rule, "update", h, tuple(ps[0].shape), ps[0].dtype, bucket.layout)
        sums = _sums[(id(prog), tuple(ps[0].shape), bucket.sharding)]
        _ShardRunner(prog, layout, locals_, h, sums, ps).run()
        stepped.extend(ps)
    if stepped:
        torch._C._increment_version(stepped)
    return rest


class _ShardRunner(passes_torch.TorchRunner):
    """:class:`.passes_torch.TorchRunner` on the local shards of one bucket, its partial
    sums completed over the mesh."""

    def __init__(self, prog, layout, locals_, h, sums, params):
        super().__init__(prog, layout, locals_, h)
        self.sums, self.dparams = sums, params
        mesh = params[0].device_mesh
        self.groups = {i: [mesh.get_group(k) for k in ks] for i, ks in sums.mesh_dims.items()}

    def run(self):
        with np.errstate(all="ignore"):
            _ShardGroup(self, self.params).run()
        return []


class _ShardGroup(passes_torch._Group):
    def __init__(self, runner, params):
        super().__init__(runner, params)
        self.grads = [p.grad._local_tensor for p in runner.dparams]

    def _tensors(self, name):
        return self.grads if name == "grad" else super()._tensors(name)

    def _add_up(self, n, t: torch.Tensor) -> torch.Tensor:
        for pg in self.runner.groups.get(n.index, ()):
            torch.distributed.all_reduce(t, group=pg)
        return t

    def _reduction(self, n):
        r = super()._reduction(n)
        if n.index in self.runner.groups:
            r = self._add_up(n, torch.from_numpy(np.ascontiguousarray(r))).numpy()
        return r

    def _torch_value(self, n):
        mean = self.runner.sums.means.get(n.index)
        if mean is None:
            return super()._torch_value(n)
        dims, count = mean
        x = self.v[n.args[0].index]
        if n.fn[0] is _reduce.mean_square:
            x = x * x
        if n.fn[2] and dict(n.fn[2]).get("dim") is not None:
            total = x.sum(dim=dims, keepdim=True)
        else:  # a 0-dim value per tensor
            total = x.reshape(self.nt, -1).sum(dim=1) if x.numel() else x.new_zeros(self.nt)
        return self._add_up(n, total.contiguous()).div_(count)


__all__ = ["step"]
