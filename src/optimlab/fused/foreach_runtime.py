"""What the Python printed by :mod:`.foreach_codegen` calls when it runs.

The generated ``scalars``/``elements`` functions are executed in :data:`NAMESPACE`: torch as
``F`` (its ``_foreach_*`` ops), :mod:`optimlab._math`'s element functions, and the helpers
below for what torch has no multi-tensor op for (masks, selects, filled lists) or where a
Python number must behave as torch's scalar (an IEEE division, a number passed as a 0-dim
tensor of the list's dtype).
"""

from __future__ import annotations

import math

import torch

from .._math import abs_, as_default_dtype, clamp, maximum, minimum, sign, sqrt, stored_as


def _fdiv(a: float, b: float) -> float:
    """a / b with IEEE results for b == 0 (a folded factor must not raise where torch gives inf)."""
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _full(like: list, value: float) -> list:
    return [torch.full_like(t, value) for t in like]


def _compare(op: str, a, b) -> list:
    """A mask: ``torch.<op>`` per tensor; ``a`` is a list, ``b`` a list or a number."""
    fn = getattr(torch, op)
    if _is_list(b):
        return list(map(fn, a, b))
    if a and a[0].is_floating_point():  # as in _where: the number once, as a 0-dim tensor
        b = torch.tensor(b, dtype=a[0].dtype)
    return [fn(x, b) for x in a]


def _is_list(x) -> bool:
    return isinstance(x, (list, tuple))  # torch._foreach_* ops return either


def _where(mask, a, b) -> list:
    """``torch.where`` per tensor; a branch is a list or a number (the other is a list). A
    number beside a floating-point list is passed as one 0-dim tensor of the list's dtype
    (the value torch rounds a Python scalar to; ~15% less per call than wrapping the
    scalar again for every tensor)."""
    if not _is_list(a):
        a = [torch.tensor(a, dtype=b[0].dtype) if mask and b[0].is_floating_point() else a] * len(mask)
    elif not _is_list(b):
        b = [torch.tensor(b, dtype=a[0].dtype) if mask and a[0].is_floating_point() else b] * len(mask)
    return list(map(torch.where, mask, a, b))


def _T(value, like: list):
    """The scalar of a list-scalar op: over many tensors, one 0-dim tensor of the list's
    dtype, which torch's CPU multi-tensor ops take ~4x faster than a Python number (that is
    wrapped again for every tensor; 1,000 tensors: ~1.6 vs ~6 ms a call). The value is the
    one torch rounds the number to, and the kernels treat both as a CPU scalar: the results
    are the same. Few tensors (large chunks): the number."""
    if len(like) < 8 or not like[0].is_floating_point():
        return value
    return torch.tensor(value, dtype=like[0].dtype)


def _select(cond: bool, a, b) -> list:
    """A scalar condition picks a whole branch: a copy of its list, or a list filled with its number."""
    x, other = (a, b) if cond else (b, a)
    return [t.clone() for t in x] if _is_list(x) else _full(other, x)


NAMESPACE = {"F": torch, "_sqrt": sqrt, "_maximum": maximum, "_minimum": minimum, "_abs": abs_,
              "_sign": sign, "_clamp": clamp, "_fdiv": _fdiv, "_full": _full, "_compare": _compare,
              "_where": _where, "_select": _select, "_T": _T, "_float32": as_default_dtype,
             "_stored": stored_as, "math": math}
