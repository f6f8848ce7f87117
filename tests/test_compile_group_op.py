"""A group's eager step as one op in the compiled graph (``optimlab::group_step``).

The rules whose traced step is slower than their eager one (``TRACED_SLOWER``: LAMB, RAdam
where the printed graph runs) keep their eager step, called from inside the caller's graph
rather than behind a graph break. The op declares the params and state it writes, so reads and
writes of them in the same graph are ordered around it; Inductor re-inplaces it (the op gets the
optimizer's own tensors), ``aot_eager`` does not (the op gets copies and writes its results
into them).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from optimlab.fused import compiled, compiled_groups, group_op, kernel_op, traced_reference
from optimlab.registry import lookup

from conftest import RULE_PARAMS
from test_compile import calling_step, lazy_state, make, rel, set_grads

COMPILED_MODE = "kernel"
pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.fixture(autouse=True)
def op_at_any_size(monkeypatch):
    """The op for ``TRACED_SLOWER`` whatever the size (LAMB on small tensors, these tests'
    shapes, is traced: its limit in ``traced_reference.TRACED_SLOWER``)."""
    monkeypatch.setattr(traced_reference, "TRACED_SLOWER", dict.fromkeys(traced_reference.TRACED_SLOWER, 0))


@pytest.fixture
def received(monkeypatch):
    """Per op call: whether it received the optimizer's own tensors (True) or copies."""
    seen = []
    same = group_op._same

    def recording(*args):
        seen.append(same(*args))
        return seen[-1]

    monkeypatch.setattr(group_op, "_same", recording)
    return seen


def around_the_step(params, opt):
    """Writes and reads of the params, lr and state before and after the step, in one graph."""
    with torch.no_grad():
        params[0].mul_(0.5)
        lr = opt.param_groups[0]["lr"]
        if torch.is_tensor(lr):  # a foreach op: torch 2.13 drops lr.mul_(0.9) on a 0-dim float64 tensor
            torch._foreach_mul_([lr], 0.9)
        else:
            opt.param_groups[0]["lr"] = lr * 0.9
        before = params[0].sum()
    opt.step()
    with torch.no_grad():
        after = params[0].sum() + params[1].sum()
        params[1].add_(1.0)
    return before, after, sum(v.sum() for v in opt.state[params[0]].values() if torch.is_tensor(v))


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("name, mode", [("lamb", "kernel"), ("lamb", "printed"), ("radam", "printed")])
def test_ordered_with_the_graph_around_it(name, mode, backend, received):
    """LAMB's and RAdam's eager step inside a larger compiled function (``fullgraph=True``: a
    break raises) that writes the params before the step and reads and writes them after:
    equal to eager at every step, one graph under a cosine lr schedule, the Tensor lr also
    changed in the graph. The op gets copies here (the graph's writes before it are not
    re-inplaced either)."""
    compiled.MODE = mode
    entry = lookup(name)
    p_c, opt_c = make(entry, torch.float32)
    p_e, opt_e = make(entry, torch.float32)
    opt_c.param_groups[0]["lr"] = torch.tensor(entry.test_lr, dtype=torch.float64)  # written in the graph
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, 8) for o in (opt_c, opt_e)]
    compiled_fn = torch.compile(around_the_step, backend=backend, fullgraph=True)
    for t in range(8):
        set_grads([p_c, p_e], t)
        got, want = compiled_fn(p_c, opt_c), around_the_step(p_e, opt_e)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for s in scheds:
            s.step()
    assert rel(p_c, p_e) <= 1e-6
    assert all(isinstance(p, group_op.GroupOpPlan) for p in opt_c._compiled_plans)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert len(received) == 8


def stepped_side_by_side(entry, backend, steps, dtype=torch.float64):
    """``steps`` steps of a ``fullgraph=True`` function calling ``opt.step()`` and of the eager
    optimizer on the same grads: (compiled params, eager params, compiled optimizer)."""
    p_c, opt_c = make(entry, dtype)
    p_e, opt_e = make(entry, dtype)
    step = calling_step(opt_c, backend)
    for t in range(steps):
        set_grads([p_c, p_e], t)
        step()
        opt_e.step()
    return p_c, p_e, opt_c


@pytest.mark.parametrize("backend, own", [("inductor", True), ("aot_eager", False)])
def test_inductor_gives_the_op_the_optimizers_tensors(backend, own, received):
    """A compiled function that only calls ``opt.step()``: Inductor re-inplaces the op, which then
    steps the optimizer's own params and state (no copies); ``aot_eager`` does not re-inplace,
    and the op writes its results into the copies it gets. Equal to eager both ways."""
    p_c, p_e, _ = stepped_side_by_side(lookup("lamb"), backend, 4, torch.float32)
    assert rel(p_c, p_e) <= 1e-6
    assert received == [own] * 4


#: every entry whose class keeps the engine's step (schedule-free's train-mode check does not)
OP_PARAMS = [p for p in RULE_PARAMS if not compiled_groups.own_hooks(p.values[0].build(
    [torch.zeros(2, requires_grad=True)], lr=p.values[0].test_lr))]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("entry", OP_PARAMS)
def test_every_entry_as_one_op(entry, backend, monkeypatch):
    """Any group the other plans do not take runs as the op: every registry entry forced onto
    it equals its eager step over 6 steps in float64 (1e-12), in one graph (two where its first
    step creates state), with no break."""
    monkeypatch.setattr(kernel_op, "group_plan", lambda *a: None)
    monkeypatch.setattr(compiled, "_group_plan", lambda *a: None)
    monkeypatch.setattr(compiled, "reference_plan", lambda *a: None)
    p_c, p_e, opt_c = stepped_side_by_side(entry, backend, 6)
    assert rel(p_c, p_e) <= 1e-12
    assert all(isinstance(p, group_op.GroupOpPlan) for p in opt_c._compiled_plans)
    assert counters["stats"]["unique_graphs"] == 1 + lazy_state(opt_c) and not counters["graph_break"]


@pytest.mark.parametrize("name, size, plan", [
    ("lamb", 8, traced_reference.ReferencePlan), ("lamb", 128, group_op.GroupOpPlan),
    ("radam", 8, group_op.GroupOpPlan), ("radam", 128, group_op.GroupOpPlan)])
def test_slower_rules_traced_on_small_tensors_only(name, size, plan, monkeypatch):
    """``TRACED_SLOWER`` in the printed mode: the op above the rule's limit on the mean elements
    per param (also under ``fullgraph``, where they were traced before the op existed), the
    traced reference path up to it (LAMB's 8192: 8 x 8 and 8 are below, 128 x 128 and 128
    above; RAdam's 0)."""
    monkeypatch.setattr(traced_reference, "TRACED_SLOWER", {"lamb": 8192, "radam": 0})
    ps = [torch.zeros(size, size, requires_grad=True), torch.zeros(size, requires_grad=True)]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt = lookup(name).build(ps, lr=1e-3)
    compiled.MODE = "printed"
    compiled.prepare(opt)
    assert [type(p) for p in opt._compiled_plans] == [plan]
