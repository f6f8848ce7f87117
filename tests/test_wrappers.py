"""Where torch.optim is used through something else: the optimizer stepped from inside
``backward`` (one optimizer per parameter, torch's "optimizer in backward" recipe and
``torch.distributed.optim._apply_optimizer_in_backward``), SWA's ``SWALR`` schedule, and
the data-parallel wrappers the DCP/FSDP2 tests don't cover: DDP with
``gradient_as_bucket_view=True`` (the grads are views into DDP's buckets) and FSDP1
(``FullyShardedDataParallel``, flat parameters with and without ``use_orig_params``) on 2 gloo
ranks (``slow``). Every check is against the same run with the torch.optim twin, from the
registry's torch entries.
"""

from __future__ import annotations

import pytest
import torch

from dist_harness import run_group
from optimlab.registry import TORCH_ENTRIES

ENTRIES = [pytest.param(e, id=e.name) for e in TORCH_ENTRIES]
SHAPES = [(6, 4), (4,), (3, 2, 2)]
STEPS = 100


def _params(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def _loss(params, t):
    """A noisy sum of squares: each step sees new targets, so the optimizer keeps moving."""
    gen = torch.Generator().manual_seed(1000 + t)
    return sum(((p - torch.randn(p.shape, generator=gen, dtype=p.dtype)) ** 2).sum() for p in params)


def _rel(a, b) -> float:
    """Worst relative difference over the tensors (those with elements: an FSDP1 rank may
    hold none of a parameter)."""
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b) if y.numel())


def _in_backward(build, params):
    """torch's recipe: one optimizer per parameter, stepped (and its grad freed) by a
    post-accumulate-grad hook, so ``backward`` alone trains."""
    optimizers = {p: build([p]) for p in params}

    def hook(p):
        optimizers[p].step()
        optimizers[p].zero_grad()

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
    return optimizers, handles


@pytest.mark.parametrize("entry", ENTRIES)
def test_optimizer_in_backward_matches_torch(entry):
    """float64, 100 steps, one optimizer per parameter stepped inside ``backward``."""
    ours, theirs = _params(), _params()
    opt_ours, _ = _in_backward(lambda ps: entry.build(ps, lr=entry.test_lr), ours)
    opt_theirs, _ = _in_backward(lambda ps: entry.build_torch(ps, lr=entry.test_lr), theirs)
    start = [p.detach().clone() for p in ours]
    for t in range(STEPS):
        _loss(ours, t).backward()
        _loss(theirs, t).backward()
    assert all(p.grad is None for p in ours)  # the hook stepped and freed every grad
    assert _rel(ours, start) > 1e-3
    assert _rel(ours, theirs) <= 1e-12
    for p, q in zip(ours, theirs):
        for key, value in opt_theirs[q].state[q].items():
            torch.testing.assert_close(opt_ours[p].state[p][key], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_apply_optimizer_in_backward_matches_torch(name):
    """``torch.distributed.optim._apply_optimizer_in_backward`` with an optimlab class."""
    from torch.distributed.optim import _apply_optimizer_in_backward

    from optimlab.registry import lookup

    entry = lookup(name)
    ours, theirs = _params(), _params()
    _apply_optimizer_in_backward(entry.cls, ours, {"lr": entry.test_lr, "momentum": 0.9}
                                 if name == "sgd" else {"lr": entry.test_lr})
    _apply_optimizer_in_backward(entry.torch_cls, theirs, {"lr": entry.test_lr, "momentum": 0.9}
                                 if name == "sgd" else {"lr": entry.test_lr})
    start = [p.detach().clone() for p in ours]
    for t in range(STEPS):
        _loss(ours, t).backward()
        _loss(theirs, t).backward()
    assert _rel(ours, start) > 1e-3
    assert _rel(ours, theirs) <= 1e-12
    assert all(type(o) is entry.cls for p in ours for o in p._in_backward_optimizers)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adamw", "nadam", "rmsprop"])
def test_swalr_matches_torch(name):
    """SWA: ``SWALR`` anneals to ``swa_lr`` after the first phase, ``AveragedModel`` averages."""
    from torch.optim.swa_utils import SWALR, AveragedModel

    from optimlab.registry import lookup

    entry = lookup(name)
    runs = []
    for build in (entry.build, entry.build_torch):
        model = torch.nn.Linear(4, 3).double()
        torch.nn.init.constant_(model.weight, 0.1)
        torch.nn.init.constant_(model.bias, -0.2)
        opt = build(model.parameters(), lr=entry.test_lr)
        swa_model, sched = AveragedModel(model), SWALR(opt, swa_lr=entry.test_lr / 4, anneal_epochs=5)
        gen = torch.Generator().manual_seed(0)
        lrs = []
        for t in range(60):
            x, y = torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randn(8, 3, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            (model(x) - y).square().mean().backward()
            opt.step()
            if t >= 20:
                swa_model.update_parameters(model)
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((list(swa_model.parameters()), lrs))
    (ours, lrs_ours), (theirs, lrs_theirs) = runs
    assert lrs_ours == lrs_theirs and lrs_ours[-1] == pytest.approx(entry.test_lr / 4)
    assert _rel(ours[:2], theirs[:2]) <= 1e-12


# ------------------------------------------------------- DDP bucket views, FSDP1: 2 ranks
WRAPPED = ["adamw", "sgd", "momentum", "nadam", "adagrad", "rmsprop", "adamax", "radam"]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                               torch.nn.Tanh(), torch.nn.Linear(32, 4))


def _wrap(model, wrapper):
    if wrapper == "ddp-bucket-view":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, gradient_as_bucket_view=True)
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, device_id=torch.device("cpu"),
                                    use_orig_params=wrapper == "fsdp1-orig-params")


def _wrapped_worker(rank, world, out_dir, wrapper):
    from optimlab.registry import lookup

    errors = {}
    for name in WRAPPED:
        entry = lookup(name)
        ours, theirs = _wrap(_model(), wrapper), _wrap(_model(), wrapper)
        opt = entry.build(ours.parameters(), lr=1e-2, weight_decay=0.01)
        ref = entry.build_torch(theirs.parameters(), lr=1e-2, weight_decay=0.01)
        gen = torch.Generator().manual_seed(rank)
        start = [p.detach().clone() for p in ours.parameters()]
        for _ in range(20):
            x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen)
            for model, o in ((ours, opt), (theirs, ref)):
                o.zero_grad()
                (model(x) - y).square().mean().backward()
                o.step()
        moved = _rel(list(ours.parameters()), start)
        errors[name] = (_rel(list(ours.parameters()), list(theirs.parameters())), moved,
                        sorted(opt.state_dict()["state"]) == sorted(ref.state_dict()["state"]))
    if rank == 0:
        torch.save(errors, f"{out_dir}/errors.pt")


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["ddp-bucket-view", "fsdp1", "fsdp1-orig-params"])
def test_data_parallel_wrappers_match_torch(wrapper, tmp_path):
    """float32, 20 steps on rank-dependent data, every class in WRAPPED: ≤ 1e-5 relative
    (rank 0's local parameters: DDP's full copy, FSDP1's flat shard or its views)."""
    run_group(_wrapped_worker, tmp_path, wrapper)
    errors = torch.load(tmp_path / "errors.pt", weights_only=True)
    assert sorted(errors) == sorted(WRAPPED)
    for name, (err, moved, same_keys) in errors.items():
        assert moved > 1e-3, name
        assert err <= 1e-5, (name, err)
        assert same_keys, name
