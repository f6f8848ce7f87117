"""``"printed"`` mode of :mod:`.compiled`: the rule's traced graph printed as ``torch._foreach_*`` operations.

:func:`generate` prints the same DAG the C kernel and the multi-tensor path are printed from
(:mod:`.trace`) as ``torch._foreach_*`` operations over a group's tensor lists, for Inductor
to fuse into one loop per tensor. Scalar sub-expressions (bias corrections) are computed in
float64 on tensors, one value per param (``step`` may differ between params), and rounded to
the compute dtype where they meet per-element values, as torch rounds a Python scalar.
"""

from __future__ import annotations

import math

import torch

from .._math import abs_, maximum, sqrt, stored_as
from .foreach_codegen import _const
from .trace import TraceError, live

_OPS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "max": "maximum"}
_KNOWN = {"const", "hp", "sin", "ein", "add", "sub", "mul", "div", "pow", "neg", "sqrt", "abs", "max",
          "stored"}
_PY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


@torch.library.custom_op("optimlab::scalars", mutates_args=())
def _scalars(x: torch.Tensor) -> torch.Tensor:
    """A copy, opaque to Inductor: the scalar sub-expressions are computed once per step into
    a buffer that the element loops read, instead of being inlined (``pow``, ``sqrt`` per
    vector of elements) into every loop."""
    return x.clone()


@_scalars.register_fake
def _(x):
    return torch.empty_like(x)


def _barrier(values: list, n: int, dtype) -> list:
    """The scalars meeting per-element values, for the element loops: a tensor (one value per
    param) becomes a list of ``n`` 0-dim tensors in ``dtype``, computed once through
    :func:`_scalars`; a Python number stays one (torch rounds it to the tensor's dtype)."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return values
    rows = iter(_scalars(torch.stack([v.to(dtype).expand(n) for v in tensors])).unbind(0))
    return [list(next(rows).unbind(0)) if isinstance(v, torch.Tensor) else v for v in values]


def _vec(x, n: int):
    """A new 0-dim state value as ``n`` float64 values."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64).expand(n)
    return torch.full((n,), x, dtype=torch.float64)


def _fill(like: list, c) -> list:
    return [torch.zeros_like(t) + ci for t, ci in zip(like, c if isinstance(c, list) else [c] * len(like))]


_NAMESPACE = {"F": torch, "_sqrt": sqrt, "_maximum": maximum, "_abs": abs_, "_barrier": _barrier,
              "_vec": _vec, "_fill": _fill, "_stored": stored_as, "math": math}


def generate(tr):
    """``run(B, hp, si, n, dt, sd) -> (element outputs, scalar outputs)`` printed from trace ``tr``.

    ``B``: a list of tensors per buffer (``tr.buffers`` order) in compute dtype ``dt``;
    ``hp``: the hyperparameter leaves (``tr.hps`` order), numbers or 0-dim tensors;
    ``si``: per 0-dim state key read, its ``n`` values as a float64 tensor; ``sd``: the dtype
    that state is kept in (for the "stored" roundings)."""
    outs = list(tr.elem_outputs.values()) + list(tr.scalar_outputs.values())
    alive = live(outs)
    unknown = {n.op for n in tr.graph.nodes if n.index in alive} - _KNOWN
    if unknown:  # ops added to the rule language since: the eager step, behind a graph break
        raise TraceError(f"not printed for torch.compile yet: {sorted(unknown)}")
    hp_names = [h[0] for h in tr.hps]
    ref: dict = {}
    nodes = [n for n in tr.graph.nodes if n.index in alive]
    boundary = []  # scalar nodes read by per-element nodes or stored to a buffer
    for n in nodes:
        if not n.scalar and n.op != "ein":
            boundary.extend(x.index for x in n.args if x.scalar and x.index not in boundary)
    boundary.extend(n.index for n in tr.elem_outputs.values() if n.scalar and n.index not in boundary)
    scalar_lines, elem_lines = ["def run(B, hp, si, n, dt, sd):"], []

    def elem_arg(x):
        return f"c{x.index}"

    for n in nodes:
        if n.op == "const":
            ref[n.index] = _const(n.value)
            continue
        if n.op == "hp":
            ref[n.index] = f"hp[{hp_names.index(n.name)}]"
            continue
        if n.op == "sin":
            ref[n.index] = f"si[{tr.scalar_inputs.index(n.name)}]"
            continue
        if n.op == "ein":
            ref[n.index] = f"B[{tr.buffers.index(n.name)}]"
            continue
        name = f"{'s' if n.scalar else 't'}{n.index}"
        a = [ref[x.index] for x in n.args]
        lines = scalar_lines if n.scalar else elem_lines
        if n.scalar:  # float64 arithmetic on numbers and tensors, as the reference path's floats
            if n.op in _PY:
                expr = f"{a[0]} {_PY[n.op]} {a[1]}"
            elif n.op == "max":
                expr = f"_maximum({a[0]}, {a[1]})"
            elif n.op == "stored":
                expr = f"_stored({a[0]}, sd[{tr.scalar_inputs.index(n.name)}])"
            else:
                expr = {"neg": f"-{a[0]}", "sqrt": f"_sqrt({a[0]})", "abs": f"_abs({a[0]})"}[n.op]
        elif n.op in ("neg", "sqrt", "abs"):
            expr = f"F._foreach_{n.op}({a[0]})"
        else:
            x, y = n.args
            if not x.scalar:
                expr = f"F._foreach_{_OPS[n.op]}({a[0]}, {elem_arg(y) if y.scalar else a[1]})"
            elif n.op in ("add", "mul", "max"):
                expr = f"F._foreach_{_OPS[n.op]}({a[1]}, {elem_arg(x)})"
            elif n.op == "sub":  # c - x == (-x) + c exactly
                expr = f"F._foreach_add(F._foreach_neg({a[1]}), {elem_arg(x)})"
            else:  # c / x, c ** x: per tensor
                c = elem_arg(x)
                expr = (f"[{c}[i] {_PY[n.op]} _x for i, _x in enumerate({a[1]})] if isinstance({c}, list) "
                        f"else [{c} {_PY[n.op]} _x for _x in {a[1]}]")
        lines.append(f"    {name} = {expr}")
        ref[n.index] = name
    lines = scalar_lines
    if boundary:
        names = [f"c{i}" for i in boundary]
        lines.append(f"    {', '.join(names)}, = _barrier([{', '.join(ref[i] for i in boundary)}], n, dt)")
    lines.extend(elem_lines)
    elem = []
    for buf, n in tr.elem_outputs.items():
        elem.append(f"_fill(B[0], {elem_arg(n)})" if n.scalar else ref[n.index])
    scal = [f"_vec({ref[n.index]}, n)" for n in tr.scalar_outputs.values()]
    lines.append(f"    return [{', '.join(elem)}], [{', '.join(scal)}]")
    source = "\n".join(lines) + "\n"
    namespace = dict(_NAMESPACE)
    exec(compile(source, f"<optimlab compiled {id(tr):x}>", "exec"), namespace)  # our own generated text
    return namespace["run"], source
