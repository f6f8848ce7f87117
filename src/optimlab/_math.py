"""Element-wise math used by the update rules, for every kind of value they see.

A rule is written once with ordinary operators plus the three functions below. The
same code then runs on
  * torch tensors (the reference path, :mod:`optimlab.engine`),
  * Python floats (scalar sub-expressions such as bias corrections),
  * symbolic values (:mod:`optimlab.fused.trace`), from which the fused kernel is generated.

Symbolic values implement ``__optimlab_sqrt__`` / ``__optimlab_maximum__`` /
``__optimlab_abs__`` so this module never needs to import the tracer.
"""

from __future__ import annotations

import math

import torch


def sqrt(x):
    """Square root: ``torch.sqrt`` on tensors, ``math.sqrt`` on numbers."""
    if isinstance(x, torch.Tensor):
        return torch.sqrt(x)
    if hasattr(x, "__optimlab_sqrt__"):
        return x.__optimlab_sqrt__()
    return math.sqrt(x)


def maximum(a, b):
    """Element-wise maximum that propagates NaN, like ``torch.maximum``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        # a number is taken in the tensor's dtype, as torch takes a Python scalar (not the
        # default dtype: float64 tensors would meet a float32-rounded number)
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
        if not isinstance(b, torch.Tensor):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        return torch.maximum(a, b)
    if hasattr(a, "__optimlab_maximum__"):
        return a.__optimlab_maximum__(b)
    if hasattr(b, "__optimlab_maximum__"):
        return b.__optimlab_maximum__(a)
    if a != a or b != b:
        return math.nan
    return max(a, b)


def abs_(x):
    """Absolute value (``abs`` is a builtin name, hence the underscore)."""
    if isinstance(x, torch.Tensor):
        return torch.abs(x)
    if hasattr(x, "__optimlab_abs__"):
        return x.__optimlab_abs__()
    return abs(x)
