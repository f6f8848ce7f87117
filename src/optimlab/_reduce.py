"""Reductions and matrix products for update rules that read whole tensors.

The element-wise vocabulary of a rule (operators, :mod:`optimlab._math`) is extended here
by what LAMB, LARS, Adafactor, Muon and Prodigy need:

* per-tensor reductions: :func:`norm`, :func:`rms`, :func:`sum_`, :func:`dot`, and
  :func:`mean` over the whole tensor or along one dimension (Adafactor's row and column
  means of g^2, kept with ``keepdim`` so they broadcast back);
* matrix products on 2-D tensors: :func:`mm`, :func:`addmm`, :func:`transpose`;
* :func:`lerp` and :func:`low_precision`, the two operations Muon's reference (torch.optim)
  performs in a specific rounding that a parity test must reproduce.

A rule that uses them declares ``Rule(..., elementwise=False)``: on the reference path it
runs on tensors, where each of these is one torch call (no sync: a reduction stays a 0-dim
tensor on the tensor's device); the tracer of the element-wise kernel refuses it. The
tracer of :mod:`optimlab.fused.passes` sees every call through the ``__optimlab_call__``
hook of its symbolic values: a whole-tensor sum of an element-wise value becomes a sum
inside a generated pass, anything else a recorded call of the same function on tensors. Group-level
sums (Prodigy's) are not written here: a rule returns its per-parameter partial sums
from ``Rule.estimate`` and the engine adds them up (see :mod:`optimlab.rules.base`).
"""

from __future__ import annotations

import torch


def _symbolic(*xs):
    """The first traced value among ``xs`` (see :mod:`optimlab.fused.passes`), or None."""
    for x in xs:
        if hasattr(x, "__optimlab_call__"):
            return x
    return None


def _tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}() reads a whole tensor; got {type(x).__name__} (a rule using it "
                        "must be declared Rule(..., elementwise=False))")
    return x


def norm(x) -> torch.Tensor:
    """Euclidean norm of the whole tensor, ||x||_2 (``torch.linalg.vector_norm``)."""
    if _symbolic(x) is not None:
        return x.__optimlab_call__(norm, (x,), {})
    return torch.linalg.vector_norm(_tensor(x, "norm"))


def rms(x) -> torch.Tensor:
    """Root mean square ||x||_2 / sqrt(numel(x)) (Adafactor's RMS)."""
    return norm(x) / x.numel() ** 0.5


def sum_(x) -> torch.Tensor:
    """Sum of all elements (``sum`` is a builtin name, hence the underscore)."""
    if _symbolic(x) is not None:
        return x.__optimlab_call__(sum_, (x,), {})
    return torch.sum(_tensor(x, "sum_"))


def dot(a, b) -> torch.Tensor:
    """<a, b> over all elements of two tensors of one shape."""
    if _symbolic(a, b) is not None:
        return _symbolic(a, b).__optimlab_call__(dot, (a, b), {})
    if hasattr(a, "placements"):  # a DTensor: an unevenly sharded one has no flat view
        return torch.sum(a * b)
    return torch.dot(_tensor(a, "dot").reshape(-1), _tensor(b, "dot").reshape(-1))


def mean(x, dim=None) -> torch.Tensor:
    """Mean over the whole tensor, or along ``dim`` keeping it as a size-1 dimension."""
    if _symbolic(x) is not None:
        return x.__optimlab_call__(mean, (x,), {"dim": dim})
    x = _tensor(x, "mean")
    return x.mean() if dim is None else x.mean(dim=dim, keepdim=True)


def mean_square(x, dim: int) -> torch.Tensor:
    """mean(x^2) along ``dim`` (kept), as ||x||^2 / n without a full-size x^2 temporary
    (torch.optim.Adafactor's form, whose rounding a parity test reproduces). Out of place:
    on a DTensor shard the norm is a partial sum that an in-place op cannot take."""
    if _symbolic(x) is not None:
        return x.__optimlab_call__(mean_square, (x,), {"dim": dim})
    x = _tensor(x, "mean_square")
    return torch.norm(x, dim=dim, keepdim=True).square().div(x.size(dim))


def mm(a, b) -> torch.Tensor:
    """Matrix product a @ b of 2-D tensors."""
    if _symbolic(a, b) is not None:
        return _symbolic(a, b).__optimlab_call__(mm, (a, b), {})
    return torch.mm(_tensor(a, "mm"), _tensor(b, "mm"))


def addmm(c, a, b, beta=1.0, alpha=1.0) -> torch.Tensor:
    """beta * c + alpha * (a @ b) in one call (one rounding per element, as ``torch.addmm``)."""
    if _symbolic(c, a, b) is not None:
        return _symbolic(c, a, b).__optimlab_call__(addmm, (c, a, b), {"beta": beta, "alpha": alpha})
    return torch.addmm(_tensor(c, "addmm"), a, b, beta=beta, alpha=alpha)


def transpose(x) -> torch.Tensor:
    """The transpose of a 2-D tensor (a view)."""
    if _symbolic(x) is not None:
        return x.__optimlab_call__(transpose, (x,), {})
    return _tensor(x, "transpose").T


def lerp(a, b, weight):
    """a + weight * (b - a), with ``torch.lerp``'s rounding on tensors (and in a trace:
    a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w), torch's two forms)."""
    if isinstance(a, torch.Tensor):
        return torch.lerp(a, b, weight)
    if _symbolic(a, b) is not None:
        return _symbolic(a, b).__optimlab_call__(lerp, (a, b, weight), {})
    return a + weight * (b - a)


def low_precision(x) -> torch.Tensor:
    """x rounded to bfloat16 (Muon's Newton-Schulz iteration runs there, as in torch.optim)."""
    if _symbolic(x) is not None:
        return x.__optimlab_call__(low_precision, (x,), {})
    return _tensor(x, "low_precision").bfloat16()
