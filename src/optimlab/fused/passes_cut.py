"""Cutting a traced pass graph into generated C passes (:mod:`.passes`, which traces it).

A level of the graph (:func:`.passes_trace._levels`) becomes one pass over every element of
a bucket's tensors: it recomputes the per-element values it needs from the inputs, reads
the torch values of the parameter's shape and the outer products' factors from buffers,
accumulates the whole-tensor sums the next level reads, writes the per-element temporaries
a torch call between passes reads, and, in the last pass, stores the parameter and its
per-element state. :mod:`.passes_codegen` prints the C; :mod:`.build` compiles it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from . import build
from .passes_codegen import generate
from .passes_trace import REDUCTIONS, tbuf_dtype
from .trace import TraceError

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
           torch.float16: "float16"}


@dataclass
class Pass:
    """One generated pass: its C function and what to hand it."""

    fn: object
    buffers: list  # ('ein', name) | ('tbuf', node) | ('tmp', node), in argument order
    scalars: list  # nodes read from the per-tensor scalar slots
    reductions: list  # reduction nodes accumulated here
    traffic: list  # per buffer: bytes per element moved (read + written)


def cut_passes(graph, needed, lvl, elem, dtype, narrow=frozenset(), products=None) -> list:
    """The C passes of a traced graph, one per level (None where a level has none): each
    accumulates the reductions the next level reads, writes the temporaries a torch call
    reads, and the last one stores the parameter and its per-element state."""
    nodes = [n for n in graph.nodes if n.index in needed]
    final = max((lvl[n.index] for n in nodes if n.kind == "E"), default=-1)
    if any(lvl[n.index] > final and any(a.op == "ein" for a in n.args) for n in nodes if n.kind == "T"):
        raise TraceError("a torch call reads an input after the last pass wrote it")
    materialise = {a.index: a for n in nodes if n.kind == "T" for a in n.args
                   if a.kind == "E" and a.op != "ein"}
    passes = []
    for level in range(final + 1):
        reds = [n for n in nodes if n.op in REDUCTIONS and lvl[n.index] == level + 1]
        temps = [a for a in materialise.values() if lvl[a.index] == level]
        stores = list(elem.items()) if level == final else []
        roots = [a for r in reds for a in r.args] + temps + [n for _, n in stores]
        if not roots:
            passes.append(None)
            continue
        passes.append(_pass(graph, roots, reds, temps, stores, dtype, narrow, products or {}))
    return passes


def _pass(graph, roots, reds, temps, stores, dtype, narrow=frozenset(), products=None) -> Pass:
    """The body of one pass: the E nodes ``roots`` need, stopping at S/T values and inputs."""
    body, seen, scalars, stack = [], set(), [], list(roots)
    while stack:
        n = stack.pop()
        if n.index in seen:
            continue
        seen.add(n.index)
        if n.kind == "E" and n.op != "ein":
            stack.extend(n.args)
    compute = _DTYPES[graph.compute]
    buffers, loads, order, factors = [], {}, [], {}
    for n in graph.nodes:
        if n.index not in seen:
            continue
        if n.kind == "E":
            body.append(n)
            if n.op == "ein":
                loads[n.index] = len(buffers)
                buffers.append((("ein", n.name), _DTYPES[dtype]))
        elif n.index in (products or {}):  # R C^T: R[i] * C[j], the factors read along rows, columns
            body.append(n)
            factors[n.index] = (len(buffers), len(buffers) + 1)
            buffers += [(("rows", products[n.index][0]), compute), (("cols", products[n.index][1]), compute)]
        elif n.kind == "T" and tuple(n.meta.shape) == graph.shape and n.meta.numel() != 1:
            body.append(n)
            loads[n.index] = len(buffers)
            buffers.append((("tbuf", n), _DTYPES[tbuf_dtype(n.meta.dtype, graph.compute)]))
        else:
            scalars.append(n)
    written = {}
    store_list = []
    for t in temps:
        written[len(buffers)] = True
        store_list.append((len(buffers), t))
        buffers.append((("tmp", t), "bfloat16" if t.index in narrow else compute))
    names = {b[0][1]: i for i, b in enumerate(buffers) if b[0][0] == "ein"}
    for name, n in stores:
        if name not in names:
            names[name] = len(buffers)
            buffers.append((("ein", name), _DTYPES[dtype]))
        written[names[name]] = True
        store_list.append((names[name], n))
    order = [(d, i in written) for i, (_, d) in enumerate(buffers)]
    source = generate(body, order, loads, store_list, scalars, reds, compute, factors=factors)
    lib = build._library(source, ['-fopenmp-simd'])
    build.pool()
    fn = lib.optimlab_pass
    fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    sizes, loaded = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}, set(loads.values())
    traffic = [sizes[d] * ((i in loaded) + (i in written)) for i, (_, d) in enumerate(buffers)]
    return Pass(fn, [b[0] for b in buffers], scalars, reds, traffic)


