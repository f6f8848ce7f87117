"""``torch.compile(opt.step)`` in the default mode, ``"step_op"``: the whole eager step, no graph.

The compiled frame is the step itself, so it needs no graph: its bytecode calls the eager step
(a call Dynamo replays), or, where that is unavailable, its graph is one ``optimlab::step``
call with no tensor in it. Either way: equal to eager (it *is* the eager step), one frame
compiled, no recompile under per-step schedules of lr, betas or momentum (float or tensor), no
graph break (torch's LR scheduler's included: the step marks itself as tracked so the scheduler
does not wrap it), no warning. Inside a larger compiled function the step is traced into that
graph instead (tests/test_compile.py).
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import optimlab
from optimlab.fused import compiled, traced_reference
from optimlab.registry import lookup

from conftest import RULE_PARAMS
from test_compile import SHAPES, make, ours, rel, set_grads

STEP = torch.ops.optimlab.step
FUSED = torch.ops.optimlab.fused_step


COMPILED_MODE = "step_op"
pytestmark = pytest.mark.usefixtures("fresh_dynamo")


class Recorder:
    """A Dynamo backend that keeps every graph it is given and runs it as traced (aot_eager)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    def targets(self, i=-1) -> list:
        return [getattr(n.target, "_overloadpacket", n.target)
                for n in self.graphs[i].graph.nodes if n.op == "call_function"]

    def placeholders(self, i=-1) -> int:
        return sum(n.op == "placeholder" for n in self.graphs[i].graph.nodes)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def frames() -> int:
    """Frames Dynamo compiled (a recompile is one more)."""
    return counters["frames"]["ok"]


def scheduled(entry, steps: int, backend, dtype=torch.float64):
    """``steps`` steps of ``torch.compile(opt.step)`` and of the eager step side by side, each
    optimizer's ``CosineAnnealingLR`` stepped after it; (compiled params, eager params, frames
    compiled after the first step)."""
    p_c, opt_c = make(entry, dtype=dtype)
    p_e, opt_e = make(entry, dtype=dtype)
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) for opt in (opt_c, opt_e)]
    step = torch.compile(opt_c.step, backend=backend)
    first = None
    for t in range(steps):
        set_grads([p_c, p_e], t)
        step()
        opt_e.step()
        for scheduler in schedulers:
            scheduler.step()
        first = frames() if t == 0 else first
    return p_c, p_e, first


def test_default_mode():
    assert compiled.MODE == "step_op" and compiled.MODES[0] == "step_op"


def traced(entry) -> bool:
    """Whether ``torch.compile(opt.step)`` traces the entry's step into a graph (a rule with
    reductions the reference path traces: Adafactor, LARS, and LAMB on these small tensors)
    instead of calling the eager step."""
    ps = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    for p in ps:
        p.grad = torch.ones_like(p)
    return traced_reference.traces_whole_step(entry.build(ps, lr=entry.test_lr))


def test_rules_with_reductions_are_traced():
    """Adafactor and LARS; LAMB too on small tensors (its limit in
    ``traced_reference.TRACED_SLOWER``: these tests' shapes), not on larger ones."""
    assert [e.name for e in (p.values[0] for p in RULE_PARAMS) if traced(e)] == ["adafactor", "lamb", "lars"]
    ps = [torch.zeros(128, 128, requires_grad=True)]
    ps[0].grad = torch.ones_like(ps[0])
    assert not traced_reference.traces_whole_step(lookup("lamb").build(ps, lr=1e-3))


@pytest.mark.parametrize("entry", RULE_PARAMS)
def test_every_entry_cosine_schedule(entry, caplog):
    """50 steps of ``torch.compile(opt.step)`` under ``CosineAnnealingLR``: bit-equal to eager,
    one frame compiled and no graph at all (the backend is never called: the frame's bytecode
    calls the eager step), no graph break of any kind, no warning, no recompile message.
    Adafactor and LARS: one graph, their reference step traced, equal to eager to 1e-12."""
    rec = Recorder()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        p_c, p_e, first = scheduled(entry, 50, rec)
    assert first == frames() == 1
    if traced(entry):
        assert rel(p_c, p_e) <= 1e-12
        assert graphs() == 1 and len([g for g in rec.graphs if len(g.graph.nodes)]) == 1
    else:
        assert rel(p_c, p_e) == 0
        assert rec.graphs == [] and graphs() == 0
    assert not counters["graph_break"], list(counters["graph_break"])
    assert not ours(caught) and not [w for w in caught if "lr_scheduler" in str(w.filename)], \
        [str(w.message) for w in caught]
    assert not [r for r in caplog.records if "recompile" in r.getMessage() or "optimlab" in r.getMessage()]


@pytest.mark.parametrize("name", ["adamw", "momentum"])
def test_without_the_replayed_call_the_step_is_one_op(name):
    """Where Dynamo would not replay the call (the set of replayed functions replaced, as
    ``torch._dynamo.config.patch`` does), the frame's graph is one ``optimlab::step`` with no
    tensor in it: still bit-equal to eager, one graph, no recompile, no break."""
    rec = Recorder()
    with torch._dynamo.config.patch(reorderable_logging_functions=set()):
        p_c, p_e, _ = scheduled(lookup(name), 20, rec)
    assert rel(p_c, p_e) == 0
    assert frames() == graphs() == len(rec.graphs) == 1
    assert rec.targets() == [torch._C._set_grad_enabled, STEP, torch._C._set_grad_enabled], rec.targets()
    assert rec.placeholders() == 0
    assert not counters["graph_break"], list(counters["graph_break"])


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_betas_and_momentum_schedules_never_recompile(name):
    """Betas and momentum changed every step, as floats: read by the eager step when the graph
    runs, so no guard on them and no recompile (SGD's momentum buffer, created by the first
    step, does not recompile either)."""
    entry = lookup(name)
    kw = {"momentum": 0.9} if name == "sgd" else {}
    p_c, opt_c = make(entry, **kw)
    p_e, opt_e = make(entry, **kw)
    step = torch.compile(opt_c.step, backend="aot_eager")
    for t in range(12):
        set_grads([p_c, p_e], t)
        for opt in (opt_c, opt_e):
            g = opt.param_groups[0]
            if name == "adam":
                g["betas"] = (0.9 - 0.01 * t, 0.999 - 0.0001 * t)
            else:
                g["momentum"] = 0.9 - 0.01 * t
            g["lr"] = entry.test_lr * (1 + 0.1 * t)
        step()
        opt_e.step()
    assert rel(p_c, p_e) == 0
    assert frames() == 1 and graphs() == 0 and not counters["graph_break"]


def test_each_optimizer_steps_itself():
    """Two optimizers of one class, each compiled: the graph is specialized on the optimizer
    (Dynamo guards its identity), so each call steps its own params."""
    entry = lookup("adamw")
    pa, a = make(entry, seed=0)
    pb, b = make(entry, seed=1)
    pe, e = make(entry, seed=0)
    step_a, step_b = torch.compile(a.step, backend="aot_eager"), torch.compile(b.step, backend="aot_eager")
    before = [p.detach().clone() for p in pb]
    for t in range(3):
        set_grads([pa, pe], t)
        step_a()
        e.step()
    assert rel(pa, pe) == 0
    assert all(torch.equal(x, y) for x, y in zip(pb, before))
    set_grads([pb], 0)
    step_b()
    assert not all(torch.equal(x, y) for x, y in zip(pb, before))


def test_inside_a_larger_function_the_step_is_traced_into_its_graph():
    """``opt.step()`` called from a compiled function that does more: not the opaque op (its
    hidden writes could be reordered against the caller's reads), but the kernel op with every
    tensor in the graph, one graph with ``fullgraph=True``; likewise with a closure."""
    entry = lookup("adam")
    p_c, opt_c = make(entry)
    p_e, opt_e = make(entry)
    rec = Recorder()

    @torch.compile(backend=rec, fullgraph=True)
    def train_step():
        opt_c.step()
        return sum(p.sum() for p in opt_c.param_groups[0]["params"])

    for t in range(3):
        set_grads([p_c, p_e], t)
        total = train_step()
        opt_e.step()
        assert torch.allclose(total, sum(p.sum() for p in p_e), rtol=1e-12)
    assert rel(p_c, p_e) <= 1e-12
    assert STEP not in rec.targets() and FUSED in rec.targets()

    rec = Recorder()
    step = torch.compile(opt_c.step, backend=rec)
    set_grads([p_c, p_e], 3)
    grads = [p.grad for p in p_c]

    def closure():
        for p, g in zip(p_c, grads):
            p.grad = g
        return torch.tensor(1.0)

    step(closure)
    opt_e.step()
    assert rel(p_c, p_e) <= 1e-12
    assert STEP not in rec.targets(-1)


def test_step_hooks_put_the_step_in_the_graph():
    """A post-hook that reads the params runs in the compiled frame's graph: the step is then
    traced into it (the kernel op, its writes declared), so the hook sees the stepped params;
    adding the hook after a first compilation recompiles (it was silently never called)."""
    entry = lookup("adam")
    p_c, opt_c = make(entry)
    p_e, opt_e = make(entry)
    rec = Recorder()
    step = torch.compile(opt_c.step, backend=rec)
    set_grads([p_c, p_e], 0)
    step()
    opt_e.step()
    assert rec.graphs == [] and rel(p_c, p_e) == 0  # the step alone: no graph
    seen = {}
    for name, opt in (("c", opt_c), ("e", opt_e)):
        opt.register_step_post_hook(lambda o, a, k, name=name: seen.__setitem__(
            name, sum(p.detach().sum() for p in o.param_groups[0]["params"])))
    for t in range(1, 4):
        set_grads([p_c, p_e], t)
        step()
        opt_e.step()
        assert torch.allclose(seen["c"], seen["e"], rtol=1e-12)
    assert rel(p_c, p_e) <= 1e-12
    assert STEP not in rec.targets() and FUSED in rec.targets()


def test_lr_scheduler_keeps_its_warning_and_does_not_wrap_the_step():
    """The step tells LR schedulers it is tracked (``_wrapped_by_lr_sched``) and records its
    calls (``_opt_called``), eager and compiled: the scheduler leaves ``opt.step`` alone and
    still warns when it is stepped before the optimizer."""
    params = [torch.zeros(3, requires_grad=True)]
    opt = optimlab.SGD(params, lr=0.1)
    step = opt.step
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    assert opt.step == step and not hasattr(opt, "_opt_called")
    with pytest.warns(UserWarning, match="before `optimizer.step"):
        sched.step()
    for compile_ in (False, True):
        opt = optimlab.Adam([torch.zeros(3, requires_grad=True)], lr=0.1)
        opt.param_groups[0]["params"][0].grad = torch.ones(3)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1)
        (torch.compile(opt.step, backend="aot_eager") if compile_ else opt.step)()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sched.step()
        assert opt._opt_called


@pytest.mark.slow
@pytest.mark.parametrize("entry", RULE_PARAMS)
def test_inductor_every_entry(entry):
    p_c, p_e, _ = scheduled(entry, 20, "inductor", dtype=torch.float32)
    assert rel(p_c, p_e) <= 2e-6 if traced(entry) else rel(p_c, p_e) == 0
    assert frames() == 1 and graphs() == traced(entry) and not counters["graph_break"]
    assert len(SHAPES) == len(p_c)


def test_a_dropped_optimizer_leaves_the_registry():
    """The compiled frame finds its optimizer through a weak reference: dropping the optimizer
    (and its compiled step) frees it and its registry entry."""
    import gc
    import weakref

    from optimlab.fused import step_op

    params, opt = make(lookup("adam"))
    set_grads([params], 0)
    step = torch.compile(opt.step, backend="eager")
    step()
    key, alive = id(opt), weakref.ref(opt)
    assert step_op._optimizers[key]() is opt
    del step, opt
    torch._dynamo.reset()
    gc.collect()
    assert alive() is None and key not in step_op._optimizers
