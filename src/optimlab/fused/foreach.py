"""The multi-tensor path: everything the C kernel does not take, as ``torch._foreach_*`` ops.

The program is printed from the same traced graph as the C kernel
(:mod:`.foreach_codegen`), so there is no new copy of the math. It serves params on
other devices (CUDA and other accelerators run torch's multi-tensor kernels), layouts
the kernel does not take, and CPUs without a C compiler, where it replaces one small
operation per tensor per node of the per-tensor reference path by one call per node
for the whole group.

Like ``torch.optim``'s ``_group_tensors_by_device_and_dtype``, params are bucketed by
device, dtype, the dtypes of their state and which lazily created state (SGD's
``momentum_buffer``) exists; a bucket is split further by the values of its 0-dim state
(``step``), so that every scalar sub-expression is one Python float per call, computed
in double exactly as the reference path computes it. bfloat16/float16 params (and any
buffer not already in the compute type) are computed on float32 copies that are rounded
back on store, like the reference path; complex params are updated as real views. A
lazily created state tensor is allocated on its first step, as the reference path does.

Selection (per param group): ``foreach=False`` never takes this path (the reference
path runs instead); ``foreach=None`` takes it for every param the C kernel did not
take; ``foreach=True`` takes it for every param (the C kernel is not used, as in
torch.optim, where an explicit ``foreach=True`` wins over the default fused path) and
raises ``RuntimeError`` where it cannot (a non-strided param, a rule it cannot trace).
``differentiable=True`` groups use the reference path.
"""

from __future__ import annotations

import torch

from .. import engine
from .foreach_codegen import Program, generate
from .plan import hkey
from .trace import TraceError, hp_value, trace

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}
_programs: dict = {}


class ForeachUnavailable(Exception):
    """A reason why a group cannot take the multi-tensor path."""


def program(rule, h, key, lazy: frozenset, writable: frozenset) -> Program:
    """The generated program for one pattern (memoised, failures too), like the C kernels."""
    k = (rule.fn, rule.tensors, tuple(rule.scalars.items()), key, lazy, writable)
    found = _programs.get(k)
    if found is None:
        try:
            found = generate(trace(rule, h, lazy), writable)
        except TraceError as e:
            found = e
        _programs[k] = found
    if isinstance(found, Exception):
        raise ForeachUnavailable(str(found)) from found
    return found


def _takes(p: torch.Tensor) -> bool:
    return p.layout == torch.strided and (p.is_floating_point() or p.is_complex())


def _values(tensors: list) -> list:
    """Python floats of 0-dim state tensors, in one call where they stack."""
    try:
        return torch.stack(tensors).tolist()
    except (RuntimeError, TypeError):
        return [float(t) for t in tensors]


def step(optimizer, group, params: list, h) -> list:
    """Step ``params`` (all with grads) of ``group`` on the multi-tensor path where it
    applies; returns the params left for the reference path."""
    mode = group.get("foreach")
    if mode is False or group.get("differentiable") or not params:
        return params
    name = type(optimizer).__name__
    rule = optimizer.rule
    fills = rule.tensors(h)
    buckets: dict = {}
    rest = []
    for p in params:
        if not _takes(p):
            if mode:
                raise RuntimeError(f"{name}: foreach=True is not possible for a param with layout "
                                   f"{p.layout} and dtype {p.dtype}")
            rest.append(p)
            continue
        st = optimizer.init_state(p, h)
        lazy = frozenset(k for k, f in fills.items() if f is None and k in st)
        sdtypes = tuple(st[k].dtype for k in fills if k in st)
        buckets.setdefault((p.device, p.dtype, lazy, sdtypes), []).append((p, st))
    key = hkey(h)
    try:  # every program first: a failure leaves every tensor untouched
        jobs = [_Bucket(rule, h, key, lazy, members) for (_, _, lazy, _), members in buckets.items()]
    except ForeachUnavailable as e:
        if mode:
            raise RuntimeError(f"{name}: foreach=True is not possible here: {e}") from None
        return params
    for job in jobs:
        job.run(h)
    return rest


class _Bucket:
    """Params sharing one program: their buffers as lists, in the program's order."""

    def __init__(self, rule, h, key, lazy, members):
        self.params = ps = [p for p, _ in members]
        self.states = [st for _, st in members]
        real = _REAL.get(ps[0].dtype, ps[0].dtype)
        self.compute = torch.float32 if real in _LOW_PRECISION else real
        grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in ps]
        self.storage = {"param": [engine.as_real(p) for p in ps], "grad": [engine.as_real(g) for g in grads]}
        for k in rule.tensors(h):
            if k in self.states[0]:
                self.storage[k] = [engine.as_real(st[k]) for st in self.states]
        # buffers not in the compute dtype are computed on scratch copies
        self.copied = frozenset(b for b, ts in self.storage.items() if any(t.dtype != self.compute for t in ts))
        self.prog = program(rule, h, key, lazy, self.copied)

    def run(self, h) -> None:
        tr, storage, sts = self.prog.trace, self.storage, self.states
        for b in tr.buffers:  # lazily created state, allocated on its first step; only written
            if b not in storage:
                for p, st in zip(self.params, sts):
                    st[b] = torch.empty_like(p, memory_format=torch.preserve_format)
                storage[b] = [engine.as_real(st[b]) for st in sts]
        lists = []
        for b in tr.buffers:
            ts = storage[b]
            if b in self.copied:
                ts = ([t.to(self.compute) for t in ts] if b in tr.reads
                      else [torch.empty_like(t, dtype=self.compute) for t in ts])
            lists.append(ts)
        hp = [hp_value(h, k, i) for _, k, i in tr.hps]
        split: dict = {(): None}
        if tr.scalar_inputs:
            columns = [_values([st[k] for st in sts]) for k in tr.scalar_inputs]
            split = {}
            for i, row in enumerate(zip(*columns)):
                split.setdefault(row, []).append(i)
        for si, idx in split.items():
            c, souts = self.prog.scalars(hp, si)
            whole = len(split) == 1
            self.prog.elements(lists if whole else [[ts[i] for i in idx] for ts in lists], c)
            targets = sts if whole else [sts[i] for i in idx]
            for k, v in zip(tr.scalar_outputs, souts):
                ts = [st[k] for st in targets]
                torch._foreach_copy_(ts, [torch.tensor(v, dtype=torch.float64)] * len(ts))
        for j, b in enumerate(tr.buffers):
            if b in self.copied and b in tr.elem_outputs:
                torch._foreach_copy_(storage[b], lists[j])
