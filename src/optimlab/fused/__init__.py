"""The fused fast path: one generated C kernel per rule, chosen by default.

Why generated, not hand-written
-------------------------------
Every rule exists once, as the readable function in :mod:`optimlab.rules`. The fused
kernel is produced by *tracing* the very function the reference path runs,
``rules.update(rule, p, g, s, h)``, on symbolic values (:mod:`.trace`) and printing
the resulting expression DAG as C (:mod:`.codegen`). There is no third copy of the math
to drift: a new rule, or a new flag on an old one, is fused the moment it is written,
and the parity tests compare the two executions of the same definition. The kernel
follows the DAG's operation order without FMA contraction or reassociation, with scalar
sub-expressions in double rounded to the compute type where they meet tensors, exactly
as torch treats a Python scalar. The only rounding difference left is ``sqrt``, exact
here but within an ulp in torch: after 100 steps float64 agrees to ~1e-16 and float32 to
~1e-7 relative, and bfloat16/float16 results are usually bit-identical.

Why one pass over memory
------------------------
An optimizer step is memory-bound (Adam: read p, g, m, v; write p, m, v = 28 bytes per
fp32 element). The kernel reads and writes each buffer exactly once, for all tensors of
a group in one call whose work is the concatenation of the tensors cut into equal
chunks, so 1,000 small tensors cost what one big one does. It allocates nothing per
step. Chunks are shared by ``torch.get_num_threads()`` threads (``pool.c``): an OpenMP
region on torch's own, still-warm thread team, in which each thread streams through its
own contiguous run of chunks and then helps the others (pthread helpers where torch has
no libgomp). bfloat16/float16 are computed in float32 (as
the reference path does) and rounded to nearest even on store; complex params are
updated as real views.

Rules with reductions (LAMB, LARS, Adafactor, Muon, Prodigy's estimate) have no one-pass
kernel: :mod:`.passes` cuts the same traced rule into generated passes around its
reductions and matrix products; without a compiler :mod:`.passes_torch` runs that graph
with batched torch operations (params of one shape stacked, one call per node).

Selection
---------
``fused=None`` (default): the kernel when a C compiler works and the inputs suit it.
``fused=False``: never the kernel. ``fused=True``: the kernel or a ``RuntimeError``
saying why not. Params the kernel does not take (no or a failing compiler, which gives
one warning; ``OPTIMLAB_DISABLE_FUSED=1``; non-CPU devices, other layouts and dtypes)
take the multi-tensor path of :mod:`.foreach` (``torch._foreach_*`` ops printed from the
same trace), or the per-tensor reference path with ``foreach=False``; ``foreach=True``
takes the multi-tensor path for every param, as torch.optim does. A grad laid out unlike
its param is first copied to the param's layout. Kernels are cached in
``$OPTIMLAB_CACHE`` (default ``~/.cache/optimlab/kernels``); ``$OPTIMLAB_CC`` / ``$CC``
choose the compiler.

A plan (pointer tables) is cached per param group and rebuilt when the params with
grads, their storage, the flag/zero pattern of the hyperparameters or anything of
``optimizer.state`` it read change (``load_state_dict``, or a user's edit: a param's state
cleared, a buffer or ``step`` replaced; :mod:`.state_snapshot`). A state tensor's storage
swapped in place (``t.data = u``) is not detected: call :func:`invalidate` afterwards.

The steady state
----------------
While a group's plan holds, a step only has to check, per param, that nothing above
changed, read ``.grad``, check the kernel can read it in place, note its address and
bump the param's version counter. From Python that is ~0.4 us per param, more than the
kernel itself on 1,000 small tensors; ``gather.cpp`` (C++ against torch's headers, built
and cached like the kernels, ~3 s once) does it in one call, ~0.06 us per param. Any
check that fails sends the step down the Python path above, which explains or rebuilds.
It is compiled on first use by a group of :data:`~.plan.GATHER_MIN_TENSORS` or more
params, and used for every group once it is in the cache; without a C++ compiler the
Python path does the same work.
"""

from __future__ import annotations

import operator
import os
import warnings
import weakref

import torch

from . import build
from .build import BuildError
from .plan import NOT_DENSE, Plan, Unfusable, all_readable, check_device, hkey, readable

_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_warned: set = set()
_grad = operator.attrgetter("grad")
_ptr = torch.Tensor.data_ptr
_contiguous = torch.Tensor.is_contiguous


def invalidate(optimizer) -> None:
    """Forget ``optimizer``'s cached plans (after replacing state tensors by hand)."""
    from . import foreach, torch_kernels

    _plans.pop(optimizer, None)
    foreach.invalidate(optimizer)
    torch_kernels.invalidate(optimizer)


def _name(optimizer) -> str:
    """The user's class name, also for a stand-in such as :class:`.shards.LocalView`."""
    return getattr(optimizer, "name", None) or type(optimizer).__name__


def _disabled() -> bool:
    return os.environ.get("OPTIMLAB_DISABLE_FUSED", "") not in ("", "0")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _warn_kernel_errors(optimizer, group, plan) -> None:
    """A build failure (no compiler, no writable cache) once for the process; a rule the
    kernel cannot trace once for its class."""
    for error in plan.kernel_errors:
        if isinstance(error.__cause__, BuildError):
            build.warn_unavailable(error.__cause__)
        else:
            fallback = "the reference path" if group.get("foreach") is False else "the multi-tensor (foreach) path"
            _warn_once(f"optimlab: fused kernel unavailable for {_name(optimizer)} ({error}); using {fallback}")


def try_step(optimizer, group, params, grads, h) -> bool:
    """Run one fused step for ``params`` (with ``grads``, their ``.grad``) of ``group``;
    False means: use the reference path.

    Raises like ``optimizer._check_grads`` (sparse grads for a rule without sparse
    support) before touching anything; the engine calls that check only on False.
    """
    required = group.get("fused") is True
    name = _name(optimizer)
    if _disabled():
        if required:
            raise RuntimeError(f"{name}: fused=True, but OPTIMLAB_DISABLE_FUSED is set")
        return False
    try:
        _step(optimizer, group, params, grads, h, required)
    except Unfusable as e:
        raise RuntimeError(f"{name}: fused=True is not possible here: {e}") from None
    return True


def try_steady_step(optimizer, group, h) -> bool:
    """The steady state: the group's cached plan still holds and the C++ helper
    (``gather.cpp``) finds every grad readable in place; then one C call does the per-param
    bookkeeping and the kernels run. False: nothing was done, take :func:`try_step`."""
    plans = _plans.get(optimizer)
    plan = plans.get(id(group)) if plans else None
    if (plan is None or plan.gather is None or plan.group is not group or plan.key != hkey(h)
            or _disabled() or not plan.gather_grads(optimizer.state, group["params"])):
        return False
    nthreads = torch.get_num_threads()
    for bucket in plan.buckets:
        bucket.run(h, nthreads)
    return True


def _plan(optimizer, group, params, h, key) -> Plan:
    plans = _plans.get(optimizer)
    if plans is None:
        plans = _plans[optimizer] = {}
    plan = plans.get(id(group))
    if (plan is None or not plan.holds(optimizer, group, key) or len(plan.params) != len(params)
            or not all(map(operator.is_, plan.params, params)) or plan.pptrs != list(map(_ptr, params))):
        plan = plans[id(group)] = Plan(optimizer, group, params, h, key)
    return plan


def _unfused(optimizer, group, plan, h) -> None:
    """The C kernel takes none of the group's params (no compiler, or none it can take):
    the other paths, told that the plan has checked these params (identity and storage)
    this step, so that they need not check again."""
    _warn_kernel_errors(optimizer, group, plan)
    optimizer._check_grads(plan.reference)
    optimizer.unfused_step(group, plan.reference, h, vouch=plan)


def _step(optimizer, group, params, grads, h, required: bool) -> None:
    plans = _plans.get(optimizer)
    plan = plans.get(id(group)) if plans else None
    if (not required and plan is not None and not plan.buckets and plan.holds(optimizer, group, hkey(h))
            and len(plan.params) == len(params) and all(map(operator.is_, plan.params, params))
            and plan.pptrs == list(map(_ptr, params))):
        _unfused(optimizer, group, plan, h)  # no grad is read here: no need to check them
        return
    if not all_readable(grads):
        if required:
            for p in params:
                check_device(p)
            raise Unfusable("the kernel cannot address a grad's memory ("
                            + ", ".join(sorted({type(g).__name__ for g in grads if not readable(g)}))
                            + ")")
        optimizer._check_grads(params)
        for p in params:
            optimizer.reference_step(p, h)
        return
    key = hkey(h)
    plan = _plan(optimizer, group, params, h, key)
    blocking = set(plan.reasons + list(map(str, plan.kernel_errors))) - {NOT_DENSE}
    if plan.reference and required and blocking:
        raise Unfusable("; ".join(sorted(blocking)))
    if not plan.buckets:
        _unfused(optimizer, group, plan, h)
        return
    _warn_kernel_errors(optimizer, group, plan)
    nthreads = torch.get_num_threads()
    keep: list = []  # grad copies that must outlive the kernel call
    if not plan.fused_in_order:
        grads = list(map(_grad, plan.fused_params))
    try:
        fast = plan.contiguous and all(map(_contiguous, grads))
    except RuntimeError:  # layouts without strides
        fast = False
    if plan.reference or not fast:
        optimizer._check_grads(params)  # contiguous grads are never sparse: checked only here
    ptrs = list(map(_ptr, grads)) if fast else plan.grad_pointers(grads, keep)
    for bucket, (lo, hi) in zip(plan.buckets, plan.slices):
        bucket.grad_row[:] = ptrs[lo:hi]
        bucket.run(h, nthreads)
    torch._C._increment_version(plan.fused_params)
    if plan.reference:
        optimizer.unfused_step(group, plan.reference, h)
    if plan.lazy_created:
        _plans[optimizer].pop(id(group), None)  # lazily created state: next step, new kernel
