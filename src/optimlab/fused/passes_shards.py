"""Rules with reductions (Adafactor, LAMB, LARS, Prodigy) on DTensor params, on their local shards.

The element-wise rules step a DTensor on its local shard as they would a plain tensor
(:mod:`.shards`). A rule that reads whole tensors cannot: Adafactor's column means of g^2
and RMS(p) span every rank's rows. Its graph (:mod:`.passes_trace`) is still the one to
run: traced for the *global* shape, so every count in it (``x.numel()``, ``x.size(d)``) is
the global one, and run on the local shards, where each value that sums over a sharded
dimension is a partial sum that an ``all_reduce`` completes:

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

This module sorts the params into buckets (one global shape, dtype, state layout and
sharding) and runs each by one of two routes: the generated C passes of the plain-tensor
path on the shards, all buckets' sums completed together (:mod:`.passes_shards_c`; two
``all_reduce`` calls a step for Adafactor); or, without them (no C compiler,
:data:`.passes.compiled` off, a graph that does not cut into passes), the same graph as
batched torch ops, bucket by bucket (:mod:`.passes_shards_torch`). Large params (from
:data:`.passes_torch.GROUP_NUMEL` elements a rank) run one by one, as views.
"""

from __future__ import annotations

import operator
import weakref

import numpy as np
import torch

from . import passes, passes_shards_c, passes_torch, shard_layout, shards
from .passes_shards_torch import ShardRunner as _ShardRunner
from .state_snapshot import StateSnapshot

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_grad = operator.attrgetter("grad")
_spec = operator.attrgetter("_spec")
_local_tensor = operator.attrgetter("_local_tensor")
#: optimizer -> {(id(group), phase): _Layout}
_layouts: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: (id(program), shape, sharding) -> its shard_layout.Sums, or None where the program cannot run on shards
_sums: dict = {}
#: (bucket key, sharding, mesh) -> whether every rank takes the bucket's C passes (_agree)
_routes: dict = {}


class _Bucket:
    """DTensor params of one global shape, dtype, state layout and sharding: one program."""

    def __init__(self, key, layout, sharding):
        self.key, self.layout, self.sharding = key, layout, sharding
        self.params: list = []
        self.locals: list = []
        self.specs: list = []
        self.c_route = False  # every rank of the mesh has the bucket's C passes (_agree)


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
        self.compiled = 0
        self.snapshot = None  # what it read of the optimizer's state (a user's edit: laid out again)

    def current(self, optimizer, key) -> bool:
        return (self.key == key and self.source is optimizer.state and self.snapshot is not None
                and self.snapshot.holds(optimizer.state))


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
    _agree(optimizer, out.buckets, phase, h)
    return out


def _agree(optimizer, buckets, phase, h) -> None:
    """Whether each bucket takes the C passes, decided by all ranks together: the C route and
    the torch route complete their sums by different collectives, so a rank that could not
    build the C passes (no compiler on that node, a kernel cache it cannot write, a compile
    that timed out) taking the torch route alone would leave the ranks waiting on different
    ``all_reduce`` calls (gloo aborts the process). One ``all_reduce(MIN)`` per mesh the first
    time a bucket's program and sharding are met (the same buckets on every rank, global
    shapes and placements only); remembered, so a layout made again asks nothing."""
    votes: dict = {}
    for bucket in buckets:
        key = _route_key(bucket)
        if key not in _routes:
            ok = passes_shards_c.program(optimizer, bucket, phase, h) is not None
            votes.setdefault(key[-1], {})[key] = ok
    for mesh, mine in votes.items():
        agreed = torch.tensor(list(mine.values()), dtype=torch.int32)
        for dim in range(mesh.ndim):
            torch.distributed.all_reduce(agreed, torch.distributed.ReduceOp.MIN, group=mesh.get_group(dim))
        if sum(agreed.tolist()) < sum(mine.values()):
            passes._warn(optimizer, "another rank cannot run them",
                         "their passes as torch ops on every rank, so that their collectives match")
        _routes.update(zip(mine, map(bool, agreed.tolist())))
    for bucket in buckets:
        bucket.c_route = _routes[_route_key(bucket)]


def _route_key(bucket):
    return bucket.key, bucket.sharding, bucket.params[0].device_mesh


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
        layout.snapshot = StateSnapshot(optimizer.state, params)
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
        mesh = ps[0].device_mesh
        compiled = passes_shards_c.program(optimizer, bucket, phase, h) if bucket.c_route else None
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
    layout.compiled = sum(r.nt for r in runners)  # params stepped by the C passes (tests)
    if stepped and phase == "update":
        torch._C._increment_version(stepped)
    return rest, sums


__all__ = ["step", "estimate"]
