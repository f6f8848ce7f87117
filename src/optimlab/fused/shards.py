"""DTensor parameters (FSDP2, tensor parallelism) on the fast path, shard by shard.

A DTensor is a wrapper: its own ``data_ptr()`` is 0 and its values live in a plain local
tensor on each rank (``to_local()``). An element-wise rule's step of a sharded parameter is
the step of its local shard, computed from the local shards of its grad and state (the rules
with reductions, whose sums span the ranks: :mod:`.passes_shards`). :class:`LocalView` is a
stand-in optimizer over those local tensors: its state dicts hold the local views of the
optimizer's DTensor state, so the kernel writes through the shards' memory while
``optimizer.state`` stays DTensor and ``state_dict()``, ``get_optimizer_state_dict`` and DCP
see exactly what they see with torch's optimizers.

A DTensor parameter takes the shard path when its grad is a DTensor with the same mesh,
placements and local shape (not a pending ``Partial`` sum) and every state tensor is its
param's twin. Anything else — and the first step of a rule whose state is created lazily
(SGD's momentum buffer) — runs the reference path on the DTensor itself. Plain params of
the same group (mixed groups, params FSDP ignores) go through the same view unchanged.
"""

from __future__ import annotations

import itertools
import operator
import sys
import weakref

import torch

from .state_snapshot import StateSnapshot

_views: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_grad = operator.attrgetter("grad")
_spec = operator.attrgetter("_spec")
_local_tensor = operator.attrgetter("_local_tensor")
_shape = operator.attrgetter("shape")


def _dtensor_type():
    module = sys.modules.get("torch.distributed.tensor")  # nothing is a DTensor before this
    return getattr(module, "DTensor", None) if module is not None else None


def any_dtensor(params) -> bool:
    """Whether ``params`` holds a DTensor (cheap when torch.distributed.tensor is unused)."""
    dtensor = _dtensor_type()
    return dtensor is not None and any(map(isinstance, params, itertools.repeat(dtensor)))


class LocalView:
    """A stand-in optimizer for the fused path: local tensors, their local state.

    Persistent per (optimizer, group) so the fused path's cached plan holds from step to
    step; replaced when ``optimizer.state`` is (``load_state_dict``). It holds its optimizer
    by a weak reference: the views are the values of a ``WeakKeyDictionary`` keyed by that
    optimizer, and a strong one would keep the optimizer, its params and its state alive
    for ever after the user drops it.
    """

    def __init__(self, optimizer, group):
        self._optimizer = weakref.ref(optimizer)
        self.rule = optimizer.rule
        self.source = optimizer.state
        self.nsource = len(optimizer.state)
        self.state: dict = {}  # local param -> {key: local state tensor}
        self.group: dict = {}
        self.origin: dict = {}  # id(local param) -> the optimizer's param
        self.entries: list = []  # see _layout
        self.key = None  # what entries were computed for
        self.sharded = None  # _Sharded: the entries when every param is a DTensor on the shard path
        self.stepped: list = []  # the DTensor params the last split sent to the fused path
        self.snapshot = None  # what the layout read of the optimizer's state (StateSnapshot)

    @property
    def optimizer(self):
        return self._optimizer()

    @property
    def name(self) -> str:
        return type(self.optimizer).__name__

    def current(self, optimizer) -> bool:
        return self.source is optimizer.state and self.nsource == len(optimizer.state)

    # what the fused path asks of an optimizer
    def init_state(self, local, h) -> dict:
        return self.state.get(local, {})

    def reference_step(self, local, h) -> None:
        self.optimizer.reference_step(self.origin[id(local)], h)

    def unfused_step(self, group, locals_, h, vouch=None) -> None:
        # params the kernel did not take: the reference path on the optimizer's own tensors
        for t in locals_:
            self.optimizer.reference_step(self.origin[id(t)], h)

    def _check_grads(self, locals_) -> None:
        self.optimizer._check_grads([self.origin[id(t)] for t in locals_])


class _Sharded:
    """A group whose params all take the shard path, as checked by :func:`_layout`: what a
    step compares its grads with (the params' specs and local shapes), and the lists it
    hands on, the same objects every step (the fused path's plan then holds by identity)."""

    def __init__(self, params, entries):
        self.params = list(params)
        self.specs = [p._spec for p in params]
        self.locals = [lp for _, lp in entries]
        self.shapes = [lp.shape for lp in self.locals]

    def grads(self, params):
        """The local grads, when ``params`` are these params and every grad is a DTensor
        with its param's spec (FSDP2's backward gives it the param's very spec object) and
        local shape; else None (the full check of :func:`split` decides)."""
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return None
        grads = list(map(_grad, params))
        try:
            specs = list(map(_spec, grads))
            local = list(map(_local_tensor, grads))
        except AttributeError:  # a missing or plain grad
            return None
        if not all(map(operator.is_, specs, self.specs)) and not all(
                a is b or (a.mesh is b.mesh and a.placements == b.placements) for a, b in zip(specs, self.specs)):
            return None  # (a grad made by DTensor.from_local has its own spec object)
        return local if list(map(_shape, local)) == self.shapes else None


def _twin(t, p, dtensor) -> bool:
    """``t`` is a DTensor laid out like the DTensor ``p`` (same mesh, placements, local shape)."""
    if not isinstance(t, dtensor) or t._local_tensor.shape != p._local_tensor.shape:
        return False
    a, b = t._spec, p._spec
    return a is b or ((a.mesh is b.mesh or a.mesh == b.mesh)
                      and (a.placements is b.placements or a.placements == b.placements))


def _local(t, dtensor):
    return t._local_tensor if isinstance(t, dtensor) else t


def _layout(view, optimizer, params, h, dtensor) -> list:
    """``[(param, its local tensor or None for a plain param, or False: reference path)]``,
    and the view's local state; cached while the params with grads and the state's size
    stay the same (a param whose state is incomplete is not cached: the reference path
    completes it)."""
    fills = optimizer.rule.tensors(h)
    lazy = [k for k, fill in fills.items() if fill is None]
    entries, state, complete = [], {}, True
    for p in params:
        st = optimizer.init_state(p, h)
        if not isinstance(p, dtensor):
            entries.append((p, None))
            if p in optimizer.state:
                state[p] = st
        elif any(k not in st for k in lazy) or not all(_twin(st[k], p, dtensor) for k in fills if k in st):
            entries.append((p, False))
            complete = False
        else:
            lp = p._local_tensor
            entries.append((p, lp))
            state[lp] = {k: _local(v, dtensor) for k, v in st.items()}
    if view.state.keys() != state.keys():
        view.state.clear()
    view.state.update(state)
    view.nsource = len(optimizer.state)
    view.origin = {id(p if lp is None else lp): p for p, lp in entries if lp is not False}
    view.key = (tuple(map(id, params)), view.nsource) if complete else None
    view.snapshot = StateSnapshot(optimizer.state, params)  # a user's edit: laid out again
    uniform = complete and all(lp is not None for _, lp in entries)
    view.sharded = _Sharded(params, entries) if uniform and params else None
    return entries


def split(optimizer, group, h, required: bool):
    """The group's params with grads, as ``(view, locals, local_grads, rest)``: the view and
    the local tensors the fused path can take, and the params left to the reference path."""
    dtensor = _dtensor_type()
    views = _views.setdefault(optimizer, {})
    view = views.get(id(group))
    if view is None or not view.current(optimizer):
        view = views[id(group)] = LocalView(optimizer, group)
    sharded = view.sharded
    if sharded is not None and view.key is not None and view.snapshot.holds(optimizer.state):
        local_grads = sharded.grads(group["params"])
        if local_grads is not None:  # every param and grad as checked when the view was laid out
            view.group.clear()
            view.group.update({k: v for k, v in group.items() if k != "params"})
            view.group["params"] = sharded.locals
            view.stepped = sharded.params
            return view, sharded.locals, local_grads, []
    params = [p for p in group["params"] if p.grad is not None]
    if (view.key is None or view.key != (tuple(map(id, params)), len(optimizer.state))
            or not view.snapshot.holds(optimizer.state)):
        view.entries = _layout(view, optimizer, params, h, dtensor)
    locals_, grads, rest = [], [], []
    for p, lp in view.entries:
        g = p.grad
        if lp is None:
            locals_.append(p)
            grads.append(g)
        elif lp is not False and _twin(g, p, dtensor):
            locals_.append(lp)
            grads.append(g._local_tensor)
        else:
            rest.append(p)
    if rest and required:
        raise RuntimeError(
            f"{view.name}: fused=True is not possible here: {len(rest)} DTensor param(s) whose "
            "grad or state is not laid out like the param (or whose state does not exist yet)")
    view.group.clear()
    view.group.update({k: v for k, v in group.items() if k != "params"})
    view.group["params"] = locals_
    view.stepped = [view.origin[id(t)] for t in locals_ if isinstance(view.origin[id(t)], dtensor)]
    return view, locals_, grads, rest


def step(optimizer, group, h) -> None:
    """One step of a group holding DTensor params: the kernel on local shards where it can,
    the reference path on the DTensors elsewhere."""
    from . import try_step

    required = group.get("fused") is True
    view, locals_, grads, rest = split(optimizer, group, h, required)
    if locals_ and not try_step(view, view.group, locals_, grads, h):
        optimizer._check_grads([view.origin[id(t)] for t in locals_])
        for t in locals_:
            optimizer.reference_step(view.origin[id(t)], h)
    if view.stepped:
        torch._C._increment_version(view.stepped)
    if rest:
        optimizer._check_grads(rest)
        for p in rest:
            optimizer.reference_step(p, h)
