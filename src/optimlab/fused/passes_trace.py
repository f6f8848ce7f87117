"""Tracing a rule with reductions and matrix products: a graph of three kinds of values.

The rule is the one function of :mod:`optimlab.rules` that the reference path runs on
tensors; here :func:`optimlab.rules.update` (or ``estimate``) runs on :class:`PassSym`
values for one parameter shape and dtype. Every value the rule computes is a node of one
of three kinds:

* ``S``: one number per tensor (hyperparameters, ``step``, bias corrections, and the
  results of whole-tensor sums of per-element values: ``norm``, ``sum_``, ``dot``, ``mean``),
  evaluated in double, like the reference path's Python floats;
* ``E``: one value per element of the parameter (gradient, moments, the update), computed
  in generated C passes (:mod:`.passes_codegen`) with the element-wise kernel's printer;
* ``T``: a torch value of any shape (Adafactor's row and column means, Muon's Newton-Schulz
  matrices, a norm of a matrix inside it), recorded as a call of the very function the
  reference path calls (``torch.lerp``, ``mm``, ``mean_square``...) and replayed on tensors,
  so its rounding is the reference path's.

An operation with a per-element operand is ``E``, unless another operand is a ``T`` value
of a broadcast shape (then it is ``T``); one with ``T`` but no ``E`` operand is ``T``;
otherwise ``S``. Shapes come from running the recorded calls on meta tensors, so a rule
may read ``x.shape``, ``x.dim()``, ``x.size(i)``, ``x.numel()`` and ``x.dtype``. Integer
hyperparameters used as counts (``range(h.ns_steps)``) or compared with a non-zero number
are taken as concrete values; the program is re-traced when they change.
"""

from __future__ import annotations

import operator

import torch

from .. import _math, _reduce
from .trace import MASKS, Graph, Node, Sym, TraceError

#: whole-tensor sums computed inside a pass (in double): of x^2, of x, of a*b
REDUCTIONS = ("red_sumsq", "red_sum", "red_dot")
#: how a 'T' node of an operator is replayed on tensors (the reference path's functions)
TORCH_OPS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "pow": operator.pow, "neg": operator.neg, "sqrt": _math.sqrt, "abs": _math.abs_,
    "max": _math.maximum, "min": _math.minimum, "sign": _math.sign,
    "clamp_min": lambda x, lo: _math.clamp(x, lo, None), "clamp_max": lambda x, hi: _math.clamp(x, None, hi),
    "where": _math.where, "and": operator.and_,
    **{op: getattr(operator, op) for op in ("gt", "ge", "lt", "le", "eq", "ne")},
}


def _to(x, dtype):
    return x.to(dtype)


def tbuf_dtype(dtype: torch.dtype, compute: torch.dtype) -> torch.dtype:
    """The storage type in which a pass reads a torch value: its own when no wider than the
    compute type (the load widens it exactly), else the compute type."""
    supported = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    return dtype if dtype in supported and dtype.itemsize <= compute.itemsize else compute


class Arg:
    """Placeholder for the i-th node argument inside a recorded call's arguments."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i

    def __repr__(self):
        return f"Arg({self.i})"


class PassGraph(Graph):
    """The DAG of one rule for one parameter shape and compute dtype (see the module docstring)."""

    def __init__(self, shape, compute: torch.dtype):
        super().__init__()
        self.shape = tuple(shape)
        self.compute = compute
        self.concrete: dict = {}  # hyperparameter leaf name -> value the trace depends on
        #: what the trace read of the parameter's shape: None, "dim" or "shape" (torch values
        #: count as "shape"); params that agree on it share one program and one bucket
        self.reads = None

    def read(self, what: str) -> None:
        if self.reads != "shape":
            self.reads = what

    def meta_of(self, n: Node):
        if n.kind == "S":
            return 1.0
        if n.kind == "E":
            return torch.empty(self.shape, dtype=self.compute, device="meta")
        return n.meta

    def node(self, op, args=(), value=None, name=None, kind=None, fn=None, meta=None, key=None):
        memo = (op, tuple(a.index for a in args), None if value is None else float(value).hex(), name,
                key if fn is None else (id(fn[0]), key))
        found = self._memo.get(memo)
        if found is not None:
            return found
        if kind is None:
            kinds = {a.kind for a in args}
            broadcast = any(a.kind == "T" and tuple(a.meta.shape) != self.shape and a.meta.numel() != 1
                            for a in args)
            if op in ("const", "hp", "sin") or op in REDUCTIONS or kinds <= {"S"}:
                kind = "S"
            elif "E" in kinds and not broadcast:
                kind = "E"
            else:
                kind = "T"
        if kind == "T" and fn is None:
            if op not in TORCH_OPS:
                raise TraceError(f"operation {op!r} has no torch form")
            fn = (TORCH_OPS[op], tuple(Arg(i) for i in range(len(args))), ())
        if kind == "T":
            self.read("shape")
        if kind == "T" and meta is None:
            meta = _call(fn, [self.meta_of(a) for a in args])
        n = Node(op, tuple(args), kind == "S", len(self.nodes), value, name, kind, fn, meta)
        self.nodes.append(n)
        self._memo[memo] = n
        return n


def _call(fn, values):
    """Run a recorded call ``(function, positional template, keyword template)`` on ``values``."""
    f, pos, kws = fn

    def fill(x):
        return values[x.i] if isinstance(x, Arg) else x

    return f(*map(fill, pos), **{k: fill(v) for k, v in kws})


def call(node: Node, values):
    return _call(node.fn, values)


class PassSym(Sym):
    """A symbolic value of a :class:`PassGraph`: also a tensor's shape queries and the
    ``__optimlab_call__`` hook of :mod:`optimlab._reduce`."""

    __slots__ = ()

    # ---- shape queries
    @property
    def shape(self):
        self.graph.read("shape")
        n = self.node
        return torch.Size(self.graph.shape if n.kind == "E" else n.meta.shape if n.kind == "T" else ())

    def dim(self):
        if self.node.kind == "E":
            self.graph.read("dim")
            return len(self.graph.shape)
        return len(self.shape)

    def size(self, i=None):
        return self.shape if i is None else self.shape[i]

    def numel(self):
        return self.shape.numel()

    @property
    def dtype(self):
        return self.node.meta.dtype if self.node.kind == "T" else self.graph.compute

    def to(self, dtype):
        return self.__optimlab_call__(_to, (self, dtype), {})

    def __matmul__(self, o):
        return self.__optimlab_call__(operator.matmul, (self, o), {})

    # ---- integer hyperparameters used concretely
    def _concrete(self):
        if self.node.op != "hp":
            raise TraceError("a rule used a computed value as a Python number")
        self.graph.concrete[self.node.name] = self.node.value
        return self.node.value

    def __index__(self):
        v = self._concrete()
        if v != int(v):
            raise TraceError(f"hyperparameter {self.node.name} used as an integer is {v}")
        return int(v)

    def _compare(self, op, other):
        if self.node.op == "hp" and type(other) in (int, float) and other != 0:
            return getattr(operator, op)(self._concrete(), other)
        return super()._compare(op, other)

    # ---- reductions and torch calls
    def __optimlab_call__(self, fn, args, kwargs):
        g = self.graph
        syms = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Sym)]
        elementwise = all(s.node.kind == "E" for s in syms)
        whole = fn in (_reduce.norm, _reduce.sum_, _reduce.dot) or (fn is _reduce.mean and kwargs["dim"] is None)
        if whole and elementwise:
            x = args[0]
            if fn is _reduce.norm:
                return _math.sqrt(g.sym(g.node("red_sumsq", (x.node,))))
            if fn is _reduce.dot:
                return g.sym(g.node("red_dot", (x.node, args[1].node)))
            total = g.sym(g.node("red_sum", (x.node,)))
            return total / x.numel() if fn is _reduce.mean else total
        if fn is _reduce.lerp and any(s.node.kind == "E" for s in syms):
            return _elementwise_lerp(*args)
        nodes: list = []

        def template(x):
            if isinstance(x, Sym):
                nodes.append(x.node)
                return Arg(len(nodes) - 1)
            return x

        pos = tuple(template(a) for a in args)
        kws = tuple((k, template(v)) for k, v in kwargs.items())
        key = repr((pos, kws))
        return g.sym(g.node("call", tuple(nodes), kind="T", fn=(fn, pos, kws), key=key))


PassGraph.sym_class = PassSym


def _elementwise_lerp(a, b, w):
    """torch.lerp's two forms, chosen by the weight (a scalar): exact where torch is."""
    small = a + w * (b - a)
    large = b - (b - a) * (1 - w)
    if isinstance(w, (int, float)):
        return small if abs(w) < 0.5 else large
    return _math.where(_math.abs_(w) < 0.5, small, large)


def _levels(graph: PassGraph, needed: set) -> dict:
    """The pass in which each E node is computed / before which each S and T node is known."""
    lvl: dict = {}
    for n in graph.nodes:
        if n.index not in needed:
            continue
        if n.op in REDUCTIONS:
            lvl[n.index] = max(lvl[a.index] for a in n.args) + 1
        elif n.kind == "T":
            lvl[n.index] = max((0 if a.op == "ein" else lvl[a.index] + 1) if a.kind == "E" else lvl[a.index]
                               for a in n.args) if n.args else 0
        else:
            lvl[n.index] = max((lvl[a.index] for a in n.args), default=0)
    return lvl


__all__ = ["PassGraph", "PassSym", "REDUCTIONS", "MASKS", "call"]
