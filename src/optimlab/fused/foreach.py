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

import operator
import weakref

import torch

from .foreach_codegen import Program, generate
from .plan import hkey
from .state_snapshot import StateSnapshot
from .trace import TraceError, hp_value, trace

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}
_programs: dict = {}
_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_data_ptr = torch.Tensor.data_ptr
_grad = operator.attrgetter("grad")
_layout = operator.attrgetter("layout")
_dtype = operator.attrgetter("dtype")
_version = operator.attrgetter("_version")


#: elements per chunk: the program runs over the group chunk by chunk, so that its
#: temporaries stay in cache (2 MB of float32 per temporary list, not the whole group's);
#: a program of one in-place op without scratch copies runs whole (chunks only cost it
#: more calls: plain SGD on mix A, one thread, 9.6 ms chunked vs 8.7 whole, torch 9.0).
#: Measured without a compiler on mix A (28M params, 32 tensors), idle, 2026-12-03:
#: 2**19 gives RMSprop 1.22x, Adadelta 1.98x, NAdam 1.52x torch's best, against 0.45x,
#: 0.85x, 0.75x with 2**22 (one run over nearly the whole group) and 0.95-1.23x with 2**17
#: (more slices, one more parallel region each). On a heavily loaded machine 2**19 read
#: slower than 2**22: the extra parallel regions wait for a core.
CHUNK = 2**19


def chunk_plan(numels: list, splittable: frozenset) -> list:
    """Chunks of about :data:`CHUNK` elements: each a list of ``(tensor index, lo, hi)``,
    ``lo`` None for the whole tensor. A tensor with more than ``CHUNK`` elements whose
    buffers are all contiguous (``splittable``) is cut into flat slices at multiples of
    ``CHUNK`` (the same alignment as the whole tensor), each its own chunk but the last;
    smaller tensors are gathered into chunks until they hold ``CHUNK`` elements."""
    chunks, cur, size = [], [], 0
    for i, n in enumerate(numels):
        if i in splittable:
            lo = 0
            while n - lo > CHUNK:
                chunks.append([(i, lo, lo + CHUNK)])
                lo += CHUNK
            cur.append((i, lo, n))
            size += n - lo
        else:
            cur.append((i, None, None))
            size += n
        if size >= CHUNK:
            chunks.append(cur)
            cur, size = [], 0
    if cur or not chunks:
        chunks.append(cur)
    return chunks


def _flat(ts: list, i: int, cache: dict) -> torch.Tensor:
    t = cache.get(i)
    if t is None:
        t = cache[i] = ts[i].view(-1)
    return t


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


def _as_real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _takes(p: torch.Tensor) -> bool:
    return p.layout == torch.strided and (p.is_floating_point() or p.is_complex())


def _ptrs(params: list) -> list:
    """data_ptr of each param (0 for layouts without storage, such as sparse)."""
    try:
        return list(map(_data_ptr, params))
    except RuntimeError:
        return [_data_ptr(p) if p.layout == torch.strided else 0 for p in params]


def _values(tensors: list) -> list:
    """Python floats of 0-dim state tensors, in one call where they stack."""
    try:
        return torch.stack(tensors).tolist()
    except (RuntimeError, TypeError):
        return [float(t) for t in tensors]


def invalidate(optimizer) -> None:
    """Forget ``optimizer``'s cached bucket lists (after replacing state tensors by hand)."""
    _plans.pop(optimizer, None)


def step(optimizer, group, params: list, h, vouch=None) -> list:
    """Step ``params`` (all with grads) of ``group`` on the multi-tensor path where it
    applies; returns the params left for the reference path.

    The buckets' lists are cached per group, like the C kernel's plans, and rebuilt when
    the params with grads, their storage, ``optimizer.state`` or the flag/zero pattern of
    the hyperparameters change (``vouch``: see :meth:`optimlab.RuleOptimizer.unfused_step`)."""
    mode = group.get("foreach")
    if mode is False or group.get("differentiable") or not params:
        return params
    key = hkey(h)
    plans = _plans.get(optimizer)
    if plans is None:
        plans = _plans[optimizer] = {}
    plan = plans.get(id(group))
    if plan is None or not plan.holds(optimizer, group, params, key, vouch):
        plan = plans[id(group)] = _Plan(optimizer, group, params, h, key, vouch)
    if plan.error is not None:
        plans.pop(id(group), None)
        if mode:
            raise RuntimeError(f"{type(optimizer).__name__}: foreach=True is not possible here: {plan.error}")
        return params
    for bucket in plan.buckets:
        bucket.run(h)
    if plan.lazy_created:
        plans.pop(id(group), None)  # lazily created state: next step, another program
    return plan.rest


class _Plan:
    """One group's buckets; see :func:`step` for its validity."""

    def __init__(self, optimizer, group, params, h, key, vouch=None):
        self.group, self.key, self.state, self.vouch = group, key, optimizer.state, vouch
        self.given = params  # the list object: the same one again, under the same vouch, is unchanged
        self.params = list(params)
        self.pptrs = _ptrs(params)
        self.error = None
        self.rest = []
        self.lazy_created = False
        rule = optimizer.rule
        fills = rule.tensors(h)
        members: dict = {}
        for p in params:
            if not _takes(p):
                if group.get("foreach"):
                    raise RuntimeError(f"{type(optimizer).__name__}: foreach=True is not possible for a "
                                       f"param with layout {p.layout} and dtype {p.dtype}")
                self.rest.append(p)
                continue
            st = optimizer.init_state(p, h)
            lazy = frozenset(k for k, f in fills.items() if f is None and k in st)
            sdtypes = tuple(st[k].dtype for k in fills if k in st)
            members.setdefault((p.device, p.dtype, lazy, sdtypes), []).append((p, st))
        self.snapshot = StateSnapshot(optimizer.state, self.params)
        try:  # every program first: a failure leaves every tensor untouched
            self.buckets = [_Bucket(self, rule, h, key, lazy, m) for (_, _, lazy, _), m in members.items()]
        except ForeachUnavailable as e:
            self.error, self.buckets = str(e), []

    def holds(self, optimizer, group, params, key, vouch=None) -> bool:
        if not (self.group is group and self.key == key and self.state is optimizer.state):
            return False
        if vouch is not None and vouch is self.vouch and params is self.given:
            return True  # the C path's plan checked them and the state, and handed on its own list
        return (len(self.params) == len(params) and all(map(operator.is_, self.params, params))
                and self.pptrs == _ptrs(params) and self.snapshot.holds(optimizer.state))


class _Bucket:
    """Params sharing one program: their buffers as lists, in the program's order."""

    def __init__(self, plan, rule, h, key, lazy, members):
        self.plan, self.rule, self.h, self.key, self.lazy = plan, rule, h, key, lazy
        self.params = ps = [p for p, _ in members]
        self.states = [st for _, st in members]
        self.complex = ps[0].is_complex()
        real = _REAL.get(ps[0].dtype, ps[0].dtype)
        self.compute = torch.float32 if real in _LOW_PRECISION else real
        self.storage = {"param": [_as_real(p) for p in ps]}
        for k in rule.tensors(h):
            if k in self.states[0]:
                self.storage[k] = [_as_real(st[k]) for st in self.states]
        # buffers not in the compute dtype are computed on scratch copies
        self.copied = frozenset(b for b, ts in self.storage.items() if any(t.dtype != self.compute for t in ts))
        self.prog = self._program(self._grads())
        self.scalar_state = None  # 0-dim state tensors per key, listed on the first run
        self.scalar_dtypes = None  # their dtypes, per key (the "stored" roundings)
        self._known: dict = {}  # key -> (version counters, values) after this path's last write
        self.numels = [t.numel() for t in self.storage["param"]]  # real elements
        self.total = sum(self.numels)
        self.big = [i for i, n in enumerate(self.numels) if n > CHUNK]
        self._chunk_plans: dict = {}

    def _grads(self) -> list:
        grads = list(map(_grad, self.params))
        if set(map(_layout, grads)) != {torch.strided}:
            grads = [g.to_dense() if g.layout != torch.strided else g for g in grads]
        return list(map(torch.view_as_real, grads)) if self.complex else grads

    def _program(self, grads) -> Program:
        copy_grad = set(map(_dtype, grads)) != {self.compute}
        if copy_grad != ("grad" in self.copied):
            self.copied = self.copied ^ {"grad"}
        return program(self.rule, self.h, self.key, self.lazy, self.copied)

    def run(self, h) -> None:
        grads = self._grads()
        prog = self._program(grads)
        tr, storage, sts = prog.trace, self.storage, self.states
        for b in tr.buffers:  # lazily created state, allocated on its first step; only written
            if b not in storage and b != "grad":
                for p, st in zip(self.params, sts):
                    st[b] = torch.empty_like(p, memory_format=torch.preserve_format)
                storage[b] = [_as_real(st[b]) for st in sts]
                self.plan.lazy_created = True
        raw = [grads if b == "grad" else storage[b] for b in tr.buffers]
        hp = [hp_value(h, k, i) for _, k, i in tr.hps]
        split: dict = {(): None}
        if tr.scalar_inputs:
            if self.scalar_state is None:
                self.scalar_state = {k: [st[k] for st in sts] for k in tr.scalar_inputs}
                self.scalar_dtypes = [[t.dtype for t in self.scalar_state[k]] for k in tr.scalar_inputs]
            columns = [self._values(k) for k in tr.scalar_inputs] + self.scalar_dtypes
            split = {}
            for i, row in enumerate(zip(*columns)):
                split.setdefault(row, []).append(i)
        whole = len(split) == 1
        written = {k: [None] * len(sts) for k in tr.scalar_outputs}
        for si, idx in split.items():
            c, souts = prog.scalars(hp, si)
            lists = raw if whole else [[ts[i] for i in idx] for ts in raw]
            if self.copied or prog.allocates(c):
                chunks = self._chunks(lists, None if whole else tuple(idx))
            else:  # one in-place op (plain SGD): one call over the whole group
                chunks = [lists]
            for chunk in chunks:
                self._elements(prog, chunk, c)
            for k, v in zip(tr.scalar_outputs, souts):
                ts = self.scalar_state[k] if whole else [self.scalar_state[k][i] for i in idx]
                torch._foreach_copy_(ts, [torch.tensor(v, dtype=torch.float64)] * len(ts))
                stored = float(torch.tensor(v, dtype=ts[0].dtype))  # as rounded on store
                if whole:
                    written[k] = [stored] * len(sts)
                else:
                    for i in idx:
                        written[k][i] = stored
        for k, values in written.items():
            if k in self.scalar_state:
                self._known[k] = (list(map(_version, self.scalar_state[k])), values)

    def _values(self, k) -> list:
        """The values of the 0-dim state ``k`` as Python floats: those this path wrote last
        step while no tensor has been written since (version counters), else read."""
        ts = self.scalar_state[k]
        known = self._known.get(k)
        if known is not None and known[0] == list(map(_version, ts)):
            return known[1]
        return _values(ts)

    def _elements(self, prog, lists, c) -> None:
        """The per-element program on one chunk: buffers not in the compute dtype are
        computed on copies (made here, chunk by chunk) and rounded back on store."""
        tr = prog.trace
        if not self.copied:
            prog.elements(lists, c)
            return
        work = [([t.to(self.compute) for t in ts] if b in tr.reads
                 else [torch.empty_like(t, dtype=self.compute) for t in ts]) if b in self.copied else ts
                for b, ts in zip(tr.buffers, lists)]
        prog.elements(work, c)
        for j, b in enumerate(tr.buffers):
            if b in self.copied and b in tr.elem_outputs:
                torch._foreach_copy_(lists[j], work[j])

    def _chunks(self, lists, idx):
        """``lists`` cut into chunks of about :data:`CHUNK` elements (see :func:`chunk_plan`)."""
        numels = self.numels if idx is None else [self.numels[i] for i in idx]
        if self.total <= CHUNK:
            return [lists]
        big = self.big if idx is None else [j for j, n in enumerate(numels) if n > CHUNK]
        key = (idx, tuple(i for i in big if all(ts[i].is_contiguous() for ts in lists)))
        plan = self._chunk_plans.get(key)
        if plan is None:
            if len(self._chunk_plans) > 64:  # step counts that keep changing the split
                self._chunk_plans.clear()
            plan = self._chunk_plans[key] = chunk_plan(numels, frozenset(key[1]))
        if len(plan) == 1 and all(lo is None for _, lo, _ in plan[0]):
            return [lists]
        flat = [{} for _ in lists]
        out = []
        for chunk in plan:
            out.append([[ts[i] if lo is None else _flat(ts, i, cache)[lo:hi] for i, lo, hi in chunk]
                        for ts, cache in zip(lists, flat)])
        return out
