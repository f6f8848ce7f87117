"""``torch.compile(opt.step)``: the whole eager step as one op, ``optimlab::step``, when the step is the compiled frame.

Where the frame Dynamo compiles is the optimizer's ``step`` itself (``torch.compile(opt.step)``,
no closure), its graph holds nothing but the step: no other node reads or writes the params,
grads or state, so nothing needs ordering against the update and nothing can be fused with it.
There the step is one call of this op, whose only argument is the optimizer's ``id``::

    step(int optimizer) -> ()

and which runs the eager step (the C kernel, as ``opt.step()`` does) when the graph runs.
Dynamo then sees none of the params, grads or state: it guards on the optimizer's identity
and the few attributes the step's wrappers read (hooks, ``defaults["differentiable"]``), and
Inductor's wrapper checks no input. What a step costs besides the kernel is Dynamo's frame
(~15 us), against ~100-150 us for the kernel op with every tensor as a graph input
(:mod:`.kernel_op`: guards, ``assert_size_stride`` and boxing per tensor), a cost that grows
several-fold with the data because the kernel's streaming evicts the caches that code and its
guards run from (measured in ``benchmarks/compile_step.py``'s section of BENCHMARKS.md).
Hyperparameters are read by the eager step when it runs, so a per-step schedule of any of them
(float or tensor) never recompiles, and SGD's momentum buffer created by the first step does
not recompile either.

Anywhere else (a compiled function that calls ``opt.step()`` among other work, a closure, step
hooks, a class that overrides ``step``, ``differentiable=True``) the step is traced into the caller's
graph by :mod:`.compiled` as before: an op with hidden effects there could be reordered
against the caller's reads and writes of the params. :func:`whole_frame` tells the two apart
while Dynamo traces: Dynamo runs it once per compilation (``assume_constant_result``) and
bakes its answer into that frame's code, which is only ever entered for the frame it was
compiled for (the root frame's code object is what the answer depends on).
"""

from __future__ import annotations

import weakref

import torch

_optimizers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> optimizer

_lib = torch.library.Library("optimlab", "FRAGMENT")
_lib.define("step(int optimizer) -> ()")


def _step(optimizer: int) -> None:
    """The eager step of the optimizer registered under ``optimizer`` (its ``id``)."""
    opt = _optimizers[optimizer]
    opt._opt_called = True  # for LR schedulers (see engine._hooked)
    with torch.no_grad():
        opt.step_groups(opt.param_groups)


_lib.impl("step", _step, "CompositeExplicitAutograd")
torch.library.register_fake("optimlab::step", lambda optimizer: None, lib=_lib)
# no tensor in or out: without this, dead-code elimination would drop the call
torch.fx.node.has_side_effect(torch.ops.optimlab.step.default)


@torch._dynamo.assume_constant_result
def whole_frame() -> bool:
    """Whether the frame Dynamo is compiling is ``RuleOptimizer.step`` itself, called without a
    closure, on an optimizer whose class keeps the engine's ``step`` and has no
    ``differentiable`` group; if so the optimizer is registered for :func:`_step`."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    from ..engine import RuleOptimizer

    tx = InstructionTranslator.current_tx()
    if tx is None or tx.f_code is not RuleOptimizer.step.__code__:
        return False
    opt = tx.f_locals.get("self")
    args = tx.f_locals.get("args", ())
    kwargs = tx.f_locals.get("kwargs", {})
    if (not isinstance(opt, RuleOptimizer) or type(opt).step is not RuleOptimizer.step
            or args or kwargs.get("closure") is not None
            or any(g.get("differentiable") for g in opt.param_groups)
            or _hooked(opt)):
        return False
    _optimizers[id(opt)] = opt
    return True


def _hooked(opt) -> bool:
    """Step hooks run in the same graph as the step (Dynamo traces them): the step must be in
    the graph for them to be ordered around it. Adding one later recompiles (the engine's
    wrapper branches on them), which asks again."""
    from torch.optim import optimizer as torch_optimizer

    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
                or getattr(torch_optimizer, "_global_optimizer_post_hooks", None))


def run(optimizer) -> None:
    """The step as one ``optimlab::step`` call (while Dynamo traces; :func:`whole_frame` is True)."""
    torch.ops.optimlab.step(id(optimizer))
