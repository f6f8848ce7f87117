"""Which params the generated passes (:mod:`.passes`) may address directly.

A param is taken when it, its grad and its state are plain CPU tensors with strided
storage (not a wrapper such as DTensor, whose ``data_ptr()`` is 0), of a dtype the passes
print, contiguous, and the grad and state of the parameter's shape have its dtype. The
params and state are checked when the buckets are built; the grads, which are replaced
between steps, at every step (:func:`_grads_fit`).
"""

from __future__ import annotations

import torch

from .plan import addressable

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _plain(t) -> bool:
    """A CPU tensor whose elements the passes may address: the cheap check for torch's own
    tensor types (their strided storage holds them), :func:`.plan.addressable` otherwise."""
    if type(t) in (torch.Tensor, torch.nn.Parameter):
        return t.is_cpu and t.layout == torch.strided and (t.numel() == 0 or t.data_ptr() != 0)
    return addressable(t)


def _eligible(p, st) -> bool:
    g = p.grad
    if (p.dtype not in _DTYPES or not _plain(p) or not p.is_contiguous() or type(g) is not torch.Tensor
            or g.dtype != p.dtype or g.shape != p.shape or not _plain(g) or not g.is_contiguous()):
        return False
    for v in st.values():
        if not isinstance(v, torch.Tensor) or not _plain(v):
            return False
        if v.shape == p.shape and (v.dtype != p.dtype or not v.is_contiguous()):
            return False
    return True


def _grads_fit(params) -> bool:
    """The per-step half of :func:`_eligible` (grads are replaced between steps)."""
    for p in params:
        g = p.grad
        if (type(g) is not torch.Tensor or g.dtype != p.dtype or g.shape != p.shape or not g.is_contiguous()
                or not g.is_cpu or g.layout != torch.strided):
            return False
    return True
