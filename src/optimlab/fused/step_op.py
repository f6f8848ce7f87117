"""``torch.compile(opt.step)``: the whole eager step run by the compiled frame's own bytecode, or as one op.

Where the frame Dynamo compiles is the optimizer's ``step`` itself
(``torch.compile(opt.step)``, no closure, no step hook), nothing else in that frame reads or
writes the params, grads or state: nothing needs ordering against the update and nothing can be
fused with it. There the step needs no graph at all. Its call, ``_step(id(optimizer))``, is one
that Dynamo records and replays in the bytecode it generates for the frame: ``replayed_step``
(:func:`_step`, run with Dynamo off) is registered in
``torch._dynamo.config.reorderable_logging_functions``, the calls Dynamo moves after the graph
when their arguments are constants (an ``int`` here). The frame then has no graph, so no
backend runs: a call costs the eager step plus Dynamo's frame and guards (12-17 us warm with
the step's work removed, against ~20-30 us with an op in a graph: AOTAutograd's and Inductor's
wrappers, the dispatcher), measured in ``benchmarks/compile_step.py``. Dynamo replays only the
calls recorded in the frame it compiles, not in functions it inlines, so the call sits in the
engine's step wrapper (``engine._hooked``), after the hook check whose guards make a later hook
recompile, and only where :func:`frame_owner` says that wrapper is the compiled frame, for this
optimizer.

Where the replay is not available (the set replaced, e.g. by ``torch._dynamo.config.patch``;
``torch.export``, which drops such calls) the step is one op in the graph instead,
``optimlab::step(int optimizer) -> ()``, which runs the same eager step when the graph runs.
Either way Dynamo sees none of the params, grads or state: it guards on the optimizer's
identity and the few attributes the step's wrappers read. Hyperparameters are read by the
eager step when it runs, so a per-step schedule of any of them (float or tensor) never
recompiles, and SGD's momentum buffer created by the first step does not recompile either.

Anywhere else (a compiled function that calls ``opt.step()`` among other work, a closure, step
hooks, a class that overrides ``step``, ``differentiable=True``, and rules whose traced step
Inductor makes faster than their eager one, :func:`.traced_reference.traces_whole_step`: Adafactor,
LARS) the step is traced into the caller's
graph by :mod:`.compiled`: an opaque call there could be reordered against the caller's reads
and writes of the params. :func:`whole_frame` tells the two apart while Dynamo traces: Dynamo
runs it once per compilation (``assume_constant_result``) and bakes its answer into that
frame's code, which is only ever entered for the frame it was compiled for (the root frame's
code object is what the answer depends on).
"""

from __future__ import annotations

import weakref

import torch

#: id -> weak reference to the optimizer (a plain dict: cheaper to read than a WeakValueDictionary)
_optimizers: dict = {}

_lib = torch.library.Library("optimlab", "FRAGMENT")
_lib.define("step(int optimizer) -> ()")


def _step(optimizer: int) -> None:
    """The eager step of the optimizer registered under ``optimizer`` (its ``id``)."""
    opt = _optimizers[optimizer]()
    opt._opt_called = True  # for LR schedulers (see engine._hooked)
    # grad mode set directly, not by ``no_grad()``: the per-call cost of the compiled step is
    # mostly such Python run from cold caches right after a step (benchmarks/compile_step.py)
    grad_mode = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        opt.step_groups(opt.param_groups)
    finally:
        torch._C._set_grad_enabled(grad_mode)


def register(opt) -> None:
    """Make ``opt`` the optimizer :func:`_step` steps for ``id(opt)`` (while it lives)."""
    key = id(opt)
    _optimizers[key] = weakref.ref(opt, lambda ref: _optimizers.pop(key, None)
                                   if _optimizers.get(key) is ref else None)


#: :func:`_step` for the compiled frame's bytecode to call: Dynamo off while it runs (the frame
#: is compiled; the calls it makes would be intercepted and compiled as frames of their own)
replayed_step = torch._dynamo.disable(_step, recursive=True)
torch._dynamo.config.reorderable_logging_functions.add(replayed_step)


_lib.impl("step", _step, "CompositeExplicitAutograd")
torch.library.register_fake("optimlab::step", lambda optimizer: None, lib=_lib)
# no tensor in or out: without this, dead-code elimination would drop the call
torch.fx.node.has_side_effect(torch.ops.optimlab.step.default)


@torch._dynamo.assume_constant_result
def whole_frame() -> bool:
    """Whether the frame Dynamo is compiling is ``RuleOptimizer.step`` itself, called without a
    closure, on an optimizer whose class keeps the engine's ``step``, has no
    ``differentiable`` group and is not one whose step is better traced
    (:func:`.traced_reference.traces_whole_step`: Adafactor, LARS); if so the optimizer is registered
    for :func:`_step`."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    from ..engine import RuleOptimizer
    from .traced_reference import traces_whole_step

    tx = InstructionTranslator.current_tx()
    if tx is None or tx.f_code is not RuleOptimizer.step.__code__:
        return False
    opt = tx.f_locals.get("self")
    args = tx.f_locals.get("args", ())
    kwargs = tx.f_locals.get("kwargs", {})
    if (not isinstance(opt, RuleOptimizer) or type(opt).step is not RuleOptimizer.step
            or args or kwargs.get("closure") is not None
            or any(g.get("differentiable") for g in opt.param_groups)
            or _hooked(opt) or traces_whole_step(opt)):
        return False
    register(opt)
    return True


@torch._dynamo.assume_constant_result
def frame_owner() -> int:
    """The ``id`` of the optimizer whose engine ``step`` is the frame Dynamo is compiling, where
    :func:`whole_frame` holds and a call of :func:`_step` in that frame is replayed by Dynamo's
    generated bytecode; else 0."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    from . import compiled

    tx = InstructionTranslator.current_tx()
    if (compiled.MODE != "step_op" or tx is None or tx.export or not whole_frame()
            or replayed_step not in torch._dynamo.config.reorderable_logging_functions):
        return 0
    return id(tx.f_locals["self"])


def _hooked(opt) -> bool:
    """Step hooks run in the same graph as the step (Dynamo traces them): the step must be in
    the graph for them to be ordered around it. Adding one later recompiles (the engine's
    wrapper branches on them), which asks again."""
    from torch.optim import optimizer as torch_optimizer

    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
                or getattr(torch_optimizer, "_global_optimizer_post_hooks", None))


def run(optimizer) -> None:
    """The step as one ``optimlab::step`` call (while Dynamo traces; :func:`whole_frame` is True
    but the frame does not replay :func:`_step`)."""
    torch.ops.optimlab.step(id(optimizer))
