"""Element-wise math used by the update rules, for every kind of value they see.

A rule is written once with ordinary operators plus the functions below. The same code
then runs on
  * torch tensors (the reference path, :mod:`optimlab.engine`),
  * Python floats (scalar sub-expressions such as bias corrections),
  * symbolic values (:mod:`optimlab.fused.trace`), from which the fused kernel is generated.

Comparisons (``x > y``, ``x == y``, ...) are the ordinary operators: a bool tensor on
tensors, a bool on floats, a symbolic mask in a trace. A mask is only for :func:`where`.

Every function equals its torch counterpart on all inputs, NaN, infinities and signed
zeros included (``sign(nan) = 0``, ``sign(-0.0) = +0.0``; ``clamp`` keeps ``-0.0`` inside
its bounds); on floats too, where ``sqrt`` of a negative number is NaN, as in C, so that
an expression computed for the branch :func:`where` does not take cannot raise.

Symbolic values implement ``__optimlab_<name>__`` hooks so this module never needs to
import the tracer.
"""

from __future__ import annotations

import math

import torch


def _hook(x, name: str) -> bool:
    """Whether ``x`` (not a number) is a traced value with the method ``name``
    (:mod:`optimlab.fused.trace`). Numbers are asked nothing: Dynamo cannot answer ``hasattr``
    on a float it keeps symbolic (a hyperparameter a schedule writes as a float every step)."""
    return not isinstance(x, (bool, int, float)) and hasattr(x, name)


def sqrt(x):
    """Square root: ``torch.sqrt`` on tensors, ``math.sqrt`` on numbers (NaN below zero)."""
    if isinstance(x, torch.Tensor):
        return torch.sqrt(x)
    if _hook(x, "__optimlab_sqrt__"):
        return x.__optimlab_sqrt__()
    return math.sqrt(x) if x >= 0 else math.nan


def number_tensor(x, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``torch.as_tensor(x, dtype=dtype, device=device)``. Where Dynamo traces, a number is
    multiplied into a tensor of ones instead: Dynamo keeps a float read from a param group
    symbolic through arithmetic, but specializes it (one graph per value) for ``as_tensor``,
    ``tensor`` or ``full``. ``1 * x`` is ``x`` exactly, signed zero, inf and NaN included."""
    if isinstance(x, torch.Tensor) or not torch.compiler.is_compiling():
        return torch.as_tensor(x, dtype=dtype, device=device)
    return torch.ones((), dtype=dtype, device=device) * x


def _as_tensors(a, b):
    """A number next to a tensor, taken in the tensor's dtype, as torch takes a Python scalar
    (not the default dtype: float64 tensors would meet a float32-rounded number)."""
    if not isinstance(a, torch.Tensor):
        a = number_tensor(a, b.dtype, b.device)
    if not isinstance(b, torch.Tensor):
        b = number_tensor(b, a.dtype, a.device)
    return a, b


def maximum(a, b):
    """Element-wise maximum that propagates NaN, like ``torch.maximum``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(*_as_tensors(a, b))
    if _hook(a, "__optimlab_maximum__"):
        return a.__optimlab_maximum__(b)
    if _hook(b, "__optimlab_maximum__"):
        return b.__optimlab_maximum__(a)
    if a != a or b != b:
        return math.nan
    return max(a, b)


def minimum(a, b):
    """Element-wise minimum that propagates NaN, like ``torch.minimum``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(*_as_tensors(a, b))
    if _hook(a, "__optimlab_minimum__"):
        return a.__optimlab_minimum__(b)
    if _hook(b, "__optimlab_minimum__"):
        return b.__optimlab_minimum__(a)
    if a != a or b != b:
        return math.nan
    return min(a, b)


def python_max(a, b):
    """Python's ``max(a, b)``, on numbers, tensors and symbolic values alike: ``a`` unless
    ``b > a`` (so a NaN ``b`` is ignored, where :func:`maximum` propagates it)."""
    return where(b > a, b, a)


def python_min(a, b):
    """Python's ``min(a, b)``: ``a`` unless ``b < a`` (see :func:`python_max`)."""
    return where(b < a, b, a)


def abs_(x):
    """Absolute value (``abs`` is a builtin name, hence the underscore)."""
    if isinstance(x, torch.Tensor):
        return torch.abs(x)
    if _hook(x, "__optimlab_abs__"):
        return x.__optimlab_abs__()
    return abs(x)


def sign(x):
    """-1, 0 or +1 like ``torch.sign``: ``sign(nan) = 0`` and ``sign(-0.0) = +0.0``."""
    if isinstance(x, torch.Tensor):
        return torch.sign(x)
    if _hook(x, "__optimlab_sign__"):
        return x.__optimlab_sign__()
    return float((x > 0) - (x < 0))


def clamp(x, lo=None, hi=None):
    """``torch.clamp(x, lo, hi)``: ``lo`` if ``x < lo``, then ``hi`` if above ``hi``
    (so ``hi`` wins when ``lo > hi``); NaN stays NaN and ``x`` is kept on ties (-0.0 too).
    The bounds are numbers (or scalar expressions such as hyperparameters); None: no bound."""
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, lo, hi)
    for v in (x, lo, hi):
        if _hook(v, "__optimlab_clamp__"):
            return v.__optimlab_clamp__(x, lo, hi)
    if lo is not None and x < lo:
        x = lo
    if hi is not None and x > hi:
        x = hi
    return x


def where(cond, a, b):
    """``a`` where ``cond`` holds, else ``b`` (``torch.where``).

    ``cond`` is a comparison: a bool (a scalar condition such as RAdam's ``rho_t > 5``,
    evaluated once per tensor) picks a whole branch; a bool tensor picks per element, and
    then at least one branch must be a tensor (it gives the result's dtype). Both branches
    are always computed, so a rule must not rely on the other branch being skipped.
    """
    if isinstance(cond, bool):
        return a if cond else b
    if _hook(cond, "__optimlab_where__"):
        return cond.__optimlab_where__(a, b)
    if isinstance(cond, torch.Tensor):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            raise TypeError("where(mask, a, b) on tensors needs a tensor branch to give the dtype")
        if cond.dim() == 0 and not torch.compiler.is_compiling():
            # one condition (a scalar computed from Tensor hyperparameters, or a 0-dim param):
            # pick the branch, as torch.optim's `if`, so that autograd never differentiates
            # the other one (a NaN there would give NaN gradients through torch.where).
            # Dynamo (no autograd through a traced step) cannot branch on a tensor: torch.where
            x, other = (a, b) if cond else (b, a)
            return x if isinstance(x, torch.Tensor) else torch.full_like(other, x)
        return torch.where(cond, a, b)
    return a if cond else b


def as_default_dtype(x):
    """``x`` rounded to torch's default dtype, as ``torch.as_tensor(x)`` stores a Python float
    (torch.optim.ASGD writes its 0-dim ``eta``/``mu`` so, whatever their own dtype)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.get_default_dtype()).to(x.dtype)
    if _hook(x, "__optimlab_as_default_dtype__"):
        return x.__optimlab_as_default_dtype__()
    return torch.tensor(x, dtype=torch.get_default_dtype()).item()


class StateNumber(float):
    """The value of a 0-dim state tensor as a Python float (what torch.optim reads with
    ``.item()``) that remembers the dtype it is stored in, for :func:`in_place_mul`."""

    __slots__ = ("dtype",)

    def __new__(cls, value: float, dtype: torch.dtype):
        number = super().__new__(cls, value)
        number.dtype = dtype
        return number


def stored_as(x, dtype: torch.dtype):
    """``x`` rounded to ``dtype``, as a 0-dim state of that dtype stores it, read back in
    double (a float, or a float64 tensor for a tensor ``x``)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype).to(torch.float64)
    return x if dtype == torch.float64 else torch.tensor(x, dtype=dtype).item()


def in_place_mul(state, factor):
    """``state *= factor`` on a 0-dim state tensor, as torch computes it: ``factor`` rounded
    to the state's dtype, then the product rounded to it (torch.optim.NAdam's
    ``mu_product *= mu`` in float32 state, whose rounded value the same step then reads).
    Exact arithmetic for float64 state. ``state``: a tensor, a :class:`StateNumber`, or a
    traced state input; a plain float (no dtype known) is multiplied in double."""
    if isinstance(state, torch.Tensor):
        return (state * factor).to(state.dtype)  # a Python factor is rounded to state's dtype first
    if isinstance(state, StateNumber):
        if isinstance(factor, torch.Tensor):  # a Tensor beta (differentiable=True): keep its graph
            return in_place_mul(torch.tensor(float(state), dtype=state.dtype, device=factor.device), factor)
        # a product of two float32 values is exact in double, so one rounding after it is
        # float32's own multiply
        return StateNumber(stored_as(float(state) * stored_as(factor, state.dtype), state.dtype),
                           state.dtype)
    if _hook(state, "__optimlab_in_place_mul__"):
        return state.__optimlab_in_place_mul__(factor)
    return state * factor
