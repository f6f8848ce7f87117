"""GradScaler's fused protocol: the step unscales the grads and skips on inf itself.

``torch.amp.GradScaler.step`` sees ``_step_supports_amp_scaling`` and, instead of
unscaling every grad in place (``unscale_``), hands the optimizer ``grad_scale`` and
``found_inf``. optimlab's step divides by the scale inside the update (the kernel, the
reference path, DTensor shards alike) and skips the step (state untouched) on inf, as
torch's fused optimizers do. The result must equal GradScaler's plain path, inf steps
and scale changes included, for every registry entry.
"""

from __future__ import annotations

import pytest
import torch

from conftest import RULE_CASES, accepts

STEPS = 40
INF_AT = (7, 8, 23)  # steps whose grads hold an inf: both scalers skip and back off


def _plain(opt):
    """A thin proxy without ``_step_supports_amp_scaling``: GradScaler takes its plain path
    (``unscale_`` every grad in place, then ``step``)."""
    class Proxy:
        _step_supports_amp_scaling = False

        def __init__(self, inner):
            self.__dict__["inner"] = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __setattr__(self, name, value):
            setattr(self.inner, name, value)

    return Proxy(opt)


def _train(entry, variant, fused_protocol: bool, flags: dict):
    gen = torch.Generator().manual_seed(0)
    x0 = [torch.randn(6, 4, generator=gen), torch.randn(4, generator=gen)]
    params = [torch.nn.Parameter(x.clone()) for x in x0]
    opt = entry.build(params, lr=entry.test_lr, **variant, **flags)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=5)
    stepper = opt if fused_protocol else _plain(opt)
    protocol = []
    opt.register_step_pre_hook(lambda o, *_: protocol.append(getattr(o, "grad_scale", None) is not None))
    grads_after = []
    for step in range(STEPS):
        grads = [torch.randn(x.shape, generator=gen) for x in x0]
        loss = sum((p * g).sum() for p, g in zip(params, grads)) + sum(p.square().sum() for p in params)
        opt.zero_grad()
        scaler.scale(loss).backward()
        if step in INF_AT:
            params[0].grad[0, 0] = float("inf")
        scaler.step(stepper)
        grads_after.append([p.grad.clone() for p in params])
        scaler.update()
    assert protocol == [fused_protocol] * (STEPS - len(INF_AT) * (not fused_protocol)), protocol
    return [p.detach() for p in params], opt, grads_after, scaler.get_scale()


@pytest.mark.parametrize("entry, variant", [c.values for c in RULE_CASES], ids=[c.id for c in RULE_CASES])
@pytest.mark.parametrize("flags", [{}, {"fused": False}], ids=["default", "fused_off"])
def test_fused_protocol_equals_the_plain_path(entry, variant, flags):
    if flags and not accepts(entry.cls, "fused"):
        pytest.skip(f"{entry.cls.__name__} has no fused flag")
    ours, opt, seen, scale = _train(entry, variant, True, flags)
    plain, opt_plain, seen_plain, scale_plain = _train(entry, variant, False, flags)
    assert scale == scale_plain
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # after a step the grads are unscaled, as the plain path's unscale_ leaves them (and
    # torch's fused kernels); a step skipped on inf leaves them scaled, as torch's fused do
    for step, (mine, plain_grads) in enumerate(zip(seen, seen_plain)):
        for a, b in zip(mine, plain_grads):
            if step in INF_AT:
                assert not torch.equal(a, b), step
            else:
                assert torch.equal(a, b), step
    for key, value in opt_plain.state[opt_plain.param_groups[0]["params"][0]].items():
        mine = opt.state[opt.param_groups[0]["params"][0]][key]
        torch.testing.assert_close(mine, value, rtol=1e-6, atol=1e-7)


def test_skipped_step_leaves_state_untouched():
    import optimlab

    p = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    opt.found_inf, opt.grad_scale = torch.tensor(1.0), torch.tensor(4.0)
    p.grad = torch.full((3,), 8.0)
    opt.step()
    del opt.found_inf, opt.grad_scale
    for k, v in opt.state[p].items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 1e-3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("flags", [{}, {"foreach": True}, {"foreach": False}],
                         ids=["default", "foreach", "for-loop"])
def test_grads_after_the_step_as_torch_fused_leaves_them(flags, dtype):
    """``p.grad`` after ``scaler.step(opt)``: torch's fused AdamW writes ``grad / scale`` back
    (bit for bit, the step's own division), and leaves the grads scaled on a skipped step."""
    import optimlab

    gen = torch.Generator().manual_seed(0)
    x0 = [torch.randn(33, 7, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype)]
    runs = []
    for make in (lambda ps: torch.optim.AdamW(ps, fused=True), lambda ps: optimlab.AdamW(ps, **flags)):
        params = [torch.nn.Parameter(x.clone()) for x in x0]
        opt = make(params)
        scaler = torch.amp.GradScaler("cpu", init_scale=3.0 * 2 ** 9, growth_interval=2)
        g = torch.Generator().manual_seed(1)
        seen = []
        for step in range(6):
            opt.zero_grad()
            loss = sum((p.float() * torch.randn(p.shape, generator=g)).sum() for p in params)
            scaler.scale(loss).backward()
            if step == 3:
                params[0].grad[1, 1] = float("nan")
            scaler.step(opt)
            scaler.update()
            seen.append(([p.grad.clone() for p in params], [p.detach().clone() for p in params]))
        runs.append(seen)
    for step, ((grads, params), (my_grads, my_params)) in enumerate(zip(*runs)):
        for a, b in zip(grads, my_grads):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), step
        for a, b in zip(params, my_params):  # the step itself: float32 ulps apart, as in test_fused
            torch.testing.assert_close(b, a, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)

