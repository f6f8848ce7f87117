"""Replaying a rule's torch calls once for a whole bucket: batched forms derived from the graph.

A bucket of :mod:`.passes` holds params of one shape and dtype; the traced graph's torch
values (``T`` nodes: Muon's Newton-Schulz matrices) are the same calls for each of them.
Instead of replaying every call once per tensor, a call whose function has a batched form
below runs once on the bucket's values stacked along a new leading dimension:

* element-wise functions (the operators, :mod:`optimlab._math`, ``low_precision``, ``to``)
  are their own batched form (broadcasting does the rest);
* ``mm`` is ``torch.bmm``, ``addmm`` ``torch.baddbmm`` (the same beta/alpha form),
  ``transpose`` swaps the last two dimensions, ``norm`` is taken over all but the leading
  dimension, kept as size-1 dimensions so it broadcasts per matrix; a mean along a
  dimension counted from the end (Adafactor's row and column means) is its own batched form;
* state of another shape than the parameter's (Adafactor's row and column factors) is
  stacked like a small input, and written back from the stacked result.

A per-tensor value of shape ``s`` is held batched as ``(n, 1, ..., 1) + s`` with as many 1s
as bring it to the graph's largest rank, so batched values broadcast against each other
exactly as the per-tensor ones do. Whether a node has a batched form is decided once, at
trace time, by running the batched forms on meta tensors (:func:`plan`: the result's shape
and dtype must be the per-tensor ones with the leading dimension); at run time a call is
batched when its per-tensor scalar arguments agree across the bucket (they are passed as
the same Python numbers as in the per-tensor replay), else it runs per tensor.

The batched matrix products are the same CPU kernels, tensor by tensor (bitwise: from
:data:`SMALL_PRODUCT` multiply-adds per product on; smaller products run per tensor):
``tests/test_reductions.py`` compares the trajectories of buckets of equal-shape matrices
with ``torch.optim.Muon``.
"""

from __future__ import annotations

import torch

from .. import _math, _reduce
from .passes_trace import TORCH_OPS, Arg, _call, _to


def _norm(x):
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


def _addmm(c, a, b, beta=1.0, alpha=1.0):
    return torch.baddbmm(c, a, b, beta=beta, alpha=alpha)


def _along_negative(f):
    """``f(x, dim)`` (a mean along ``dim``, kept) on stacked values: the same call where
    ``dim`` counts from the end (the leading dimension leaves it in place), else none."""
    def batched(x, dim=None):
        if dim is None or dim >= 0:
            raise ValueError("no batched form: the dimension moves with a leading one")
        return f(x, dim)
    return batched


def _contiguous_to(x, dtype):
    # the same values; a contiguous result, so a pass reads it without a second copy
    return x.to(dtype, memory_format=torch.contiguous_format)


#: per-tensor function -> its form on values with a leading batch dimension
BATCHED = {
    **{f: f for f in TORCH_OPS.values()},
    _math.maximum: _math.maximum, _math.minimum: _math.minimum, _math.sqrt: _math.sqrt,
    _math.abs_: _math.abs_, _math.sign: _math.sign, _math.where: _math.where,
    _reduce.low_precision: _reduce.low_precision, _reduce.lerp: _reduce.lerp,
    _reduce.mm: torch.bmm, _reduce.addmm: _addmm,
    _reduce.transpose: lambda x: x.transpose(-2, -1),
    _reduce.norm: _norm,
    _reduce.mean_square: _along_negative(_reduce.mean_square),
    _reduce.mean: _along_negative(_reduce.mean),
    _to: _contiguous_to,
}


#: a per-element input (grad, param) of this many elements or more is not stacked for a
#: batched call (a copy of each tensor); the call runs per tensor on the tensors themselves
STACK_NUMEL = 1 << 16

#: torch's CPU bmm/baddbmm run products of fewer multiply-adds per matrix through their
#: own loop, whose rounding of ``beta * c + alpha * a @ b`` is not addmm's; from this size
#: on they are addmm's kernels (oneDNN, or addmm per matrix)
SMALL_PRODUCT = 400
_PRODUCTS = {_reduce.mm: 0, _reduce.addmm: 1}  # -> position of the first factor


def _multiply_adds(n, f) -> int:
    a, b = n.fn[1][_PRODUCTS[f]], n.fn[1][_PRODUCTS[f] + 1]
    if not (isinstance(a, Arg) and isinstance(b, Arg)):
        return 0
    sa, sb = n.args[a.i].meta.shape, n.args[b.i].meta.shape
    return sa[0] * sa[1] * sb[1] if len(sa) == len(sb) == 2 and n.args[a.i].kind == "T" else 0


def rank(graph, needed) -> int:
    """The largest rank among the parameter's shape and the needed torch values."""
    return max([len(graph.shape)] + [n.meta.dim() for n in graph.nodes
                                     if n.index in needed and n.kind == "T"])


def padded(shape, nt: int, r: int) -> tuple:
    """The batched shape of a per-tensor value of ``shape`` (see the module docstring)."""
    return (nt,) + (1,) * (r - len(shape)) + tuple(shape)


def plan(graph, needed, aliases=None) -> dict:
    """T node index -> batched call ``(function, positional, keyword templates)``, for the
    needed T nodes that have a batched form whose arguments have one too (``aliases``: T
    nodes that are a pass's temporary, stacked by construction)."""
    r, out, metas = rank(graph, needed), {}, {}
    for n in graph.nodes:
        if n.index not in needed or n.kind != "T":
            continue
        # stacked by construction: a pass's temporary; state of another shape when small
        # (Adafactor's factors, stacked by the runner)
        if n.index in (aliases or {}) or n.op == "tin":
            if n.op != "tin" or n.meta.numel() < STACK_NUMEL:
                metas[n.index] = torch.empty(padded(n.meta.shape, 2, r), dtype=n.meta.dtype, device="meta")
            continue
        f, pos, kws = n.fn
        fb = BATCHED.get(f)
        if fb is None or (f in _PRODUCTS and _multiply_adds(n, f) < SMALL_PRODUCT):
            continue
        values = []
        for a in n.args:
            if a.kind == "S":
                values.append(1.0)
            elif a.kind == "E":
                values.append(torch.empty(padded(graph.shape, 2, r), dtype=graph.compute, device="meta"))
            elif a.index in metas:
                values.append(metas[a.index])
            else:
                break
        else:
            try:
                meta = _call((fb, pos, kws), values)
            except (RuntimeError, TypeError, ValueError, IndexError):
                continue
            if (isinstance(meta, torch.Tensor) and meta.dtype == n.meta.dtype
                    and tuple(meta.shape) == padded(n.meta.shape, 2, r)):
                metas[n.index] = meta
                out[n.index] = (fb, pos, kws)
    return out


__all__ = ["BATCHED", "plan", "padded", "rank", "Arg"]
