"""torch.compile: the compiled step agrees with the eager step, breaks no graph inside optimlab,
warns nothing, and does not recompile under a per-step cosine schedule.

Dynamo's counters (``torch._dynamo.utils.counters``) count graphs and graph breaks. The default
run traces with the ``aot_eager`` backend (Dynamo + AOTAutograd, the graph optimlab hands to
Inductor, without Inductor's C++ build); the Inductor sweep over the registry is ``slow``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import optimlab
from optimlab.fused import compiled, compiled_groups, group_op, traced_reference
from optimlab.registry import lookup
from optimlab.rules.base import hyperparameters

from conftest import RULE_PARAMS

SRC = os.path.dirname(optimlab.__file__)
SHAPES = [(5, 3), (7,), (2, 2, 2)]


def _plans(entry, mode="kernel") -> set:
    """The types of the plans the compiled path makes for the entry's groups in ``mode``
    (``NoneType``: its eager step behind a graph break; ``GroupOpPlan``: its eager step as one
    op in the graph, the rules in ``traced_reference.TRACED_SLOWER``)."""
    ps = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt = entry.build(ps, lr=entry.test_lr)
    before, compiled.MODE = compiled.MODE, mode
    try:
        compiled.prepare(opt)
    finally:
        compiled.MODE = before
    return {type(plan) for plan in opt._compiled_plans}


def _taken(entry, mode="kernel") -> bool:
    """Whether the compiled path steps the entry in the graph in ``mode``."""
    return type(None) not in _plans(entry, mode)


NOT_TAKEN = pytest.mark.xfail(strict=True, reason="its eager step behind a graph break")
COMPILE_PARAMS = [pytest.param(p.values[0], id=p.id, marks=() if _taken(p.values[0]) else NOT_TAKEN)
                  for p in RULE_PARAMS]
MODE_PARAMS = [pytest.param(p.values[0], mode, id=f"{p.id}-{mode}",
                            marks=() if _taken(p.values[0], mode) else NOT_TAKEN)
               for p in RULE_PARAMS for mode in ("kernel", "printed")]


#: the modes that trace the step into the graph (the default, ``"step_op"``, makes a frame that
#: is only ``opt.step`` one opaque op: tests/test_compile_step_op.py)
COMPILED_MODE = "kernel"
pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def make(entry, dtype=torch.float64, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]
    return params, entry.build(params, lr=entry.test_lr, **kw)


def set_grads(params_lists, t):
    gen = torch.Generator().manual_seed(100 + t)
    for i, s in enumerate(SHAPES):
        g = torch.randn(s, generator=gen, dtype=torch.float64)
        for params in params_lists:
            params[i].grad = g.to(params[i].dtype)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def optimlab_breaks() -> dict:
    """Every graph break: torch's LR scheduler no longer wraps optimlab's step in a function
    of ``lr_scheduler.py`` (a file Dynamo skips), so it breaks nothing either."""
    return dict(counters["graph_break"])


def lazy_state(opt) -> bool:
    """The rule creates state on its first step (SGD's momentum buffer): a second graph."""
    h = hyperparameters(opt.param_groups[0], opt.defaults)
    return any(v is None for v in opt.rule.tensors(h).values())


def ours(caught) -> list:
    return [w for w in caught if (w.filename or "").startswith(SRC) or "optimlab" in str(w.message)]


def rel(a, b) -> float:
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item() for x, y in zip(a, b))


def calling_step(opt, backend="aot_eager"):
    """A compiled function that calls ``opt.step()`` (``fullgraph=True``: any break raises)."""
    return torch.compile(lambda: opt.step(), backend=backend, fullgraph=True)


def run_scheduled(entry, backend, steps, dtype=torch.float64, **kw):
    """``steps`` compiled and eager steps side by side, a cosine lr schedule stepped after each."""
    p_c, opt_c = make(entry, dtype, **kw)
    p_e, opt_e = make(entry, dtype, **kw)
    sched_c = torch.optim.lr_scheduler.CosineAnnealingLR(opt_c, steps)
    sched_e = torch.optim.lr_scheduler.CosineAnnealingLR(opt_e, steps)
    step = torch.compile(opt_c.step, backend=backend)
    seen = []
    for t in range(steps):
        set_grads([p_c, p_e], t)
        step()
        opt_e.step()
        sched_c.step()
        sched_e.step()
        seen.append(graphs())
    return p_c, p_e, opt_c, seen


@pytest.mark.parametrize("entry, mode", MODE_PARAMS)
def test_compiled_step_cosine_schedule(entry, mode, caplog):
    """50 compiled steps under a per-step cosine lr, in both modes that step in the graph: equal
    to eager, 1 graph (2 where the rule creates state on its first step), no recompile after
    that, no break, no warning."""
    compiled.MODE = mode
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        p_c, p_e, opt, seen = run_scheduled(entry, "aot_eager", 50)
    assert rel(p_c, p_e) <= 1e-12
    assert not optimlab_breaks()
    assert seen[0] == 1 and seen[1] == 1 + lazy_state(opt) and seen[-1] == seen[1], seen
    assert not ours(caught), [str(w.message) for w in ours(caught)]
    assert not [r for r in caplog.records if "recompile" in r.getMessage() or "optimlab" in r.getMessage()]
    assert torch.is_tensor(opt.param_groups[0]["lr"])  # a graph input, updated in place by the scheduler


@pytest.mark.parametrize("entry", COMPILE_PARAMS)
def test_fullgraph_function_calling_step(entry):
    """A compiled training step that calls ``opt.step()``: one graph (``fullgraph=True`` raises
    on any break), equal to eager, lr changed by hand every step without recompiling. LAMB
    (kept on its eager step for speed) is one op in that graph."""
    p_c, opt_c = make(entry)
    p_e, opt_e = make(entry)

    train_step = calling_step(opt_c, "eager")

    for t in range(6):
        set_grads([p_c, p_e], t)
        for opt in (opt_c, opt_e):
            lr = entry.test_lr * (1 + math.cos(t)) / 2
            g = opt.param_groups[0]
            g["lr"].fill_(lr) if torch.is_tensor(g["lr"]) else g.__setitem__("lr", lr)
        train_step()
        opt_e.step()
        if t == 1:
            after_two = graphs()
    assert rel(p_c, p_e) <= 1e-12
    assert graphs() == after_two <= 1 + lazy_state(opt_c)


def _write_numbers(group, key, t):
    """What a hand-written schedule does: a new Python number (or tuple of numbers) every step."""
    value = group[key]
    scale = 1 + 0.05 * math.sin(t + 1)
    if isinstance(value, tuple):
        group[key] = tuple(v if v is None else float(v) * (1 - 0.001 * t) if key == "betas" else float(v) * scale
                           for v in value)
    else:
        group[key] = float(value) * scale


@pytest.mark.parametrize("key", ["lr", "betas", "eps", "weight_decay"])
@pytest.mark.parametrize("entry", COMPILE_PARAMS)
def test_numbers_written_every_step_do_not_recompile_every_step(entry, key):
    """``group["lr"] = base * warmup(t)`` by hand (or OneCycleLR's ``betas``) inside a compiled
    training step with ``fullgraph=True``: the compiled step made ``lr`` a tensor, the user
    writes a float over it every step; it used to recompile at every step and raise at the
    ninth (``recompile_limit``). Now at most one more graph, equal to eager. (Dynamo's own
    guards; Inductor with ``beta1``: test_inductor_one_cycle_momentum_does_not_recompile_every_step.)"""
    p_c, opt_c = make(entry)
    if key not in opt_c.param_groups[0] or opt_c.param_groups[0][key] is None:
        pytest.skip(f"{entry.name} has no {key}")
    p_e, opt_e = make(entry)
    train_step = calling_step(opt_c, "eager")
    seen = []
    for t in range(10):
        set_grads([p_c, p_e], t)
        for opt in (opt_c, opt_e):
            _write_numbers(opt.param_groups[0], key, t)
        train_step()
        opt_e.step()
        seen.append(graphs())
    assert rel(p_c, p_e) <= 1e-12
    assert seen[-1] == seen[3] <= 2 + lazy_state(opt_c), seen


@pytest.mark.parametrize("written", [True, False], ids=["written", "read"])
@pytest.mark.parametrize("entry", RULE_PARAMS)
def test_group_written_or_read_in_the_frame_before_the_step(entry, written):
    """A hand-written warmup inside a compiled training step, a graph break after the step
    (``zero_grad`` is one): ``group["lr"] = base * min(1, (t + 1) / 10)`` from the step
    number (an int Dynamo makes symbolic on its second call), then ``opt.step()``; or the
    group only read (``lr`` logged into the loss) before it. The compiled step used to make
    the group's numbers tensors after the frame had read them, and the analysis after the
    break read them changed: ``SpeculationLogDivergence`` on the first call; Rprop's step
    size started at the lr before the write. Now equal to the eager loop: a written group
    breaks the graph before the step (as torch.optim's step always does), a read one
    breaks nothing."""
    p_c, opt_c = make(entry)
    p_e, opt_e = make(entry)
    base = entry.test_lr

    def warmup(opt, t):
        for g in opt.param_groups:
            g["lr"] = base * min(1.0, (t + 1) / 10)

    @torch.compile(backend="eager")
    def train_step(t, x):
        if written:
            warmup(opt_c, t)
        y = x * opt_c.param_groups[0]["lr"]
        opt_c.step()
        torch._dynamo.graph_break()
        return y

    for t in range(12):
        set_grads([p_c, p_e], t)
        if not written:
            warmup(opt_c, t)
        train_step(t, torch.ones(()))
        warmup(opt_e, t)
        opt_e.step()
    assert rel(p_c, p_e) <= 1e-12
    ours = {r for r in optimlab_breaks() if "optimlab" in r or SRC in r}
    assert all("param group written before the step" in r for r in ours), ours
    assert bool(ours) == written, optimlab_breaks()


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_betas_and_momentum_schedules(name):
    """Betas (never branched on) become graph inputs; momentum, which SGD's rule branches on
    (``momentum != 0``), compiles once more when it first changes and then stays symbolic."""
    entry = lookup(name)
    kw = {"momentum": 0.9} if name == "sgd" else {}
    p_c, opt_c = make(entry, **kw)
    p_e, opt_e = make(entry, **kw)
    step = torch.compile(opt_c.step, backend="eager")
    seen = []
    for t in range(12):
        set_grads([p_c, p_e], t)
        for opt in (opt_c, opt_e):
            g = opt.param_groups[0]
            if name == "adam":
                b1 = 0.9 - 0.01 * t
                g["betas"] = (b1, g["betas"][1]) if not torch.is_tensor(g["betas"][0]) else g["betas"]
                if torch.is_tensor(g["betas"][0]):
                    g["betas"][0].fill_(b1)
            else:
                g["momentum"] = 0.9 - 0.01 * t
        step()
        opt_e.step()
        seen.append(graphs())
    assert rel(p_c, p_e) <= 1e-12
    assert seen[-1] == seen[3], seen  # nothing compiled after the first few steps
    assert seen[-1] <= (3 if name == "sgd" else 1), seen


def test_mixed_groups_missing_grads_and_eager_steps_between():
    """Two groups, a param without grad, a differentiable group (eager, behind a graph break),
    and eager steps between compiled ones: all equal to the eager optimizer."""
    entry = lookup("adamw")

    def build(seed):
        gen = torch.Generator().manual_seed(seed)
        ps = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES]
        opt = optimlab.AdamW([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003}], lr=entry.test_lr)
        return ps, opt

    p_c, opt_c = build(0)
    p_e, opt_e = build(0)
    step = torch.compile(opt_c.step, backend="aot_eager")
    for t in range(6):
        set_grads([p_c, p_e], t)
        for ps in (p_c, p_e):
            ps[1].grad = None if t % 3 == 0 else ps[1].grad
        (step if t % 2 == 0 else opt_c.step)()
        opt_e.step()
    assert rel(p_c, p_e) <= 1e-12
    for a, b in zip(opt_c.state.values(), opt_e.state.values()):
        assert rel([a["exp_avg"], a["step"]], [b["exp_avg"], b["step"]]) <= 1e-12


def test_differentiable_group_takes_the_eager_step():
    entry = lookup("sgd")
    p_c, opt_c = make(entry, momentum=0.9, differentiable=True)
    p_e, opt_e = make(entry, momentum=0.9, differentiable=True)
    for p in p_c + p_e:
        p.requires_grad_(False)  # stepped in place outside autograd; the grads are set by hand
    step = torch.compile(opt_c.step, backend="eager")
    for t in range(3):
        set_grads([p_c, p_e], t)
        step()
        opt_e.step()
    assert rel(p_c, p_e) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.complex64])
def test_low_precision_and_complex(dtype):
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    p_c = [b.clone().requires_grad_() for b in base]
    p_e = [b.clone().requires_grad_() for b in base]
    opt_c, opt_e = optimlab.Adam(p_c, lr=0.01), optimlab.Adam(p_e, lr=0.01, foreach=False)
    step = torch.compile(opt_c.step, backend="aot_eager")
    for t in range(5):
        gen = torch.Generator().manual_seed(10 + t)
        for a, b in zip(p_c, p_e):
            a.grad = torch.randn(a.shape, generator=gen, dtype=dtype)
            b.grad = a.grad.clone()
        step()
        opt_e.step()
    for a, b in zip(p_c, p_e):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0) if dtype == torch.bfloat16 else \
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_kernel_mode_calls_the_c_kernel_in_the_graph():
    """Every entry the eager path steps with the C kernel is stepped by ``optimlab::fused_step``
    in the compiled graph (no silent fallback to the printed graph), RAdam, Rprop, ASGD and
    Lion included, which the printed graph does not take (there: the reference path, traced)."""
    from optimlab.fused import kernel_op

    for param in RULE_PARAMS:
        entry = param.values[0]
        ps = [torch.zeros(s, requires_grad=True) for s in SHAPES]
        for p in ps:
            p.grad = torch.ones_like(p)
        opt = entry.build(ps, lr=entry.test_lr)
        compiled.prepare(opt)
        rule = opt.rule
        expected = (rule.elementwise and getattr(rule, "estimate", None) is None
                    and not compiled_groups.own_hooks(opt))
        assert isinstance(opt._compiled_plans[0], kernel_op.KernelPlan) == expected, entry.name
    for name in ("rprop", "asgd", "lion"):  # masks and signs: traced as the reference path
        assert _taken(lookup(name), "kernel") and _plans(lookup(name), "printed") == {traced_reference.ReferencePlan}, name
    for name in ("adafactor", "lars"):  # reductions: the reference path in every mode
        for mode in ("kernel", "printed"):
            assert _plans(lookup(name), mode) == {traced_reference.ReferencePlan}, (name, mode)
    # slower traced: their eager step as one op, except LAMB on small tensors (SHAPES)
    assert _plans(lookup("lamb"), "printed") == {traced_reference.ReferencePlan}
    assert _plans(lookup("radam"), "printed") == {group_op.GroupOpPlan}


def test_printed_where_the_kernel_cannot_run(monkeypatch):
    """No C kernel (``OPTIMLAB_DISABLE_FUSED``, as without a compiler) or ``fused=False``: the
    kernel mode prints the graph instead, still one graph and equal to eager."""
    from optimlab.fused import kernel_op

    monkeypatch.setenv("OPTIMLAB_DISABLE_FUSED", "1")
    p_c, p_e, opt, seen = run_scheduled(lookup("adam"), "aot_eager", 6)
    assert isinstance(opt._compiled_plans[0], compiled.GroupPlan)
    assert rel(p_c, p_e) <= 1e-12 and seen[-1] == 1 and not optimlab_breaks()
    monkeypatch.delenv("OPTIMLAB_DISABLE_FUSED")
    _, opt = make(lookup("adam"), fused=False)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    compiled.prepare(opt)
    assert not isinstance(opt._compiled_plans[0], kernel_op.KernelPlan)


def test_kept_out_mode():
    """``MODE = "kept_out"``: the eager step behind one graph break, equal to eager, no graph."""
    compiled.MODE = "kept_out"
    p_c, p_e, _, seen = run_scheduled(lookup("adamw"), "aot_eager", 6)
    assert rel(p_c, p_e) == 0 and seen[-1] == 0


@pytest.mark.parametrize("helper", [True, False], ids=["c++ tables", "python tables"])
def test_the_kernel_op_alone(helper, monkeypatch):
    """``optimlab::fused_step`` called eagerly: the same trajectory as the eager step, the
    tensors updated in place, their versions bumped; with the C++ helper that fills its
    pointer tables (``gather.cpp``) and without it (no C++ compiler)."""
    from optimlab.fused import kernel_op

    p_c, opt_c = make(lookup("nadam"))
    p_e, opt_e = make(lookup("nadam"))
    set_grads([p_c, p_e], 0)
    compiled.prepare(opt_c)
    if not helper:
        monkeypatch.setattr(kernel_op, "_fill", [None])
    assert (kernel_op._fill[0] is not None) == helper
    (b,) = opt_c._compiled_plans[0].buckets
    group = opt_c.param_groups[0]
    ptrs = [p.data_ptr() for p in p_c]
    for t in range(5):
        set_grads([p_c, p_e], t)
        state = [opt_c.state[p][n] for n in b.state for p in p_c]
        scalars = [opt_c.state[p][n] for n in b.scalars for p in p_c]
        hp = torch.stack([kernel_op._hp(opt_c, group, k, i) for k, i in b.hps])
        version = p_c[0]._version
        with torch.no_grad():
            torch.ops.optimlab.fused_step(p_c, [p.grad for p in p_c], state, scalars, hp, b.kernel)
        assert p_c[0]._version > version
        opt_e.step()
    assert [p.data_ptr() for p in p_c] == ptrs
    assert rel(p_c, p_e) <= 1e-12


@pytest.mark.slow
def test_inductor_runs_the_kernel_op_in_place():
    """Inductor re-inplaces the op: the generated code calls ``optimlab::fused_step`` on the
    graph inputs themselves (no ``auto_functionalized``, no clone or copy of any param or
    state), and the params and state keep their memory."""
    from torch._inductor.utils import run_and_get_code

    p_c, opt_c = make(lookup("adamw"), dtype=torch.float32)
    p_e, opt_e = make(lookup("adamw"), dtype=torch.float32)
    step = torch.compile(opt_c.step)
    set_grads([p_c, p_e], 0)
    _, code = run_and_get_code(step)
    opt_e.step()
    ptrs = [t.data_ptr() for p in p_c for t in (p, *opt_c.state[p].values())]
    for t in range(1, 5):
        set_grads([p_c, p_e], t)
        step()
        opt_e.step()
    assert [t.data_ptr() for p in p_c for t in (p, *opt_c.state[p].values())] == ptrs
    assert rel(p_c, p_e) <= 1e-6
    (source,) = code
    call = source[source.index("def call"):]
    assert call.count("torch.ops.optimlab.fused_step.default(") == 1
    for word in ("auto_functionalized", "clone", "copy_", "empty_strided_cpu((5, 3)"):
        assert word not in call, word


@pytest.mark.slow
def test_inductor_adamw():
    """Inductor fuses the printed graph (the scalar sub-expressions go through one opaque
    copy so they are computed once per step): float32 within 1e-6 of eager, one graph."""
    entry = lookup("adamw")
    p_c, p_e, _, seen = run_scheduled(entry, "inductor", 8, dtype=torch.float32)
    assert rel(p_c, p_e) <= 1e-6
    assert seen[-1] == 1 and not optimlab_breaks()


@pytest.mark.slow
@pytest.mark.parametrize("entry, mode", MODE_PARAMS)
def test_inductor_every_entry(entry, mode):
    compiled.MODE = mode
    p_c, p_e, opt, seen = run_scheduled(entry, "inductor", 20, dtype=torch.float32)
    assert rel(p_c, p_e) <= 2e-6
    assert seen[-1] == seen[1] == 1 + lazy_state(opt) and not optimlab_breaks()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "adamw", "nadam"])
def test_inductor_one_cycle_momentum_does_not_recompile_every_step(name):
    """OneCycleLR with ``cycle_momentum`` writes ``betas[0]`` as a float every step, and a
    compiled function calls ``opt.step()``. torch 2.13 keeps the float names (``zf98``) that an
    earlier frame's restart specialized (``TensorifyState``) and specializes a later frame's
    float of the same name: where ``beta1``'s name was on that list, every value of it compiled
    a graph of its own, to ``recompile_limit``. Which name collides depends on the model, so
    the list is filled here as such an earlier frame may leave it; now it is cleared at the
    start of each frame's compilation (``compiled._clear_stale_float_specializations``):
    2 graphs, equal to eager."""
    from torch._dynamo.symbolic_convert import TensorifyState

    p_c, opt_c = make(lookup(name), torch.float32)
    p_e, opt_e = make(lookup(name), torch.float32)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
              for opt in (opt_c, opt_e)]
    train_step = calling_step(opt_c, "inductor")
    seen = []
    for t in range(12):
        set_grads([p_c, p_e], t)
        train_step()
        TensorifyState.force_specializations.update(f"zf{i}" for i in range(500))
        opt_e.step()
        for sched in scheds:
            sched.step()
        seen.append(graphs())
    assert opt_c.param_groups[0]["betas"][0] != opt_e.defaults["betas"][0]  # the schedule ran
    assert rel(p_c, p_e) <= 2e-6
    assert seen[-1] == seen[3] <= 2, seen


@pytest.mark.parametrize("name, mode", [("lamb", "kernel"), ("radam", "printed")])
def test_traced_reference_of_the_rules_kept_eager(monkeypatch, name, mode):
    """``TRACED_SLOWER`` keeps LAMB's and RAdam's eager step for speed; traced, their reference
    step is correct all the same: one graph under Inductor, equal to eager, no recompiles."""
    monkeypatch.setattr(traced_reference, "TRACED_SLOWER", {})
    compiled.MODE = mode
    p_c, p_e, opt, seen = run_scheduled(lookup(name), "inductor", 20, dtype=torch.float32)
    assert isinstance(opt._compiled_plans[0], traced_reference.ReferencePlan)
    assert rel(p_c, p_e) <= 2e-6
    assert seen[-1] == seen[1] == 1 and not optimlab_breaks()


#: rules whose step writes group-level state (Prodigy's d, schedule-free's k and sums)
GROUP_STATE_PARAMS = [p for p in RULE_PARAMS if p.values[0].cls.rule.group_state]


@pytest.mark.parametrize("entry", GROUP_STATE_PARAMS)
def test_group_state_traced_in_place(entry):
    """Group-level state is traced too (0-dim tensors updated in place under AOTAutograd): a
    compiled function calling ``opt.step()`` with eager steps between equals the eager
    optimizer, and ``state_dict`` holds the same numbers as the eager one's, which a fresh
    optimizer loads and continues from."""
    p_c, opt_c = make(entry)
    p_e, opt_e = make(entry)

    train_step = calling_step(opt_c)

    for t in range(7):
        set_grads([p_c, p_e], t)
        (opt_c.step if t % 3 == 2 else train_step)()
        opt_e.step()
    assert rel(p_c, p_e) <= 1e-12
    keys = entry.cls.rule.group_state
    saved_c, saved_e = opt_c.state_dict(), opt_e.state_dict()
    got = {k: saved_c["param_groups"][0][k] for k in keys}
    want = {k: saved_e["param_groups"][0][k] for k in keys}
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    p_l, opt_l = make(entry)
    with torch.no_grad():
        for a, b in zip(p_l, p_c):
            a.copy_(b)
    opt_l.load_state_dict(saved_c)
    for t in range(7, 10):
        set_grads([p_l, p_e], t)
        opt_l.step()
        opt_e.step()
    assert rel(p_l, p_e) <= 1e-12


def test_prodigy_traced_step_stops_where_the_eager_one_does():
    """Prodigy's step stops after its phase 1 while ||s|| = 0 (zero gradients): traced, where
    the step cannot stop on a value, the params and the group keep their values all the same."""
    entry = lookup("prodigy")
    p_c, opt_c = make(entry, weight_decay=0.1)  # decoupled decay would move params on a step
    p_e, opt_e = make(entry, weight_decay=0.1)
    before = [p.detach().clone() for p in p_c]

    train_step = calling_step(opt_c)

    for ps in (p_c, p_e):
        for p in ps:
            p.grad = torch.zeros_like(p)
    train_step()
    opt_e.step()
    assert rel(p_c, before) == 0 and opt_c.state_dict()["param_groups"][0]["k"] == 0
    for t in range(4):
        set_grads([p_c, p_e], t)
        train_step()
        opt_e.step()
    assert rel(p_c, p_e) <= 1e-12
    assert opt_c.state_dict()["param_groups"][0]["k"] == opt_e.param_groups[0]["k"] == 4


def test_traced_scalar_state_in_float64():
    """Scalar state in float64 (torch's default dtype float64): written by a foreach op, since
    Dynamo drops ``copy_`` into a 0-dim float64 tensor under AOTAutograd (Adafactor's
    ``step`` stayed 0 and its steps went wrong)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        entry = lookup("adafactor")
        p_c, opt_c = make(entry)
        p_e, opt_e = make(entry)
        step = torch.compile(opt_c.step, backend="aot_eager")
        for t in range(5):
            set_grads([p_c, p_e], t)
            step()
            opt_e.step()
    finally:
        torch.set_default_dtype(before)
    assert isinstance(opt_c._compiled_plans[0], traced_reference.ReferencePlan)
    assert [s["step"].item() for s in opt_c.state.values()] == [5.0] * len(SHAPES)
    assert rel(p_c, p_e) <= 1e-12


#: (entry, mode) pairs the traced reference path steps (Adafactor, LARS, Prodigy, schedule-free;
#: Rprop, ASGD, Lion where the printed graph runs)
REFERENCE_PARAMS = [pytest.param(p.values[0], mode, id=f"{p.id}-{mode}") for p in RULE_PARAMS
                    for mode in ("kernel", "printed")
                    if traced_reference.ReferencePlan in _plans(p.values[0], mode)]


@pytest.mark.parametrize("entry, mode", REFERENCE_PARAMS)
def test_traced_reference_writes_zero_dim_float64(entry, mode):
    """A 0-dim float64 param and its state, stepped by the traced reference path, are updated:
    Dynamo drops ``copy_`` into a 0-dim float64 tensor under AOTAutograd (the param never
    moved), so every traced write is a foreach copy."""
    compiled.MODE = mode
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(), (4, 3)]]
    p_c = [b.clone().requires_grad_() for b in base]
    p_e = [b.clone().requires_grad_() for b in base]
    opt_c, opt_e = entry.build(p_c, lr=entry.test_lr), entry.build(p_e, lr=entry.test_lr)

    train_step = calling_step(opt_c)

    for t in range(4):
        gen = torch.Generator().manual_seed(10 + t)
        for a, b in zip(p_c, p_e):
            a.grad = torch.randn(a.shape, generator=gen, dtype=torch.float64)
            b.grad = a.grad.clone()
        train_step()
        opt_e.step()
    assert isinstance(opt_c._compiled_plans[0], traced_reference.ReferencePlan)
    assert not torch.equal(p_c[0], base[0])
    assert rel(p_c, p_e) <= 1e-12


def test_schedule_free_compiled_step_in_eval_mode_raises():
    """A compiled step in eval mode raises the eager step's error (from outside Dynamo, a graph
    break it handles, not an exception inside the trace); after ``train()`` it steps as eager."""
    entry = lookup("schedule_free_adamw")
    p_c, opt_c = make(entry)
    p_e, opt_e = make(entry)
    step = torch.compile(opt_c.step, backend="aot_eager")
    for t in range(5):
        set_grads([p_c, p_e], t)
        if t == 2:
            opt_c.eval()
            with pytest.raises(RuntimeError, match="not in train mode"):
                step()
            opt_c.train()
        step()
        opt_e.step()
    assert rel(p_c, p_e) <= 1e-12


@pytest.mark.parametrize("entry", GROUP_STATE_PARAMS)
def test_group_state_of_a_group_without_grads(entry):
    """A second group whose params have no grad at some steps: its group-level state moves as
    the eager step moves it (schedule-free's ``k`` advances, Prodigy's stays)."""
    def build(seed):
        gen = torch.Generator().manual_seed(seed)
        ps = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES]
        return ps, entry.build([{"params": ps[:2]}, {"params": ps[2:]}], lr=entry.test_lr)

    (p_c, opt_c), (p_e, opt_e) = build(0), build(0)
    train_step = calling_step(opt_c)
    for t in range(5):
        set_grads([p_c, p_e], t)
        if t in (0, 2):
            p_c[2].grad = p_e[2].grad = None
        train_step()
        opt_e.step()
    assert rel(p_c, p_e) <= 1e-12
    assert ([float(g["k"]) for g in opt_c.param_groups] == [float(g["k"]) for g in opt_e.param_groups])


@pytest.mark.parametrize("entry", RULE_PARAMS)
def test_distributed_checkpoints_after_traced_steps(entry, tmp_path):
    """The numbers a traced step keeps as tensors (``lr``, ``betas``, group-level state) are
    written as numbers: a DCP checkpoint saved after traced steps loads into a fresh optimizer
    (float ``lr``; before, DCP refused: "expected BytesStorageMetadata but found
    TensorStorageMetadata" for ``lr``), and the traced optimizer loads an eager one's
    checkpoint; both continue the eager trajectory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    def module(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.nn.ParameterList([torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES])

    def load(m, opt, path, like):
        with torch.no_grad():
            for a, b in zip(m, like):
                a.copy_(b)
        state = {"optim": get_optimizer_state_dict(m, opt)}
        dcp.load(state, checkpoint_id=str(path))
        set_optimizer_state_dict(m, opt, state["optim"])

    m_c, m_e = module(0), module(0)
    opt_c = entry.build(m_c.parameters(), lr=entry.test_lr)
    opt_e = entry.build(m_e.parameters(), lr=entry.test_lr)
    train_step = calling_step(opt_c)
    for t in range(4):
        set_grads([list(m_c), list(m_e)], t)
        train_step()
        opt_e.step()
    dcp.save({"optim": get_optimizer_state_dict(m_c, opt_c)}, checkpoint_id=str(tmp_path / "traced"))
    dcp.save({"optim": get_optimizer_state_dict(m_e, opt_e)}, checkpoint_id=str(tmp_path / "eager"))
    m_l = module(1)
    opt_l = entry.build(m_l.parameters(), lr=entry.test_lr)
    load(m_l, opt_l, tmp_path / "traced", m_c)
    load(m_c, opt_c, tmp_path / "eager", m_e)
    for t in range(4, 7):
        set_grads([list(m_l), list(m_c), list(m_e)], t)
        opt_l.step()
        train_step()
        opt_e.step()
    assert rel(list(m_l), list(m_e)) <= 1e-10  # NAdam reads 1.3e-12 here
    assert rel(list(m_c), list(m_e)) <= 1e-10


def test_scheduler_made_after_a_compiled_step_saves_numbers():
    """An LR scheduler built after a compiled step copies the lr the step made a tensor into
    ``initial_lr``; ``state_dict()`` writes it as the number, as the eager optimizer does."""
    params, opt = make(lookup("adam"))
    set_grads([params], 0)
    calling_step(opt, "eager")()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    assert isinstance(opt.param_groups[0]["initial_lr"], torch.Tensor)  # what torch's scheduler copied
    sched.step()
    group = opt.state_dict()["param_groups"][0]
    assert type(group["lr"]) is float and type(group["initial_lr"]) is float
    assert group["initial_lr"] == lookup("adam").test_lr
