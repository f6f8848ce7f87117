"""Schedules (closed forms) and the LRScheduler adapter, checked against torch's own schedulers."""

import io
import math
import pickle

import pytest
import torch
from torch.optim import lr_scheduler as tls

import optimlab
from optimlab import schedules as S

BASE_LR = 0.1


def _opt(lr=BASE_LR, groups=1):
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)]
    return optimlab.SGD(params, lr=lr)


def _run(sched, opt, steps):
    """lrs after construction and after each of ``steps`` scheduler steps."""
    lrs = [sched.get_last_lr()]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
    return lrs


def _assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-15), f"step {t}: {x} != {y}"


# (our schedule, a factory for torch's scheduler, steps). Steps stay within the range on
# which the two are defined to agree (see the docstrings in optimlab.schedules).
TORCH_TWINS = [
    ("step", S.step_decay(7, 0.5), lambda o: tls.StepLR(o, step_size=7, gamma=0.5), 40),
    ("multistep", S.multi_step([3, 10, 10, 25], 0.3),
     lambda o: tls.MultiStepLR(o, milestones=[3, 10, 10, 25], gamma=0.3), 40),
    ("exponential", S.exponential(0.93), lambda o: tls.ExponentialLR(o, gamma=0.93), 60),
    ("cosine", S.cosine(50), lambda o: tls.CosineAnnealingLR(o, T_max=50), 50),
    ("cosine_floor", S.cosine(37, floor=0.1),
     lambda o: tls.CosineAnnealingLR(o, T_max=37, eta_min=0.1 * BASE_LR), 37),
    ("sgdr_mult2", S.cosine_restarts(5, T_mult=2, floor=0.05),
     lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.05 * BASE_LR), 80),
    ("sgdr_mult1", S.cosine_restarts(6), lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=6), 40),
    ("one_cycle", S.one_cycle(100),
     lambda o: tls.OneCycleLR(o, max_lr=BASE_LR, total_steps=100, cycle_momentum=False), 99),
    ("one_cycle_args", S.one_cycle(41, pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
     lambda o: tls.OneCycleLR(o, max_lr=BASE_LR, total_steps=41, pct_start=0.25, div_factor=10.0,
                              final_div_factor=100.0, cycle_momentum=False), 40),
    ("polynomial", S.polynomial(30, power=2.0),
     lambda o: tls.PolynomialLR(o, total_iters=30, power=2.0), 45),
    ("linear_warmup", S.linear_warmup(10, start=0.25),
     lambda o: tls.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=10), 25),
    ("linear_warmup_default", S.linear_warmup(4),
     lambda o: tls.LinearLR(o, start_factor=1 / 5, end_factor=1.0, total_iters=4), 12),
]


@pytest.mark.parametrize("schedule,make_torch,steps", [t[1:] for t in TORCH_TWINS],
                         ids=[t[0] for t in TORCH_TWINS])
def test_matches_torch_scheduler(schedule, make_torch, steps):
    o1, o2 = _opt(), _opt()
    ours = _run(optimlab.LRScheduler(o1, schedule), o1, steps)
    theirs = _run(make_torch(o2), o2, steps)
    _assert_close(ours, theirs)
    assert [g["lr"] for g in o1.param_groups] == ours[-1]


def test_matches_torch_with_several_groups_and_list_of_schedules():
    o1, o2 = _opt(groups=2), _opt(groups=2)
    ours = optimlab.LRScheduler(o1, [S.exponential(0.9), S.step_decay(3, 0.5)])
    lambdas = [lambda t: 0.9 ** t, lambda t: 0.5 ** (t // 3)]
    _assert_close(_run(ours, o1, 10), _run(tls.LambdaLR(o2, lambdas), o2, 10))
    with pytest.raises(ValueError, match="one per param group"):
        optimlab.LRScheduler(_opt(groups=2), [S.constant()])


def test_closed_forms_at_known_points():
    assert S.inverse_sqrt()(0) == 1.0 and S.inverse_sqrt()(3) == 0.5  # alpha / sqrt(t + 1)
    assert S.inverse_sqrt(timescale=4.0)(12) == 0.5
    assert S.cosine(10, floor=0.2)(5) == pytest.approx(0.6)
    assert S.cosine(10, floor=0.2)(10) == S.cosine(10, floor=0.2)(1000) == pytest.approx(0.2)
    assert S.polynomial(10, power=1.0, end=0.1)(5) == pytest.approx(0.55)
    assert S.polynomial(10, end=0.1)(99) == pytest.approx(0.1)
    assert S.one_cycle(100)(0) == pytest.approx(1 / 25)
    assert S.one_cycle(100)(29) == pytest.approx(1.0)
    assert S.one_cycle(100)(99) == S.one_cycle(100)(500) == pytest.approx(1 / 25 / 1e4)
    assert S.constant(0.5)(123) == 0.5
    # SGDR with T_mult=2: restarts at 0, 4, 12, 28
    sgdr = S.cosine_restarts(4, T_mult=2)
    assert [sgdr(t) for t in (0, 4, 12, 28)] == [1.0] * 4
    assert sgdr(8) == pytest.approx(0.5) and sgdr(11) < sgdr(10) < sgdr(9)


def test_warmup_boundary_is_exact():
    inner = S.cosine(20, floor=0.1)
    s = S.warmup(inner, 5)
    assert [s(t) for t in range(5)] == pytest.approx([(t + 1) / 6 for t in range(5)])
    for t in range(5, 40):
        assert s(t) == inner(t - 5)
    assert S.warmup(S.constant(0.5), 3)(0) == pytest.approx(0.5 / 4)  # ramps to schedule(0)
    assert S.warmup(inner, 0)(7) == inner(7)


def test_join_counts_from_each_boundary():
    a, b, c = S.constant(1.0), S.exponential(0.5), S.linear_warmup(4, start=0.0)
    s = S.join([a, b, c], [3, 10])
    assert [s(t) for t in range(3)] == [1.0] * 3
    assert [s(t) for t in range(3, 10)] == [0.5 ** k for k in range(7)]
    assert [s(t) for t in range(10, 16)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="boundaries"):
        S.join([a, b], [])
    with pytest.raises(ValueError, match="sorted"):
        S.join([a, b, c], [5, 2])


ALL = [S.constant(), S.step_decay(3), S.multi_step([2, 5]), S.exponential(0.9), S.inverse_sqrt(),
       S.polynomial(9, 2.0), S.cosine(9), S.cosine_restarts(3, 2), S.linear_warmup(4),
       S.one_cycle(20), S.warmup(S.cosine(10), 3), S.join([S.constant(), S.cosine(5)], [4])]


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_schedules_are_pure_and_picklable(s):
    first = [s(t) for t in range(30)]
    assert [s(t) for t in reversed(range(30))] == first[::-1]   # no hidden state
    assert [pickle.loads(pickle.dumps(s))(t) for t in range(30)] == first
    assert all(isinstance(v, float) and v >= 0 for v in first)
    with pytest.raises(ValueError):
        s(-1)


@pytest.mark.parametrize("name", S.NAMES)
def test_by_name(name):
    for total in (1, 2, 7, 100):
        s = S.by_name(name, total)
        values = [s(t) for t in range(total + 1)]
        assert all(math.isfinite(v) and 0 <= v <= 1 + 1e-12 for v in values)
        if name not in ("constant", "one_cycle", "warmup_cosine"):
            assert values[0] == 1.0
    s = S.by_name(name, 100)
    if name != "constant":
        assert s(99) < max(s(t) for t in range(100))


def test_by_name_shapes_and_unknown():
    assert S.by_name("exponential", 50)(50) == pytest.approx(0.01)
    assert S.by_name("step", 30)(10) == pytest.approx(0.1)
    assert S.by_name("cosine_restarts", 70)(10) == 1.0  # second cycle starts at T_0 = 10
    sgdr = S.cosine_restarts(10, 2)
    assert [S.by_name("cosine_restarts", 70)(t) for t in range(70)] == [sgdr(t) for t in range(70)]
    for total in (20, 100, 1000, 13, 5):   # the last cycle ends at the run's end, 7 | T or not
        s = S.by_name("cosine_restarts", total)
        assert s(total) == pytest.approx(0.0, abs=1e-12) and s(total - 1) < s(total - 2), total
        assert total < 13 or s(total - 1) < 0.03, total
    assert S.by_name("Warmup-Cosine", 100)(0) < S.by_name("warmup_cosine", 100)(5) == 1.0
    with pytest.raises(ValueError, match="valid names: constant, step"):
        S.by_name("cosin", 100)


def test_invalid_arguments():
    for bad in (lambda: S.cosine(0), lambda: S.step_decay(0), lambda: S.cosine_restarts(3, 0),
                lambda: S.one_cycle(10, pct_start=1.5), lambda: S.inverse_sqrt(0.0),
                lambda: S.by_name("cosine", 0)):
        with pytest.raises(ValueError):
            bad()


def test_state_dict_roundtrip_weights_only_and_continue():
    schedule = S.warmup(S.cosine_restarts(6, T_mult=2, floor=0.01), 4)
    ref_opt = _opt()
    reference = _run(optimlab.LRScheduler(ref_opt, schedule), ref_opt, 30)

    opt = _opt()
    sched = optimlab.LRScheduler(opt, schedule)
    first = _run(sched, opt, 12)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert "schedules" not in ckpt["sched"] and ckpt["sched"]["last_epoch"] == 12

    opt2 = _opt()
    sched2 = optimlab.LRScheduler(opt2, schedule)   # constructed before loading, as torch advises
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.schedules == [schedule]
    rest = _run(sched2, opt2, 18)
    assert first + rest[1:] == reference


def test_step_with_epoch_uses_closed_form():
    opt = _opt()
    sched = optimlab.LRScheduler(opt, S.exponential(0.5))
    with pytest.warns(UserWarning):
        sched.step(3)
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LR * 0.125)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _train_step(model, opt, x):
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def test_torch_schedulers_drive_optimlab_optimizers():
    x = torch.randn(8, 3)
    for make in (lambda o: tls.StepLR(o, 2, 0.5), lambda o: tls.CosineAnnealingLR(o, 10),
                 lambda o: tls.OneCycleLR(o, max_lr=0.01, total_steps=10)):  # cycles betas
        m1, m2 = _model(), _model()
        o1, o2 = optimlab.Adam(m1.parameters(), lr=0.01), torch.optim.Adam(m2.parameters(), lr=0.01)
        s1, s2 = make(o1), make(o2)
        for _ in range(6):
            _train_step(m1, o1, x), _train_step(m2, o2, x)
            s1.step(), s2.step()
        assert s1.get_last_lr() == pytest.approx(s2.get_last_lr())
        assert o1.param_groups[0]["betas"] == pytest.approx(o2.param_groups[0]["betas"])
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(p1, p2)


def test_reduce_lr_on_plateau_with_optimlab_adam():
    model = _model()
    opt = optimlab.Adam(model.parameters(), lr=0.01)
    sched = tls.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    x = torch.randn(8, 3)
    for _ in range(2):
        _train_step(model, opt, x)
        sched.step(1.0)            # a metric that never improves
    assert opt.param_groups[0]["lr"] == 0.01
    _train_step(model, opt, x)
    sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    assert sched.get_last_lr() == pytest.approx([0.005])


def test_adapter_drives_optimlab_adam_like_lambda_lr():
    x = torch.randn(8, 3)
    m1, m2 = _model(), _model()
    o1, o2 = optimlab.Adam(m1.parameters(), lr=0.05), optimlab.Adam(m2.parameters(), lr=0.05)
    schedule = S.one_cycle(8)
    s1, s2 = optimlab.LRScheduler(o1, schedule), tls.LambdaLR(o2, schedule)
    for _ in range(8):
        _train_step(m1, o1, x), _train_step(m2, o2, x)
        s1.step(), s2.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
