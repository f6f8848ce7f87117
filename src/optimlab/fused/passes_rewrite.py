"""Rewrites of a traced :class:`~.passes_trace.PassGraph` before it is cut into passes.

Torch calls that are per element in disguise move into the generated passes, where they
cost no extra trip through memory:

* arithmetic on torch values of the parameter's shape whose every use is per element
  (Muon's ``lr * ratio * O``, Adafactor's ``R C^T / mean(R)``) becomes per element;
* a widening conversion of such a value (Muon's bfloat16 ``O.to(float32)``) is loaded by
  the pass itself (a float32 rounding of a bfloat16 value is the identity);
* a per-element value whose every torch use is a rounding to bfloat16 (Muon's momentum
  before Newton-Schulz) is written by its pass in bfloat16, and the rounding is that
  temporary (:func:`narrowed`);
* an outer product of a column and a row (Adafactor's ``R C^T``) read only per element is
  one product an element in the passes, its factors read along rows and columns
  (:func:`outer_products`).

Each rewrite gives the values of the call it replaces, bit for bit.
"""

from __future__ import annotations

import operator

import torch

from .. import _reduce
from .passes_trace import PassGraph, _to, tbuf_dtype

_DEMOTABLE = {"add", "sub", "mul", "div", "pow", "neg", "sqrt", "abs", "max", "min", "sign",
              "clamp_min", "clamp_max"}


def _widening(n, graph) -> bool:
    """``n`` converts a torch value of the parameter's shape to the compute type exactly."""
    return (n.op == "call" and n.fn[0] is _to and len(n.args) == 1 and n.args[0].kind == "T"
            and n.meta.dtype == graph.compute and tuple(n.meta.shape) == graph.shape
            and tbuf_dtype(n.args[0].meta.dtype, graph.compute) == n.args[0].meta.dtype)


def demote(graph: PassGraph, roots: dict) -> None:
    """Torch arithmetic on values of the parameter's shape whose every use is per element
    (Muon's ``lr * ratio * O``, Adafactor's ``R C^T / mean(R)``) moves into the passes; so
    does a widening conversion (Muon's bfloat16 ``O.to(float32)``): the pass loads the
    narrower value (a float32 rounding of it is the identity)."""
    users: dict = {}
    for n in graph.nodes:
        for a in n.args:
            users.setdefault(a.index, []).append(n)
    stored = {n.index for n in roots.values()}
    for n in reversed(graph.nodes):
        if (n.kind == "T" and n.op in _DEMOTABLE and tuple(n.meta.shape) == graph.shape
                and n.meta.dtype == graph.compute
                and all(a.kind != "T" or tuple(a.meta.shape) == graph.shape or a.meta.numel() == 1
                        for a in n.args)
                and (users.get(n.index) or n.index in stored)
                and all(u.kind == "E" for u in users.get(n.index, []))):
            n.kind, n.scalar = "E", False
        elif (n.kind == "T" and _widening(n, graph) and (users.get(n.index) or n.index in stored)
                and all(u.kind == "E" for u in users.get(n.index, []))):
            n.kind, n.scalar, n.op = "E", False, "float32"


def _users(graph, needed) -> dict:
    """{node index: the needed nodes that read it}."""
    users: dict = {}
    for n in graph.nodes:
        if n.index in needed:
            for a in n.args:
                users.setdefault(a.index, []).append(n)
    return users


def narrowed(graph, needed) -> dict:
    """Muon's ``low_precision(M)``: a per-element value whose every torch use is a rounding
    to bfloat16 is written by its pass straight in bfloat16 (the store rounds as
    ``Tensor.bfloat16()``, round to nearest even), and the rounding is that temporary.
    float32 compute only (from double, torch rounds through float)."""
    if graph.compute != torch.float32:
        return {}
    users = _users(graph, needed)

    def rounding(u):
        return u.kind == "T" and u.op == "call" and u.fn[0] is _reduce.low_precision and len(u.args) == 1

    out = {}
    for n in graph.nodes:
        if n.index in needed and rounding(n) and n.args[0].kind == "E" and n.args[0].op != "ein":
            a = n.args[0]
            if all(u.kind == "E" or rounding(u) for u in users[a.index]):
                out[n.index] = a.index
    return out


def outer_products(graph, needed, roots) -> dict:
    """Adafactor's ``R @ C`` of a (n, 1) and a (1, m) torch value, for a matrix parameter
    (n, m), read only per element: computed by the passes themselves, each element one
    product ``R[i] * C[j]`` of the factors read along rows and columns (:mod:`.passes_codegen`),
    the value the matrix product gives (one product, rounded once), and no full-size
    temporary. {node index: (R node, C node)}."""
    shape, stored = graph.shape, {n.index for n in roots}
    if len(shape) != 2:
        return {}
    users = _users(graph, needed)
    out = {}
    for n in graph.nodes:
        if (n.index in needed and n.kind == "T" and n.op == "call" and n.fn[0] is operator.matmul
                and len(n.args) == 2 and n.index not in stored and tuple(n.meta.shape) == shape
                and n.meta.dtype == graph.compute and users.get(n.index)
                and all(u.kind == "E" for u in users[n.index])):
            a, b = n.args
            if (a.kind == b.kind == "T" and tuple(a.meta.shape) == (shape[0], 1)
                    and tuple(b.meta.shape) == (1, shape[1])
                    and a.meta.dtype == b.meta.dtype == graph.compute):
                out[n.index] = (a, b)
    return out


__all__ = ["demote", "narrowed", "outer_products"]
