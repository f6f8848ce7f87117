"""Kernels per pattern, and per-group plans: the pointer tables the kernel reads.

A :class:`Plan` is built once per param group and reused while the group's params (with
grads), their storage, the optimizer's state object and the hyperparameters' flag/zero
pattern stay the same; a step then only refreshes the grad-pointer row and the
hyperparameter values. Params are split into *buckets* that share one kernel
(same dtype, same 0-dim state dtypes, same lazily created state present).
"""

from __future__ import annotations

import itertools
import operator

import numpy as np
import torch

from .build import BuildError, gatherer, load, pool
from .codegen import generate
from .state_snapshot import StateSnapshot
from .trace import TraceError, hp_value, trace

# storage dtype -> (kernel dtype name, real-view element count factor)
SUPPORTED = {
    torch.float32: ("float32", 1), torch.float64: ("float64", 1),
    torch.bfloat16: ("bfloat16", 1), torch.float16: ("float16", 1),
    torch.complex64: ("float32", 2), torch.complex128: ("float64", 2),
    torch.complex32: ("float16", 2),
}
_SCALAR_STATE = {torch.float32: "float32", torch.float64: "float64"}
#: dispatch keys of tensors whose memory is not (only) their own: a Python subclass that
#: wraps other tensors (DTensor, TwoTensor), functionalization, functorch's wrappers. Their
#: ``data_ptr()`` is 0, or the address of something other than the values they stand for.
_WRAPPERS = torch._C.DispatchKeySet(torch._C.DispatchKey.Python)
for _key in ("PythonTLSSnapshot", "Functionalize", "FuncTorchBatched", "FuncTorchGradWrapper"):
    if hasattr(torch._C.DispatchKey, _key):
        _WRAPPERS = _WRAPPERS | torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _key))
_WRAPPER_BITS = _WRAPPERS.raw_repr()
_dispatch_keys = torch._C._dispatch_keys
_is_cpu = operator.attrgetter("is_cpu")
_data_ptr = torch.Tensor.data_ptr


def _wraps(t) -> bool:
    return bool(_dispatch_keys(t).raw_repr() & _WRAPPER_BITS)
#: a group this large compiles the C++ step helper (gather.cpp) when it is not cached yet
GATHER_MIN_TENSORS = 128


class Unfusable(Exception):
    """A reason why this group/param cannot take the fused path."""


class Kernel:
    """A compiled kernel plus what the runner needs to call it."""

    def __init__(self, tr, fn, nsc):
        self.trace = tr
        self.fn = fn
        self.nsc = nsc
        self.buffers = tr.buffers
        self.scalar_inputs = tr.scalar_inputs
        self.hps = tr.hps


_kernels: dict = {}


def hkey(h) -> tuple:
    """The flag/zero pattern of the hyperparameters, and torch's default dtype: what a
    trace may branch on."""
    out = [torch.get_default_dtype()]
    for k, v in vars(h).items():
        if v is True or v is False:
            out.append((k, v))
        elif isinstance(v, (int, float)):
            out.append((k, _sign(v)))
        elif isinstance(v, tuple):
            out.append((k, tuple(_sign(x) if isinstance(x, (int, float)) else
                                 _sign(x.item()) if isinstance(x, torch.Tensor) and x.numel() == 1 else type(x)
                                 for x in v)))
        elif isinstance(v, torch.Tensor):
            out.append((k, _sign(v.item()) if v.numel() == 1 else "tensor"))
    return tuple(out)


def _sign(x) -> object:
    if x != x:
        return "nan"
    return (x > 0) - (x < 0)


def kernel(rule, h, key, dtype: str, sstate: tuple, lazy: frozenset) -> Kernel:
    """The compiled kernel for one pattern (memoised; failures are memoised too)."""
    k = (rule.fn, rule.tensors, tuple(rule.scalars.items()), key, dtype, sstate, lazy)
    found = _kernels.get(k)
    if found is None:
        try:
            tr = trace(rule, h, lazy)
            src, nsc = generate(tr, dtype, dict(sstate))
            found = Kernel(tr, load(src), nsc)
            pool()
        except (TraceError, BuildError) as e:
            found = e
        _kernels[k] = found
    if isinstance(found, Exception):
        raise Unfusable(str(found)) from found
    return found


def check_device(p: torch.Tensor) -> None:
    """Refuse a param on a device the kernel does not run on, in torch.optim's words
    (``_device_dtype_check_for_fused``), e.g. for meta params with ``fused=True``."""
    if p.device.type != "cpu":
        raise Unfusable("`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices: ['cpu'] but {p.dtype} and {p.device.type}")


def addressable(t: torch.Tensor) -> bool:
    """Whether the C kernel may read and write ``t``'s elements through ``data_ptr()``.

    Checked by construction, not against a list of known types: a strided CPU tensor
    with no wrapper dispatch key, backed by real storage whose bytes cover every element
    it can reach. Anything else (DTensor, meta, fake or functional tensors, other
    devices, a storage-less subclass) takes another path.
    """
    if not t.is_cpu or t.layout != torch.strided or _wraps(t):
        return False
    n = t.numel()
    if n == 0:
        return True  # nothing to read or write
    try:
        storage = t.untyped_storage()
        base = storage.data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    if t.is_contiguous():
        extent = n
    else:
        strides = t.stride()
        if min(strides) < 0:
            return False
        extent = 1 + sum((size - 1) * st for size, st in zip(t.shape, strides))
    # the last element reachable from the storage offset must lie inside the storage
    return base != 0 and (t.storage_offset() + extent) * t.element_size() <= storage.nbytes()


def readable(g) -> bool:
    """Whether the kernel may read the grad ``g``, in place or after a copy to its param's
    layout (sparse grads are densified by :meth:`Plan.grad_pointers`). Cheaper than
    :func:`addressable` (it runs every step): a plain strided CPU tensor's elements lie in
    its storage by torch's own checks, so only wrappers and missing data are excluded."""
    if _wraps(g) or not g.is_cpu:
        return False
    return g.layout != torch.strided or g.data_ptr() != 0 or g.numel() == 0


def all_readable(grads) -> bool:
    """:func:`readable` of every grad in ``grads``, in a few C-level passes where they are
    plain tensors (~0.1 us a grad, not ~0.9: ``_dispatch_keys`` alone costs ~0.6). An object
    whose Python type is exactly ``torch.Tensor``, on the CPU, with a nonzero data pointer
    is plain memory: the wrappers of ``_WRAPPERS`` are Python subclasses (DTensor,
    FakeTensor, TwoTensor, torch.compile's FunctionalTensor) or have no data pointer
    (functorch's batched and grad wrappers raise, ``functionalize``'s gives 0). Anything
    else is checked one by one."""
    try:
        if (all(map(operator.is_, map(type, grads), itertools.repeat(torch.Tensor)))
                and all(map(_is_cpu, grads)) and all(map(_data_ptr, grads))):
            return True
    except RuntimeError:  # no storage: sparse grads, functorch's wrappers
        pass
    return all(map(readable, grads))


#: a param the kernel skips without refusing ``fused=True``: torch's fused kernels step it,
#: so the other paths do here (a strided slice, an expanded view)
NOT_DENSE = "param is not dense (overlapping or with gaps)"


def dense_layout(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill ``numel`` consecutive slots from data_ptr."""
    if t.is_contiguous():
        return True
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.layout == torch.strided and a.dtype == b.dtype and a.device == b.device
            and a.shape == b.shape and (a.stride() == b.stride() or (a.is_contiguous() and b.is_contiguous())))


class Bucket:
    """Params sharing one kernel, with their pointer tables."""

    def __init__(self, kern: Kernel, params: list, states: list, real: int):
        self.kernel = kern
        nt = len(params)
        self.nt = nt
        self.bufs = np.zeros((len(kern.buffers), nt), dtype=np.uint64)
        self.sst = np.zeros((max(len(kern.scalar_inputs), 1), nt), dtype=np.uint64)
        self.offs = np.zeros(nt + 1, dtype=np.int64)
        self.offs[1:] = np.cumsum([p.numel() * real for p in params])
        self.scratch = np.zeros(max(nt * kern.nsc, 1), dtype=np.float64)
        self.hp = np.zeros(max(len(kern.hps), 1), dtype=np.float64)
        self.keep = []  # state tensors the pointers refer to: never freed under the kernel
        for j, (p, st) in enumerate(zip(params, states)):
            for b, name in enumerate(kern.buffers):
                if name == "param":
                    self.bufs[b, j] = p.data_ptr()
                elif name != "grad":
                    self.bufs[b, j] = st[name].data_ptr()
                    self.keep.append(st[name])
            for b, name in enumerate(kern.scalar_inputs):
                self.sst[b, j] = st[name].data_ptr()
                self.keep.append(st[name])
        self.grad_row = self.bufs[kern.buffers.index("grad")]
        self.args = (nt, self.bufs.ctypes.data, self.sst.ctypes.data, self.hp.ctypes.data,
                     self.scratch.ctypes.data, self.offs.ctypes.data)
        self.pool = pool()

    def call(self, nthreads: int) -> None:
        """Run the kernel on the current tables."""
        self.kernel.fn(*self.args, nthreads, self.pool)

    def run(self, h, nthreads: int) -> None:
        """Run the kernel with ``h``'s values (the grad row already filled)."""
        self.hp[: len(self.kernel.hps)] = [hp_value(h, key, i) for _, key, i in self.kernel.hps]
        self.call(nthreads)


class Plan:
    """Everything to run one group's step; see the module docstring for its validity."""

    def __init__(self, optimizer, group, params, h, key):
        self.group = group
        self.ids = list(map(id, params))
        self.key = key
        self.params = list(params)  # a copy: the group's own list may change in place
        self.reference = []  # params whose layout or dtype the kernel cannot take
        self.reasons = []  # why some params take the reference path
        self.kernel_errors = []  # tracing or compiling failures (warned about)
        self.lazy_created = False
        rule = optimizer.rule
        fills = rule.tensors(h)
        groups: dict = {}
        states = []
        for i, p in enumerate(params):
            st = optimizer.init_state(p, h)  # stateless rules leave optimizer.state alone
            states.append(st)
            try:
                bucket_key = self._check(p, st, fills, rule)
            except Unfusable as e:
                self.reference.append(p)
                self.reasons.append(str(e))
                continue
            groups.setdefault(bucket_key, []).append(i)
        self.buckets = []
        self.slices = []  # each bucket's range in fused_params
        self.fused_params = []
        for (dtype, sstate, lazy), positions in groups.items():
            try:
                kern = kernel(rule, h, key, SUPPORTED[dtype][0], sstate, lazy)
            except Unfusable as e:
                self.reference.extend(params[i] for i in positions)
                self.kernel_errors.append(e)
                continue
            ps = [params[i] for i in positions]
            sts = [states[i] for i in positions]
            for p, st in zip(ps, sts):
                for name in kern.buffers:
                    if name not in ("param", "grad") and name not in st:
                        st[name] = torch.empty_like(p, memory_format=torch.preserve_format)
                        self.lazy_created = True
            self.buckets.append(Bucket(kern, ps, sts, SUPPORTED[dtype][1]))
            self.slices.append((len(self.fused_params), len(self.fused_params) + len(ps)))
            self.fused_params.extend(ps)
        self.pptrs = list(map(torch.Tensor.data_ptr, params))
        # the engine's grads list can be used as is when every param is fused, in order
        self.fused_in_order = list(map(id, self.fused_params)) == self.ids
        self.contiguous = all(p.is_contiguous() for p in self.fused_params)
        # what the plan read of the state, after creating what was missing (lazily created state)
        self.snapshot = StateSnapshot(optimizer.state, self.params, compile=len(params) >= GATHER_MIN_TENSORS)
        self.gather = None
        if (not self.reference and not self.lazy_created and self.fused_in_order and self.contiguous
                and len(params) == len(group["params"])
                and all(type(p) in (torch.Tensor, torch.nn.Parameter) for p in params)):
            self._init_gather(gatherer(compile=len(params) >= GATHER_MIN_TENSORS))

    def holds(self, optimizer, group, key) -> bool:
        """Still valid for this group object, flag/zero pattern and state (the params and
        their storage are checked by the caller)."""
        return self.group is group and self.key == key and self.snapshot.holds(optimizer.state)

    def _init_gather(self, fn) -> None:
        """Arguments of the C++ helper: expected param objects and data, grad-row slots."""
        if fn is None or self.snapshot.meta is None:
            return
        slots = [b.grad_row.ctypes.data + 8 * j for b in self.buckets for j in range(b.nt)]
        self._gather_arrays = (np.array(self.ids, dtype=np.uint64),
                               np.array(self.pptrs, dtype=np.uint64),
                               np.array(slots, dtype=np.uint64))
        self._gather_args = tuple(a.ctypes.data for a in self._gather_arrays) + (len(self.ids),)
        self.gather = fn

    def gather_grads(self, state, params: list) -> bool:
        """Steady state in one C call: ``state`` is as the plan read it, ``params`` (the
        group's list) is unchanged, grads are readable in place; fills the grad rows and
        bumps versions. False: nothing done."""
        return self.gather(params, *self._gather_args, state, self.snapshot.meta) == 0

    @staticmethod
    def _check(p, st, fills, rule):
        check_device(p)
        if p.layout != torch.strided:
            raise Unfusable(f"param with layout {p.layout}")
        if not addressable(p):
            raise Unfusable(f"the kernel cannot address a {type(p).__name__}'s memory")
        if p.dtype not in SUPPORTED:
            raise Unfusable(f"param dtype {p.dtype}")
        if not dense_layout(p):
            raise Unfusable(NOT_DENSE)
        lazy = []
        for k, fill in fills.items():
            t = st.get(k)
            if t is None:
                if fill is None:
                    continue
                raise Unfusable(f"state {k!r} is missing")
            if not isinstance(t, torch.Tensor) or not _same_layout(t, p):
                raise Unfusable(f"state {k!r} differs from its param in dtype, device or layout")
            if not addressable(t):
                raise Unfusable(f"the kernel cannot address state {k!r} ({type(t).__name__})")
            if fill is None:
                lazy.append(k)
        sstate = []
        for k in rule.scalars:
            t = st.get(k)
            if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.dtype not in _SCALAR_STATE \
                    or not addressable(t):
                raise Unfusable(f"0-dim state {k!r} is not a float32/float64 CPU tensor")
            sstate.append((k, _SCALAR_STATE[t.dtype]))
        return p.dtype, tuple(sstate), frozenset(lazy)

    def grad_pointers(self, grads, keep: list) -> list:
        """Grad data pointers; a grad laid out unlike its param is copied to its layout
        (sparse ones densified, as the reference path does)."""
        ptrs = []
        for p, g in zip(self.fused_params, grads):
            if not (g.layout == torch.strided and g.dtype == p.dtype and
                    (g.stride() == p.stride() or (g.is_contiguous() and p.is_contiguous()))):
                dense = g.to_dense() if g.layout != torch.strided else g
                g = torch.empty_like(p, memory_format=torch.preserve_format).copy_(dense)
                keep.append(g)
            ptrs.append(g.data_ptr())
        return ptrs


def roofline_bytes(optimizer, group) -> int:
    """Bytes the rule must touch per step for this group (for benchmarks): per element, the
    buffers its traced graph reads plus those it writes (no kernel is compiled)."""
    from ..rules.base import hyperparameters

    h = hyperparameters(group, optimizer.defaults)
    total = 0
    for p in group["params"]:
        st = optimizer.state.get(p, {})
        lazy = frozenset(k for k, f in optimizer.rule.tensors(h).items() if f is None and k in st)
        tr = trace(optimizer.rule, h, lazy)
        total += (len(tr.reads) + len(tr.elem_outputs)) * p.numel() * p.element_size()
    return total


__all__ = ["Plan", "Kernel", "Unfusable", "addressable", "readable", "kernel", "hkey",
           "roofline_bytes"]
