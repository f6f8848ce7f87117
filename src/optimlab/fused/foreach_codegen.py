"""Python code generation from a :class:`~optimlab.fused.trace.Trace`: the same DAG the C
kernel is printed from, printed as a sequence of ``torch._foreach_*`` operations.

Two functions are generated per (rule, flags, zero pattern, lazy-state pattern, which
buffers are scratch copies):

``scalars(hp, si)``
    the scalar nodes as Python float arithmetic, exactly the operations (and the
    operators) the reference path performs on its Python floats (``si``: the 0-dim state
    values, then their dtypes, for the "stored" roundings); it returns the scalars
    that meet per-element nodes and the new 0-dim state values.
``elements(B, c)``
    the per-element nodes as ``torch._foreach_*`` calls over lists of tensors ``B``
    (one list per buffer, in ``trace.buffers`` order), with the scalars ``c``.

Every value lives in a *slot*: an input buffer or a temporary list. A result is written
in place into an operand's slot when that operand is dead afterwards and the slot may
be written (a temporary, an output buffer, or a scratch copy), so e.g. Adam's moments
are updated in their own state tensors with no copy. Add/sub nodes absorb single-use
scaled products and quotients into ``_foreach_addcmul_`` / ``_foreach_addcdiv_`` /
``_foreach_add_(alpha=)``, and ``a * X + (1 - a) * Y`` into ``_foreach_lerp_``, one pass
over memory instead of two or three. These change rounding by an ulp per step (scalar
factors are folded in double, ``lerp`` uses a different formula), within the fused
tests' tolerances; everything else follows the DAG's order, as the reference path does.

A program with a per-element ``sign`` or comparison is printed without these forms: an
ulp there can flip a sign (Lion) or a branch (Rprop), so it rounds as the reference path.
torch has no multi-tensor comparison or select: a mask is a list of bool tensors (one
``torch.gt`` ... per tensor) and a ``where`` one ``torch.where`` per tensor (the helpers the
printed code calls: :mod:`.foreach_runtime`).

A ``where`` on a scalar condition (RAdam's rectification, ASGD's averaging once it
starts) is decided before the per-element program runs: ``elements`` is printed once per
pattern of such conditions (:attr:`Program.conditions`, read from ``c``), with each of
those ``where`` nodes replaced by the branch its condition picks, so the other branch is
dead code and is not computed at all (and the picked one is not copied). Where the picked
branch is a scalar (the other per-element), the list is filled with it (``_select``).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace

from .foreach_runtime import NAMESPACE
from .trace import MASKS, Node, Trace, TraceError, live

_PY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
_UNARY = {"neg": "neg", "sqrt": "sqrt", "abs": "abs", "sign": "sign"}
_CAST = {"float32": "_float32"}
_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "max": "maximum",
           "min": "minimum", "clamp_min": "clamp_min", "clamp_max": "clamp_max"}
#: a line of a per-element function that binds a new list: a temporary, a mask, a clone
_ALLOCATES = re.compile(r"^    (t|m|_c)\d+ = ", re.M)
_FLIPPED = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge", "eq": "eq", "ne": "ne"}


#: list-scalar ops whose scalar is passed by :func:`_T`
_TENSOR_SCALAR = ("add", "sub", "mul", "div")


def _const(v: float) -> str:
    if v != v:
        return "math.nan"
    if v in (math.inf, -math.inf):
        return "math.inf" if v > 0 else "(-math.inf)"
    return f"({v!r})" if v < 0 or (v == 0 and math.copysign(1.0, v) < 0) else repr(float(v))


@dataclass
class Program:
    """The generated functions plus what the runner needs to call them.

    ``elements(B, c)`` runs the per-element program printed for the values in ``c`` of
    the scalar ``where`` conditions (``conditions``: their positions in ``c``); every
    pattern is printed up front, so a form the printer refuses fails before any step."""

    trace: Trace
    scalars: object
    scalar_source: str
    outputs: list = field(default_factory=list)  # buffers written, in trace.buffers order
    conditions: list = field(default_factory=list)
    variants: dict = field(default_factory=dict)  # condition values -> (elements function, its source)

    def elements(self, lists, c) -> None:
        self.variants[tuple(bool(c[i]) for i in self.conditions)][0](lists, c)

    def allocates(self, c) -> bool:
        """Whether the per-element program for ``c`` gains from running in chunks: it makes
        temporaries, or makes more than one pass (a later op then finds the chunk in cache);
        a single in-place op (plain SGD) does not."""
        source = self.variants[tuple(bool(c[i]) for i in self.conditions)][1]
        return _ALLOCATES.search(source) is not None or source.count("\n    ") > 2

    @property
    def source(self) -> str:
        """The scalar function, then the per-element function of each condition pattern."""
        return "\n\n\n".join([self.scalar_source] + [
            (f"# conditions {key}\n" if self.conditions else "") + src
            for key, (_, src) in self.variants.items()]) + "\n"



def _one_minus(u: Node, v: Node) -> bool:
    """u is the node ``1 - v``."""
    return u.op == "sub" and u.args[0].op == "const" and u.args[0].value == 1.0 and u.args[1] is v


class _Printer:
    """Chooses patterns and slots for the per-element nodes, then prints them."""

    def __init__(self, tr: Trace, writable: frozenset):
        self.full = tr
        self._use(tr)
        # scalars meeting per-element nodes, then scalar values stored to element buffers
        self.boundary: list[Node] = []
        for n in self.elem:
            self.boundary.extend(a for a in n.args if a.scalar and a not in self.boundary)
        self.boundary.extend(n for n in tr.elem_outputs.values() if n.scalar and n not in self.boundary)
        # where nodes on a scalar condition, decided before the per-element program runs
        self.decided = [n for n in self.elem if n.op == "where" and n.args[0].scalar]
        self.conditions = [self.boundary.index(n.args[0]) for n in self.decided]
        self.bvar = {f"b{i}": name for i, name in enumerate(tr.buffers)}
        self.writable = {f"b{i}" for i, name in enumerate(tr.buffers)
                         if name in tr.elem_outputs or name in writable}

    def _use(self, tr: Trace) -> None:
        """Print the per-element nodes of ``tr`` (the whole trace, or one resolved by
        :meth:`resolve`; the scalar nodes, and so ``c``, are the same in both)."""
        self.tr = tr
        out_nodes = list(tr.elem_outputs.values()) + list(tr.scalar_outputs.values())
        self.live = live(out_nodes)
        self.elem = [n for n in tr.graph.nodes if n.index in self.live and not n.scalar and n.op != "ein"]
        self.outputs = {n.index for n in tr.elem_outputs.values()}
        self.uses: dict = {}
        for n in self.elem:
            for a in n.args:
                self.uses[a.index] = self.uses.get(a.index, 0) + 1
        # a sign or comparison of per-element values turns an ulp into a different branch
        # (Lion's sign(beta1 m + (1 - beta1) g) near 0): such programs round as the
        # reference path does, one op per node, with no fused forms
        self.exact = any(n.op == "sign" or n.op in MASKS for n in self.elem)

    def resolve(self, key: tuple) -> Trace:
        """The trace with each decided ``where`` replaced by the branch ``key`` picks (when
        that branch is per-element; a scalar branch stays a ``where``, filled by ``_select``).
        Per-element nodes are copied with the new arguments, keeping their indices."""
        pick = {n.index: n.args[1 if cond else 2] for n, cond in zip(self.decided, key)}
        new: dict = {}
        nodes = []
        for n in self.full.graph.nodes:
            chosen = pick.get(n.index)
            if chosen is not None and not chosen.scalar:
                new[n.index] = new[chosen.index]
                continue
            if not n.scalar and n.args:
                n = replace(n, args=tuple(new[a.index] for a in n.args))
            new[n.index] = n
            nodes.append(n)
        graph = _Nodes(nodes)
        return replace(self.full, graph=graph,
                       elem_outputs={k: new[v.index] for k, v in self.full.elem_outputs.items()})

    # ---- scalars
    def sref(self, x: Node) -> str:
        if x.op == "const":
            return _const(x.value)
        if x.op == "hp":
            return f"hp[{[h[0] for h in self.tr.hps].index(x.name)}]"
        if x.op == "sin":
            return f"si[{self.tr.scalar_inputs.index(x.name)}]"
        return f"s{x.index}"

    def scalar_source(self) -> str:
        self._use(self.full)
        lines = ["def scalars(hp, si):"]
        for n in self.tr.graph.nodes:
            if n.index not in self.live or not n.scalar or n.op in ("const", "hp", "sin"):
                continue
            a = [self.sref(x) for x in n.args]
            if n.op in _PY:
                expr = f"{a[0]} {_PY[n.op]} {a[1]}"
            elif n.op in MASKS:
                expr = f"{a[0]} {MASKS[n.op]} {a[1]}"
            elif n.op == "stored":  # si holds each 0-dim state's value, then its dtype
                expr = f"_stored({a[0]}, si[{len(self.tr.scalar_inputs) + self.tr.scalar_inputs.index(n.name)}])"
            elif n.op == "where":
                expr = f"{a[1]} if {a[0]} else {a[2]}"
            else:  # the functions of optimlab._math, as the reference path calls them
                a += ["None"] * (2 - len(a))
                expr = {"neg": f"-{a[0]}", "sqrt": f"_sqrt({a[0]})", "abs": f"_abs({a[0]})",
                        "sign": f"_sign({a[0]})", "max": f"_maximum({a[0]}, {a[1]})",
                        "min": f"_minimum({a[0]}, {a[1]})", "clamp_min": f"_clamp({a[0]}, {a[1]}, None)",
                        "clamp_max": f"_clamp({a[0]}, None, {a[1]})",
                        "float32": f"_float32({a[0]})"}[n.op]
            lines.append(f"    s{n.index} = {expr}")
        bnd = ", ".join(self.sref(b) for b in self.boundary)
        outs = ", ".join(self.sref(n) for n in self.tr.scalar_outputs.values())
        lines.append(f"    return ({bnd}{',' if self.boundary else ''}), ({outs}{',' if outs else ''})")
        return "\n".join(lines)

    def cref(self, x: Node) -> str:
        return f"c[{self.boundary.index(x)}]"

    # ---- patterns
    def single(self, n: Node) -> bool:
        return (not n.scalar and n.op != "ein" and self.uses.get(n.index) == 1
                and n.index not in self.outputs)

    def peel(self, n: Node):
        """n = k * core with k a product/quotient of scalars: (factor strings, core, absorbed)."""
        factors, absorbed = [], []
        while self.single(n):
            a, b = (n.args + (None,))[:2]
            if n.op == "mul" and a.scalar != b.scalar:
                k, n2 = (a, b) if a.scalar else (b, a)
                factors.append(("*", self.cref(k)))
            elif n.op == "div" and b.scalar and not a.scalar:
                n2 = a
                factors.append(("/", self.cref(b)))
            else:
                break
            absorbed.append(n)
            n = n2
        return factors, n, absorbed

    @staticmethod
    def value(sign: float, factors) -> str:
        expr = "-1.0" if sign < 0 else "1.0"
        for op, f in factors:
            expr = f"({expr} * {f})" if op == "*" else f"_fdiv({expr}, {f})"
        return expr

    def match(self, r: Node):
        """A fused form of add/sub node ``r``: (kind, accumulator, inputs, value, absorbed) or None."""
        a, b = r.args
        if a.scalar or b.scalar:
            return None
        if r.op == "add" and a.op == b.op == "mul" and self.single(a) and self.single(b):
            (k1, x), (k2, y) = [(u, v) if u.scalar else (v, u) for u, v in (a.args, b.args)]
            if k1.scalar and k2.scalar and not x.scalar and not y.scalar:
                if _one_minus(k2, k1):
                    return "lerp", x, [y], self.cref(k2), [a, b]
                if _one_minus(k1, k2):
                    return "lerp", y, [x], self.cref(k1), [a, b]
        candidates = [(a, b, 1.0), (b, a, 1.0)] if r.op == "add" else [(a, b, -1.0)]
        for x, t, sign in candidates:
            factors, core, absorbed = self.peel(t)
            if self.single(core) and core.op in ("div", "mul") and not any(u.scalar for u in core.args):
                num, den = core.args
                fa, num, absa = self.peel(num)
                if core.op == "div":
                    return "addcdiv", x, [num, den], self.value(sign, factors + fa), absorbed + [core] + absa
                fb, den, absb = self.peel(den)
                return ("addcmul", x, [num, den], self.value(sign, factors + fa + fb),
                        absorbed + [core] + absa + absb)
            if factors:
                return "axpy", x, [core], self.value(sign, factors), absorbed
        return None

    # ---- elements
    def element_source(self, key: tuple = ()) -> str:
        """The per-element function for the decided conditions' values ``key``."""
        self._use(self.resolve(key) if key else self.full)
        return self._element_source()

    def _element_source(self) -> str:
        plans, absorbed = {}, set()
        for r in self.elem:
            if r.op in ("add", "sub") and not self.exact:
                m = self.match(r)
                if m is not None:
                    plans[r.index] = m
                    absorbed.update(n.index for n in m[4])
        ops = [n for n in self.elem if n.index not in absorbed]
        reads = {}
        last: dict = {}
        for pos, n in enumerate(ops):
            reads[n.index] = [plans[n.index][1], *plans[n.index][2]] if n.index in plans else \
                [x for x in n.args if not x.scalar]
            for x in reads[n.index]:
                last[x.index] = pos
        slot = {n.index: f"b{self.tr.buffers.index(n.name)}" for n in self.tr.graph.nodes
                if n.op == "ein" and n.index in self.live}
        lines = ["def elements(B, c):", f"    {', '.join(self.bvar)}{',' if len(self.bvar) == 1 else ''} = B"]

        def dead(x, pos):
            """x is not needed after op ``pos`` and its slot may be overwritten."""
            s = slot[x.index]
            return (last.get(x.index) == pos and x.index not in self.outputs
                    and (s.startswith("t") or s in self.writable))

        for pos, n in enumerate(ops):
            ref = lambda x: self.cref(x) if x.scalar else slot[x.index]  # noqa: E731
            if n.index in plans:
                kind, x, inputs, value, _ = plans[n.index]
                fn = {"lerp": "lerp", "addcdiv": "addcdiv", "addcmul": "addcmul", "axpy": "add"}[kind]
                kw = "alpha=" if kind == "axpy" else ("" if kind == "lerp" else "value=")
                args = ", ".join([ref(x)] + [ref(i) for i in inputs] + [kw + value])
                lines.append(self.emit(n, fn, args, x if dead(x, pos) else None, slot))
                continue
            lines.extend(self.plain(n, pos, dead, ref, slot))
        lines.extend(self.store(slot))
        return "\n".join(lines)

    @staticmethod
    def emit(n, fn, args, inplace, slot) -> str:
        if inplace is not None:
            slot[n.index] = slot[inplace.index]
            return f"    F._foreach_{fn}_({args})"
        slot[n.index] = f"t{n.index}"
        return f"    t{n.index} = F._foreach_{fn}({args})"

    def plain(self, n, pos, dead, ref, slot) -> list:
        op, args = n.op, n.args
        if op in _UNARY:
            x = args[0]
            return [self.emit(n, _UNARY[op], ref(x), x if dead(x, pos) else None, slot)]
        if op == "float32":  # a float32 round trip (the kernel's default dtype is float32 here)
            x = args[0]
            return [self.emit(n, "mul", f"{ref(x)}, 1.0", None, slot),
                    f"    for _t in t{n.index}: _t.copy_(_t.float())"]
        if op == "where":  # a fresh list: never written in place into a branch
            cond, a, b = args
            fn = "_select" if cond.scalar else "_where"
            slot[n.index] = f"t{n.index}"
            return [f"    t{n.index} = {fn}({ref(cond)}, {ref(a)}, {ref(b)})"]
        a, b = args
        if op in MASKS:  # a list of bool tensors, in an 'm' slot that nothing writes in place
            if a.scalar:
                op, a, b = _FLIPPED[op], b, a
            slot[n.index] = f"m{n.index}"
            return [f"    m{n.index} = _compare({op!r}, {ref(a)}, {ref(b)})"]
        fn = _BINARY[op]
        if a.scalar and op in ("clamp_min", "clamp_max"):
            raise TraceError("clamp of a scalar by per-element bounds")
        commutative = op in ("add", "mul", "max", "min")
        if a.scalar and commutative:
            a, b = b, a
        if not a.scalar:  # list op list, or list op scalar: in place into a (or b, if commutative)
            other = f"_T({ref(b)}, {ref(a)})" if b.scalar and op in _TENSOR_SCALAR else ref(b)
            if dead(a, pos):
                return [self.emit(n, fn, f"{ref(a)}, {other}", a, slot)]
            if commutative and not b.scalar and dead(b, pos):
                return [self.emit(n, fn, f"{ref(b)}, {ref(a)}", b, slot)]
            return [self.emit(n, fn, f"{ref(a)}, {other}", None, slot)]
        # scalar op list
        if op == "pow":
            return [self.emit(n, "pow", f"{ref(a)}, {ref(b)}", None, slot)]
        if op == "sub":  # c - x == (-x) + c exactly
            first = self.emit(n, "neg", ref(b), b if dead(b, pos) else None, slot)
            return [first, f"    F._foreach_add_({slot[n.index]}, _T({ref(a)}, {slot[n.index]}))"]
        # division: c / x, on a list filled with c
        slot[n.index] = f"t{n.index}"
        return [f"    t{n.index} = _full({ref(b)}, {ref(a)})", f"    F._foreach_div_(t{n.index}, {ref(b)})"]

    def store(self, slot) -> list:
        """Copies of the output values into their buffers, ordered so none is overwritten
        before it is read (a cycle is broken with a clone)."""
        lines, pending = [], []
        for name, n in self.tr.elem_outputs.items():
            dest = f"b{self.tr.buffers.index(name)}"
            if n.scalar:
                lines.append(f"    for _t in {dest}: _t.fill_({self.cref(n)})")
            elif slot[n.index] != dest:
                pending.append([dest, slot[n.index]])
        while pending:
            free = [p for p in pending if not any(q[1] == p[0] for q in pending if q is not p)]
            if not free:
                src, copy = pending[0][1], f"_c{len(lines)}"
                lines.append(f"    {copy} = F._foreach_clone({src})")
                for p in pending:
                    p[1] = copy if p[1] == src else p[1]
                continue
            dest, src = free[0]
            lines.append(f"    F._foreach_copy_({dest}, {src})")
            pending.remove(free[0])
        return lines


class _Nodes:
    """A resolved trace's graph: only its node list is read."""

    def __init__(self, nodes):
        self.nodes = nodes


def _compile(source: str, tr: Trace) -> dict:
    namespace = dict(NAMESPACE)
    exec(compile(source, f"<optimlab foreach {id(tr):x}>", "exec"), namespace)  # our own generated text
    return namespace


def generate(tr: Trace, writable: frozenset = frozenset()) -> Program:
    """The :class:`Program` for ``tr``. ``writable``: input buffers that are scratch copies
    (low-precision params are computed on float32 copies), which the program may overwrite."""
    printer = _Printer(tr, writable)
    scalar_source = printer.scalar_source()
    variants = {}
    for key in itertools.product((True, False), repeat=len(printer.conditions)):
        source = printer.element_source(key)
        variants[key] = (_compile(source, tr)["elements"], source)
    outputs = [b for b in tr.buffers if b in tr.elem_outputs]
    return Program(tr, _compile(scalar_source, tr)["scalars"], scalar_source, outputs, printer.conditions, variants)
