"""The C kernel as a custom op, ``optimlab::fused_step``, for ``torch.compile`` to call in its graph.

Under Dynamo (:mod:`.compiled`: ``MODE = "kernel"``, or the default ``"step_op"`` where the
step is traced into a larger compiled function) a group the C kernel can take is
stepped by one call of this op per bucket (params sharing one kernel), traced *into* the
graph rather than kept out behind a graph break::

    fused_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state,
               Tensor(c!)[] scalars, Tensor hp, int kernel) -> ()

``state`` holds the per-element state buffers of the kernel (``kernel.buffers`` after
``param`` and ``grad``), name-major: all ``exp_avg`` then all ``exp_avg_sq``; ``scalars``
the 0-dim state it reads or writes (``step``), name-major too. ``hp`` is one float64
vector of the kernel's hyperparameter leaves (``kernel.hps`` order), stacked in the graph
from the group's 0-dim tensors (``lr``, ``betas``..., see :mod:`.compiled`), so a
schedule that updates them in place never recompiles; its memory is the kernel's ``hp``
argument as is. ``kernel`` indexes :data:`_KERNELS`, a constant of the graph.

The op declares what the kernel writes (``mutates_args``: params, state, scalars; grads
are only read), so functionalization wraps it in ``auto_functionalized`` and Inductor's
re-inplacing pass turns that back into the in-place call on the graph inputs: no copies
(``tests/test_compile.py::test_inductor_runs_the_kernel_op_in_place``). The fake impl
does nothing: the op returns nothing and changes no metadata.

The CPU impl is the eager fused step minus its checks: the compiled graph's guards
(dtype, device, shape, strides of every param, grad and state tensor) keep the
conditions :func:`group_plan` checked once per compilation, so a step only builds the
pointer tables and calls the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._math import number_tensor
from ..rules.base import hyperparameters
from .build import pointers, pool
from .plan import SUPPORTED, Plan, Unfusable, _same_layout, addressable, hkey, kernel

_KERNELS: list = []  # index -> plan.Kernel, the op's ``kernel`` argument
_ids: dict = {}
_calls: dict = {}  # (kernel, *numels) -> _Call
_fill: list = [None]  # build.pointers(), looked up once a plan is made
_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel

_lib = torch.library.Library("optimlab", "FRAGMENT")
_lib.define("fused_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state, Tensor(c!)[] scalars, "
            "Tensor hp, int kernel) -> ()")


def _register(kern) -> int:
    index = _ids.get(id(kern))
    if index is None:
        index = _ids[id(kern)] = len(_KERNELS)
        _KERNELS.append(kern)
    return index


class _Call:
    """The kernel's argument tables for one kernel and one list of param sizes, reused every
    step: one uint64 array of data addresses (params, grads, state rows, then the 0-dim
    state), the element offsets and the per-tensor scalar scratch."""

    def __init__(self, kern, params: list, nlists: int):
        nt = len(params)
        real = SUPPORTED[params[0].dtype][1]
        self.nt, self.fn = nt, kern.fn
        self.cap = nt * nlists
        self.table = np.zeros(max(self.cap, 1), dtype=np.uint64)
        self.offs = np.zeros(nt + 1, dtype=np.int64)
        self.offs[1:] = np.cumsum([p.numel() * real for p in params])
        self.scratch = np.zeros(max(nt * kern.nsc, 1), dtype=np.float64)
        base = self.table.ctypes.data
        self.base = base
        self.sst = base + 8 * nt * len(kern.buffers)
        self.tail = (self.scratch.ctypes.data, self.offs.ctypes.data)
        self.pool = pool()


def _call(kernel: int, params: list, nlists: int) -> _Call:
    key = (kernel, *map(_numel, params))
    found = _calls.get(key)
    if found is None:
        found = _calls[key] = _Call(_KERNELS[kernel], params, nlists)
    return found


def _fused_step(params, grads, state, scalars, hp, kernel: int) -> None:
    """The kernel on the tensors' memory (see the module docstring)."""
    if not params:
        return
    if hp.dtype != torch.float64 or not hp.is_contiguous():
        hp = hp.to(torch.float64).contiguous()
    nt = len(params)
    c = _call(kernel, params, 2 + (len(state) + len(scalars)) // nt)
    lists = (params, grads, state, scalars)
    fill = _fill[0]
    if fill is None or fill(lists, c.base, c.cap, 0b1101) < 0:  # without the C++ helper
        c.table[:] = [*map(_ptr, params), *map(_ptr, grads), *map(_ptr, state), *map(_ptr, scalars)] or [0]
        for ts in (params, state, scalars):
            if ts:
                torch._C._increment_version(ts)
    c.fn(nt, c.base, c.sst, hp.data_ptr(), *c.tail, torch.get_num_threads(), c.pool)


_lib.impl("fused_step", _fused_step, "CPU")


@torch.library.register_fake("optimlab::fused_step", lib=_lib)
def _(params, grads, state, scalars, hp, kernel):
    return None


@dataclass(eq=False)
class KernelBucket:
    """Params of one group sharing one C kernel (positions in ``group["params"]``)."""

    index: tuple
    kernel: int
    state: tuple  # per-element state buffers, kernel.buffers order after param and grad
    scalars: tuple  # 0-dim state read or written
    hps: tuple  # (key, index) leaves, kernel.hps order


@dataclass(eq=False)
class KernelPlan:
    buckets: list
    hps: list  # (key, index) leaves read by any bucket
    signs: list  # (key, index) of numbers a rule branched on: their sign is guarded


def group_plan(optimizer, group, grad_scale):
    """The kernel plan of one group, or None where the C kernel cannot take every param with a
    grad as it stands (a dense CPU tensor it can address, grads laid out as their params,
    a working compiler): the caller then prints the graph or keeps the group out."""
    from . import _disabled

    rule = optimizer.rule
    if (_disabled() or group.get("fused") is False or group.get("foreach") is True
            or group.get("differentiable") or not getattr(rule, "elementwise", True)
            or getattr(rule, "estimate", None) is not None):
        return None
    params = [p for p in group["params"] if p.grad is not None]
    h = hyperparameters(group, optimizer.defaults)
    h.grad_scale = grad_scale
    fills = rule.tensors(h)
    members: dict = {}
    position = {id(p): i for i, p in enumerate(group["params"])}
    for p in params:
        g = p.grad
        if not (g.layout == torch.strided and _same_layout(g, p) and addressable(g)):
            return None
        st = optimizer.init_state(p, h)
        try:
            members.setdefault(Plan._check(p, st, fills, rule), []).append(p)
        except Unfusable:
            return None
    key = hkey(h)
    _fill[0] = pointers(compile=True)
    buckets, hps, signs = [], [], []
    for (dtype, sstate, lazy), ps in members.items():
        try:
            kern = kernel(rule, h, key, SUPPORTED[dtype][0], sstate, lazy)
        except Unfusable:
            return None
        leaves = tuple((k, i) for _, k, i in kern.hps)
        buckets.append(KernelBucket(tuple(position[id(p)] for p in ps), _register(kern),
                                    tuple(kern.buffers[2:]), tuple(kern.scalar_inputs), leaves))
        for name, k, i in kern.hps:
            if k != "grad_scale" and (k, i) not in hps:
                hps.append((k, i))
                (signs if name in kern.trace.graph.compared else []).append((k, i))
    return KernelPlan(buckets, hps, signs)


def _hp(optimizer, group, key, index):
    v = optimizer.grad_scale if key == "grad_scale" else group[key]
    if index is not None:
        v = v[index]
    return v.to(torch.float64) if isinstance(v, torch.Tensor) else number_tensor(v, torch.float64)


def run(optimizer, group, plan: KernelPlan) -> None:
    """One group's step while Dynamo traces: one ``optimlab::fused_step`` per bucket."""
    params = group["params"]
    for b in plan.buckets:
        ps = [params[i] for i in b.index]
        state, scalars = [], []
        if b.state or b.scalars:
            states = [optimizer.state[p] for p in ps]
            for name in b.state:
                for p, st in zip(ps, states):
                    if name not in st:  # lazily created state (SGD's momentum buffer): only written
                        st[name] = torch.empty_like(p, memory_format=torch.preserve_format)
                state.extend(st[name] for st in states)
            for name in b.scalars:
                scalars.extend(st[name] for st in states)
        hp = torch.stack([_hp(optimizer, group, k, i) for k, i in b.hps]) if b.hps \
            else torch.zeros(1, dtype=torch.float64)
        torch.ops.optimlab.fused_step(ps, [p.grad for p in ps], state, scalars, hp, b.kernel)
