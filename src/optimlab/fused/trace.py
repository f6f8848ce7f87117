"""Symbolic tracing of :func:`optimlab.rules.update` into an expression DAG.

The fused kernel is not a second copy of the math: it is *generated* by running the very
function the reference path runs (``rules.update(rule, p, g, s, h)``) on symbolic
values. Every arithmetic operation the rule performs appends one node to a
:class:`Graph`, in the order the reference path performs it, so the generated code
rounds exactly where torch rounds.

A node is *scalar* when it depends only on hyperparameters, constants and 0-dim state
(``step``, ``mu_product``); otherwise it is *per-element*. Scalar nodes are evaluated in
double once per tensor, like the Python floats of the reference path; per-element nodes
run in the kernel's compute type, and a scalar operand is rounded to that type where it
meets a per-element one, as torch does with a Python scalar.

Rules may branch (a Python ``if``) only on Python bools, on ``x != 0`` / ``x > 0`` (and
the other comparisons with the literal ``0``) of a *hyperparameter*, and on ``state is
None``. Comparisons with zero are answered from the hyperparameter's concrete value; the
caller puts the sign of every numeric hyperparameter into the kernel's cache key, so such
a guard can never go stale. Any other comparison is a *mask* node (``gt ge lt le eq
ne``), whose only use is the condition of a ``where`` node: a scalar mask (RAdam's
``rho_t > 5`` on the step) selects once per tensor in double, like any scalar node, a
per-element mask selects per element. Any other ``bool()`` of a symbolic value raises
:class:`TraceError`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..rules import update
from ..rules.base import unscaled


class TraceError(TypeError):
    """The rule did something the tracer cannot turn into a kernel."""


@dataclass(eq=False)
class Node:
    """One operation. ``op`` is 'const', 'hp', 'sin' (scalar state), 'ein' (per-element
    input), or an operator: add sub mul div pow neg sqrt max min abs sign, clamp_min
    clamp_max (torch.clamp's two halves), float32 (a rounding), stored (a rounding to the
    dtype of the 0-dim state ``name``, :func:`optimlab._math.in_place_mul`), a comparison in :data:`MASKS` (1 or 0), or
    where (condition, a, b)."""

    op: str
    args: tuple
    scalar: bool
    index: int
    value: float | None = None  # constants and hyperparameters only
    name: str | None = None  # inputs only
    #: :mod:`.passes` only: 'S' (per-tensor scalar), 'E' (per element) or 'T' (a torch value),
    #: the torch function of a 'T' call, and a meta tensor with a 'T' node's shape and dtype
    kind: str | None = None
    fn: object = None
    meta: object = None


class Graph:
    """Hash-consed DAG; ``nodes`` is in creation (= evaluation) order."""

    sym_class: type  # set below: Sym (the passes' graph uses its own)

    def __init__(self):
        self.nodes: list[Node] = []
        self._memo: dict = {}
        self.compared: set = set()  # hyperparameters a branch compared with 0 (their sign is in the key)

    def node(self, op, args=(), value=None, name=None) -> Node:
        key = (op, tuple(a.index for a in args), None if value is None else float(value).hex(), name)
        found = self._memo.get(key)
        if found is not None:
            return found
        scalar = all(a.scalar for a in args) if args else op != "ein"
        n = Node(op, tuple(args), scalar, len(self.nodes), value, name)
        self.nodes.append(n)
        self._memo[key] = n
        return n

    def sym(self, node: Node) -> "Sym":
        return self.sym_class(self, node)


#: comparison ops: their nodes are masks, only for a ``where``'s condition
MASKS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!=", "and": "&&"}


def _is_zero_literal(x) -> bool:
    return type(x) in (int, float) and x == 0


class Sym:
    """A symbolic number. Supports the operators and the ``__optimlab_*__`` hooks of
    :mod:`optimlab._math`; comparisons only against the literal 0 of a hyperparameter."""

    __slots__ = ("graph", "node")
    __hash__ = object.__hash__

    def __init__(self, graph: Graph, node: Node):
        self.graph = graph
        self.node = node

    def _lift(self, x) -> Node:
        if isinstance(x, Sym):
            if x.graph is not self.graph:
                raise TraceError("symbols from two different traces were mixed")
            return x.node
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TraceError(f"cannot trace an operation with {type(x).__name__} {x!r}")
        return self.graph.node("const", value=float(x))

    def _op(self, op, *args) -> "Sym":
        nodes = tuple(self._lift(a) for a in args)
        for i, n in enumerate(nodes):
            if (n.op in MASKS) != (op == "where" and i == 0 or op == "and"):
                raise TraceError("a comparison is a mask for where(mask, a, b), not a number"
                                 if n.op in MASKS else "where(mask, a, b) needs a comparison as its mask")
        return self.graph.sym(self.graph.node(op, nodes))

    def __add__(self, o): return self._op("add", self, o)
    def __radd__(self, o): return self._op("add", o, self)
    def __sub__(self, o): return self._op("sub", self, o)
    def __rsub__(self, o): return self._op("sub", o, self)
    def __mul__(self, o): return self._op("mul", self, o)
    def __rmul__(self, o): return self._op("mul", o, self)
    def __truediv__(self, o): return self._op("div", self, o)
    def __rtruediv__(self, o): return self._op("div", o, self)
    def __pow__(self, o): return self._op("pow", self, o)
    def __rpow__(self, o): return self._op("pow", o, self)
    def __neg__(self): return self._op("neg", self)
    def __and__(self, o): return self._op("and", self, o)  # of two masks: both hold
    def __pos__(self): return self

    def __optimlab_sqrt__(self): return self._op("sqrt", self)
    def __optimlab_abs__(self): return self._op("abs", self)
    def __optimlab_maximum__(self, o): return self._op("max", self, o)
    def __optimlab_minimum__(self, o): return self._op("min", self, o)
    def __optimlab_sign__(self): return self._op("sign", self)
    def __optimlab_where__(self, a, b): return self._op("where", self, a, b)

    def __optimlab_as_default_dtype__(self):
        # the default dtype is in the kernel's cache key (plan.hkey)
        return self if torch.get_default_dtype() == torch.float64 else self._op("float32", self)

    def __optimlab_in_place_mul__(self, factor):
        # each backend rounds a "stored" node to the dtype the state ``name`` is stored in
        if self.node.op != "sin":
            raise TraceError("in_place_mul: the state must be the value read from its tensor")
        def stored(x):
            return self.graph.sym(self.graph.node("stored", (self._lift(x),), name=self.node.name))

        return stored(self * stored(factor))

    def __optimlab_clamp__(self, x, lo, hi):
        x = x if isinstance(x, Sym) else self._wrap(x)
        if lo is not None:
            x = x._op("clamp_min", x, lo)
        if hi is not None:
            x = x._op("clamp_max", x, hi)
        return x

    def _wrap(self, v) -> "Sym":
        return self.graph.sym(self._lift(v))

    def _compare(self, op, other):
        """A hyperparameter against the literal 0: a Python bool (a guard, see the module
        docstring); anything else: a mask node."""
        if self.node.op == "hp" and _is_zero_literal(other):
            self.graph.compared.add(self.node.name)
            return getattr(operator, op)(self.node.value, 0)
        return self._op(op, self, other)

    def __eq__(self, o): return self._compare("eq", o)
    def __ne__(self, o): return self._compare("ne", o)
    def __gt__(self, o): return self._compare("gt", o)
    def __ge__(self, o): return self._compare("ge", o)
    def __lt__(self, o): return self._compare("lt", o)
    def __le__(self, o): return self._compare("le", o)

    def __bool__(self):
        raise TraceError("a rule branched on a symbolic value; only bools, `x != 0` on "
                         "hyperparameters and `state is None` may be tested (use where(mask, a, b))")

    def __repr__(self):
        return f"Sym({self.node.op}#{self.node.index})"


Graph.sym_class = Sym


@dataclass
class Trace:
    """The result of tracing one rule for one flag/zero/lazy-state pattern.

    ``buffers``: per-element buffers in kernel argument order ('param', 'grad', then the
    state keys read or written); ``reads``: those the update reads. ``elem_outputs``:
    buffer name -> node stored to it ('param' first).
    ``scalar_inputs`` / ``scalar_outputs``: 0-dim state keys read / rebound.
    ``hps``: hyperparameter leaves as (name, key, index-or-None) in ``hp[]`` order.
    """

    graph: Graph
    buffers: list
    reads: list
    elem_outputs: dict
    scalar_inputs: list
    scalar_outputs: dict
    hps: list


def live(roots) -> set:
    """Indices of the nodes ``roots`` depend on (themselves included)."""
    seen: set = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n.index not in seen:
            seen.add(n.index)
            stack.extend(n.args)
    return seen


def hp_value(h, key, index):
    """The runtime value of one hyperparameter leaf, as a float."""
    v = getattr(h, key)
    if index is not None:
        v = v[index]
    return float(v)


def _sym_hyperparameters(graph: Graph, h: SimpleNamespace, hps: list) -> SimpleNamespace:
    out = {}
    for key, v in vars(h).items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            out[key] = v
        elif isinstance(v, (int, float)) or _is_number_tensor(v):
            out[key] = graph.sym(graph.node("hp", value=float(v), name=key))
            hps.append((key, key, None))
        elif isinstance(v, tuple) and all((isinstance(x, (int, float)) and not isinstance(x, bool))
                                          or _is_number_tensor(x) for x in v):
            leaves = []
            for i, x in enumerate(v):
                leaves.append(graph.sym(graph.node("hp", value=float(x), name=f"{key}[{i}]")))
                hps.append((f"{key}[{i}]", key, i))
            out[key] = tuple(leaves)
        else:
            out[key] = v  # traced only if the rule uses it; arithmetic on it raises
    return SimpleNamespace(**out)


def _is_number_tensor(v) -> bool:
    return isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex()


def trace(rule, h: SimpleNamespace, present_lazy: frozenset) -> Trace:
    """Trace ``rules.update(rule, ...)`` for hyperparameters ``h``.

    ``present_lazy``: the lazily created state keys (fill ``None`` in ``rule.tensors``)
    that already exist; the others are traced as ``None``, giving the first-step kernel.
    """
    if not rule.elementwise:
        raise TraceError(f"{rule.name} reads whole tensors (reductions, matrix products): "
                         "it has no element-wise kernel")
    graph = Graph()
    hps: list = []
    hs = _sym_hyperparameters(graph, h, hps)
    fills = rule.tensors(h)
    p = graph.sym(graph.node("ein", name="param"))
    g = graph.sym(graph.node("ein", name="grad"))
    s = SimpleNamespace()
    for key in rule.scalars:
        setattr(s, key, graph.sym(graph.node("sin", name=key)))
    for key, fill in fills.items():
        exists = fill is not None or key in present_lazy
        setattr(s, key, graph.sym(graph.node("ein", name=key)) if exists else None)
    old = dict(vars(s))

    new_p = update(rule, p, g, s, hs)
    if not isinstance(new_p, Sym):
        raise TraceError("the update did not produce a symbolic parameter")

    elem_outputs = {"param": p._lift(new_p)}
    if h.grad_scale is not None:  # GradScaler's fused protocol: the grad is left unscaled
        elem_outputs["grad"] = p._lift(unscaled(g, hs))
    scalar_outputs = {}
    for key in rule.scalars:
        value = getattr(s, key)
        if value is not old[key]:
            n = p._lift(value)
            if not n.scalar:
                raise TraceError(f"scalar state {key!r} became per-element")
            scalar_outputs[key] = n
    for key in fills:
        value = getattr(s, key)
        if value is not old[key]:
            if value is None:
                raise TraceError(f"state {key!r} was reset to None")
            elem_outputs[key] = p._lift(value)

    used = _reachable(list(elem_outputs.values()) + list(scalar_outputs.values()))
    reads = {n.name for n in graph.nodes if n.op == "ein" and n.index in used}
    buffers = ["param", "grad"] + [k for k in fills if k in reads or k in elem_outputs]
    scalar_inputs = [k for k in rule.scalars
                     if k in scalar_outputs or any(n.op == "sin" and n.name == k and n.index in used
                                                   for n in graph.nodes)]
    hps = [t for t in hps if any(n.op == "hp" and n.name == t[0] and n.index in used for n in graph.nodes)]
    return Trace(graph, buffers, sorted(reads), elem_outputs, scalar_inputs, scalar_outputs, hps)


def _reachable(roots) -> set:
    seen: set = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n.index in seen:
            continue
        seen.add(n.index)
        stack.extend(n.args)
    return seen

