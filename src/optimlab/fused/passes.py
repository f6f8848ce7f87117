"""Rules with reductions and matrix products, cut into generated passes.

LAMB, LARS, Adafactor, Muon and Prodigy's estimate read whole tensors (a norm, row and
column means, a Newton-Schulz iteration, a dot product over the group). Their rule is
still the one function of :mod:`optimlab.rules`; :mod:`.passes_trace` traces it into a
graph of per-tensor scalars (S), per-element values (E) and torch values (T), and this
module cuts that graph where a per-element value must be complete before the step goes on:

* a whole-tensor sum of a per-element value (``norm(r)``, ``dot(g, p0 - p)``) is
  accumulated inside the pass that computes the value; what depends on it waits for the
  next pass (level = the pass of its argument + 1);
* a per-element value a torch call needs (Muon's momentum before Newton-Schulz) is
  written to a temporary in its pass; the call runs between passes, as the reference path
  runs it, once on the bucket's stacked values where it has a batched form (Muon's
  Newton-Schulz as bmm/baddbmm: :mod:`.passes_batch`), else per tensor; its result (of the
  parameter's shape, or one number) is read by the later passes (calls that are per
  element in disguise move into the passes: :mod:`.passes_rewrite`);
* every pass recomputes the per-element values it needs from the inputs, which stay
  untouched until the last pass, which writes the parameter and the per-element state.

So LAMB is two passes (read p, g, m, v: sums of r^2 and p^2; then read them again and
write p, m, v), LARS two, Adafactor's matrices two around torch's row/column means and
outer product, Muon one before and one after torch's Newton-Schulz, Prodigy's estimate
one (the cutting: :mod:`.passes_cut`). The passes are C (:mod:`.passes_codegen`), for all
tensors of one shape and dtype at once; the scalars between them are evaluated in double with NumPy, one value per tensor.

Selection: the engine runs a whole-tensor rule here for params on CPU, float32/float64/
bfloat16/float16, dense and contiguous with a grad of the same layout, unless ``fused=False``,
``foreach=True``, ``differentiable`` or ``OPTIMLAB_DISABLE_FUSED``; anything else, and any
failure to trace (warned once), takes the per-tensor reference path. Without a working C
compiler (warned once) the same traced graph runs as batched torch operations on the
bucket's params (:mod:`.passes_torch`: the multi-tensor path of these rules). DTensor
params (FSDP2) run the same graph on their local shards, its sums completed over the ranks
(:mod:`.passes_shards`, which the engine asks first).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..rules.base import estimate as _estimate
from ..rules.base import update
from . import build, passes_batch, passes_rewrite
from .passes_codegen import chunk_size
from .passes_cut import Pass, cut_passes  # noqa: F401  (Pass: re-exported, see __all__)
from .passes_eval import Runner
from .passes_select import _eligible, _plain
from .passes_torch import TorchRunner
from .passes_trace import REDUCTIONS, PassGraph, PassSym, _levels
from .plan import hkey
from .trace import Sym, TraceError, _sym_hyperparameters, live

_programs: dict = {}
_warned: set = set()
#: False: never the C passes, always :mod:`.passes_torch` (tests; a build error does the same)
compiled = True


@dataclass
class Program:
    """A rule (one phase) for one parameter shape, dtype and state layout, cut into passes."""

    graph: PassGraph
    hps: list
    level: dict
    passes: list  # index = level; None where a level has no pass
    elem_outputs: dict  # param / state key -> node
    tensor_outputs: dict  # state of another shape -> 'T' node
    scalar_outputs: dict
    returns: list  # estimate's partial sums
    sin: list  # 0-dim state keys read
    batch: dict  # T node -> its call on the bucket's values stacked (:mod:`.passes_batch`)
    rank: int  # the rank batched values are padded to
    #: per level, the S and T nodes evaluated before its pass; the S nodes that depend on
    #: hyperparameters only, and their values for the last hyperparameters seen
    schedule: list = None
    #: low_precision T node -> its per-element argument, which the pass stores in bfloat16
    aliases: dict = None
    #: outer product T node -> its (rows, columns) factors, multiplied in the passes
    products: dict = None
    constant: set = None
    constants: tuple = (None, {})



def trace_program(rule, phase: str, h, shape, dtype: torch.dtype, layout: dict, cut: bool = True) -> Program:
    """Trace ``rule`` (``phase`` 'update' or 'estimate') for one parameter shape and dtype;
    ``layout``: state key -> 'E' (the parameter's shape), 'T' (another), None (absent).
    ``cut=False``: no C passes (``passes`` is empty), for :mod:`.passes_torch`."""
    compute = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    graph = PassGraph(shape, compute)
    hps: list = []
    hs = _sym_hyperparameters(graph, h, hps)
    p = graph.sym(graph.node("ein", name="param", kind="E"))
    g = graph.sym(graph.node("ein", name="grad", kind="E"))
    s = type("State", (), {})()
    for key in rule.scalars:
        setattr(s, key, graph.sym(graph.node("sin", name=key)))
    for key, kind in layout.items():
        if kind == "E":
            setattr(s, key, graph.sym(graph.node("ein", name=key, kind="E")))
        elif kind == "T":
            meta = torch.empty(layout.get(("shape", key)), dtype=compute, device="meta")
            setattr(s, key, graph.sym(graph.node("tin", name=key, kind="T", fn=(None, (), ()),
                                                 meta=meta, key=key)))
        elif kind is None:
            setattr(s, key, None)
    old = dict(vars(s))
    if phase == "update":
        out = update(rule, p, g, s, hs)
        returns = []
        if not isinstance(out, Sym) or out.node.kind == "S":
            raise TraceError("the update did not produce a per-element parameter")
        elem, tensor, scal = {"param": out.node}, {}, {}
    else:
        returns = [r.node if isinstance(r, Sym) else graph.node("const", value=float(r))
                   for r in _estimate(rule, p, g, s, hs)]
        elem, tensor, scal = {}, {}, {}
    for key, value in vars(s).items():
        if value is old.get(key) or not isinstance(key, str):
            continue
        if value is None:
            raise TraceError(f"state {key!r} was reset to None")
        n = value.node if isinstance(value, Sym) else graph.node("const", value=float(value))
        if key in rule.scalars:
            scal[key] = n
        elif layout.get(key) == "E" or (layout.get(key) is None and n.kind == "E"):
            elem[key] = n
        else:
            tensor[key] = n
    passes_rewrite.demote(graph, elem)
    for key, n in elem.items():
        if n.kind != "E":
            raise TraceError(f"state {key!r} of the parameter's shape is not computed per element")
    roots = list(elem.values()) + list(tensor.values()) + list(scal.values()) + returns
    needed = live(roots)
    lvl = _levels(graph, needed)
    aliases = passes_rewrite.narrowed(graph, needed)
    products = passes_rewrite.outer_products(graph, needed, roots) if cut else {}
    passes = cut_passes(graph, needed, lvl, elem, dtype, set(aliases.values()), products) if cut else []
    sin = [k for k in rule.scalars if any(n.op == "sin" and n.name == k and n.index in needed
                                          for n in graph.nodes)]
    prog = Program(graph, hps, lvl, passes, elem, tensor, scal, returns, sin,
                   passes_batch.plan(graph, needed, aliases), passes_batch.rank(graph, needed))
    prog.aliases, prog.products = aliases, products
    nodes = [n for n in graph.nodes if n.index in lvl and n.op not in REDUCTIONS and n.kind != "E"]
    prog.schedule = [[n for n in nodes if lvl[n.index] == level]
                     for level in range(max(max(lvl.values(), default=0), len(passes) - 1) + 1)]
    prog.constant = set()
    for n in nodes:
        if n.kind == "S" and n.op != "sin" and all(a.index in prog.constant for a in n.args):
            prog.constant.add(n.index)
    return prog


def _extra_key(h) -> tuple:
    """What :func:`.plan.hkey` leaves out and a trace may read as a constant: strings, None,
    tuples holding them (Adafactor's ``eps=(None, 1e-3)``)."""
    out = []
    for k, v in vars(h).items():
        if isinstance(v, (str, type(None))) or (isinstance(v, tuple) and not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            out.append((k, repr(v)))
    return tuple(out)


def _key(rule, phase, hk, shape, dtype, layout) -> tuple:
    return (rule.fn, phase) + hk + (shape, dtype, tuple(sorted(map(str, layout.items()))))


def program(key, h) -> Program | None:
    """The memoised program of ``key`` (see :func:`_key`: its ``shape`` is the bucket's, a
    shape, a number of dimensions or None), if traced for these concrete hyperparameters."""
    for prog in _programs.get(key, ()):
        if isinstance(prog, Exception):
            raise prog
        names = {name: (k, i) for name, k, i in prog.hps}
        if all(_hp(h, *names[name]) == value for name, value in prog.graph.concrete.items()):
            return prog
    return None


def _traced(key, rule, phase, h, shape, dtype, layout) -> Program:
    try:
        prog = trace_program(rule, phase, h, shape, dtype, layout, cut=key[-1] != "torch")
    except (TraceError, build.BuildError) as e:
        _programs.setdefault(key, []).append(e)
        raise
    _programs.setdefault(key, []).append(prog)
    return prog


def _hp(h, key, index):
    v = getattr(h, key)
    return float(v if index is None else v[index])


#: what a program read of the shape, per key without the shape (see PassGraph.reads)
_reads: dict = {}


def _bucket_key(optimizer, phase, h, hk, p, layout, kinds):
    """The bucket of ``p``: by shape, number of dims or neither, as the rule's trace read
    them (found by tracing once)."""
    rule = optimizer.rule
    base = (rule.fn, phase) + hk + (p.dtype, kinds)
    if base not in _reads:
        key = _key(rule, phase, hk, tuple(p.shape), p.dtype, layout) + ("torch",)
        prog = program(key, h) or _traced(key, rule, phase, h, tuple(p.shape), p.dtype, layout)
        _reads[base] = prog.graph.reads
    reads = _reads[base]
    shape = tuple(p.shape) if reads == "shape" else p.dim() if reads == "dim" else None
    return (shape, p.dtype, kinds if reads != "shape" else tuple(sorted(map(str, layout.items()))))


def _grad_ok(p) -> bool:
    g = p.grad
    return (type(g) is torch.Tensor and g.dtype == p.dtype and g.shape == p.shape and _plain(g)
            and g.is_contiguous())


def _signature(optimizer, params) -> tuple:
    """What the sorting of ``params`` into buckets depends on, cheap to compare: each param's
    storage, dtype and shape, the identity of its state tensors, whether its grad is one the
    passes take."""
    state = optimizer.state
    return tuple((p.data_ptr(), p.dtype, p.shape, _grad_ok(p),
                  tuple(map(id, state[p].values())) if p in state else None) for p in params)


def _buckets(optimizer, params, h, phase):
    """Params the passes take, grouped by program (shape as the rule reads it, dtype, state
    layout); and the rest. Kept on the optimizer while the params, their storage, state
    tensors, grads' eligibility and the hyperparameters' flags are the same (each step of a
    training loop)."""
    if os.environ.get("OPTIMLAB_DISABLE_FUSED", "") not in ("", "0"):
        return {}, list(params)
    hk = (hkey(h), _extra_key(h))
    memo = optimizer.__dict__.setdefault("_passes_buckets", {})
    key = (phase, hk, tuple(map(id, params)))
    hit = memo.get(key)
    if hit is not None and hit[0] == _signature(optimizer, params):
        return hit[1], list(hit[2])
    buckets, rest = _grouped(optimizer, params, h, phase, hk)
    if len(memo) > 64:
        memo.clear()
    memo[key] = (_signature(optimizer, params), buckets, list(rest))
    return buckets, rest


def _grouped(optimizer, params, h, phase, hk):
    buckets, rest = {}, []
    fills = optimizer.rule.tensors(h)
    for p in params:
        st = optimizer.init_state(p, h)
        if not _eligible(p, st):
            rest.append(p)
            continue
        layout = {}
        for key in fills:
            v = st.get(key)
            layout[key] = None if v is None else "E" if v.shape == p.shape else "T"
            if layout[key] == "T":
                layout[("shape", key)] = tuple(v.shape)
        kinds = tuple((k, v) for k, v in layout.items() if isinstance(k, str))
        try:
            bkey = _bucket_key(optimizer, phase, h, hk, p, layout, kinds)
        except (TraceError, build.BuildError) as e:
            _warn(optimizer, e)
            rest.append(p)
            continue
        buckets.setdefault(bkey, (layout, []))[1].append(p)
    return buckets, rest


def _warn(optimizer, e, fallback="the reference path") -> None:
    if isinstance(e, build.BuildError):
        build.warn_unavailable(e)
        return
    message = f"optimlab: no generated passes for {type(optimizer).__name__} ({e}); using {fallback}"
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=5)


def _run(optimizer, params, h, phase):
    """Run ``phase`` on the params the passes take; returns (the rest, per-param partial sums)."""
    buckets, rest = _buckets(optimizer, params, h, phase)
    sums = []
    hk = (hkey(h), _extra_key(h)) if buckets else None
    for (shape, dtype, _), (layout, ps) in buckets.items():
        key = _key(optimizer.rule, phase, hk, shape, dtype, layout)
        try:
            if not compiled:
                raise build.BuildError("compiled passes switched off")
            prog = program(key, h) or _traced(
                key, optimizer.rule, phase, h, tuple(ps[0].shape), dtype, layout)
            out = Runner(prog, optimizer, ps, h, torch.get_num_threads(), chunk_size).run()
        except build.BuildError as e:  # no C compiler: the same graph, run by torch
            if compiled:
                _warn(optimizer, e, "the multi-tensor path")
            try:
                prog = program(key + ("torch",), h) or _traced(
                    key + ("torch",), optimizer.rule, phase, h, tuple(ps[0].shape), dtype, layout)
            except TraceError as e:
                _warn(optimizer, e)
                rest.extend(ps)
                continue
            out = TorchRunner(prog, optimizer, ps, h).run()
        except TraceError as e:
            _warn(optimizer, e)
            rest.extend(ps)
            continue
        if phase == "estimate":
            sums.append(out)
    return rest, sums


def step(optimizer, group, params, h) -> list:
    """One step of a whole-tensor rule for the params the passes take; returns the others."""
    if not _wanted(group):
        return params
    return _run(optimizer, params, h, "update")[0]


def estimate(optimizer, group, params, h):
    """Phase 1 of a two-phase rule for the params the passes take: (the others, the sums of
    their partial sums, or None when no param was taken)."""
    if not _wanted(group):
        return params, None
    rest, sums = _run(optimizer, params, h, "estimate")
    if not sums:
        return rest, None
    return rest, [float(np.sum(np.concatenate([s[i] for s in sums]))) for i in range(len(sums[0]))]


def _wanted(group) -> bool:
    return (group.get("fused") is not False and group.get("foreach") is not True
            and not group.get("differentiable"))


__all__ = ["step", "estimate", "program", "trace_program", "Program", "Pass", "PassSym"]
