"""Adafactor on FSDP2: the traced graph on local shards, its sums completed over the ranks
(:mod:`optimlab.fused.passes_shards`: the generated C passes, and without them batched torch
ops), equal to torch.optim.Adafactor on the unsharded model, with the optimizer state still DTensor for ``state_dict`` and DCP (a checkpoint saved
and loaded on the 2 ranks continues the trajectory).

A real 2-rank gloo group. The FSDP2 model has an odd row count (33, split 17/16), a weight of
one column (6, 1), a weight of one row (1, 33), whose rows are on one rank only, and a
bias of one element (a (0,) shard on rank 1); the (1, 33) weight takes the reference
path, every other param the shard path. LAMB, LARS and Prodigy (norms and dot products
only) take it for every param; Muon (Newton-Schulz) takes the reference path. Tensor
parallelism's layouts (a matrix sharded by columns, one replicated) take it too.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from dist_harness import full, run_group

STEPS = 20


def _model(shard: bool):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.Tanh(), torch.nn.Linear(33, 1),
                            torch.nn.Tanh(), torch.nn.Linear(1, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    if shard:
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(m)
    return m


def _full(t):
    return full(t)


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _train(ours, opt, theirs, ref, rank, steps, seed=0):
    """``steps`` steps of both: FSDP's averaged grads, and the same grads in full for ``ref``."""
    gen = torch.Generator().manual_seed(100 * seed + rank)
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen)
        opt.zero_grad()
        (ours(x) - y).square().mean().backward()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            b.grad = _full(a.grad).clone()
        opt.step()
        if ref is not None:
            ref.step()


def _worker(rank, world, out_dir):
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.state_dict as dsd

    import optimlab
    from optimlab.fused import passes_shards

    ours, theirs = _model(True), _model(False)
    opt = optimlab.Adafactor(ours.parameters(), lr=1e-2, weight_decay=0.01)
    ref = torch.optim.Adafactor(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    _train(ours, opt, theirs, ref, rank, STEPS)
    err = max(_rel(_full(a), b.detach()) for a, b in zip(ours.parameters(), theirs.parameters()))
    steps = {opt.state[a]["step"].item() for a in ours.parameters()}
    (layout,) = passes_shards._layouts[opt].values()  # one group, one phase
    on_shards = sorted(tuple(p.shape) for b in layout.buckets for p in b.params)
    compiled = layout.compiled  # params stepped by the generated C passes on their shards
    calls = _all_reduce_calls(opt)
    routes = {"torch ops": _run_with(rank, compiled=False),  # no C compiler: torch ops
              "no all_reduce": _run_with(rank, all_reduce=lambda *a, **k: None)}
    state_types = sorted({type(v).__name__ for a in ours.parameters() for k, v in opt.state[a].items()
                          if k != "step"})

    # state_dict, and get_optimizer_state_dict saved with DCP: a fresh optimizer loaded from
    # it (dcp.load + set_optimizer_state_dict) continues as this one does
    sd = opt.state_dict()
    osd = dsd.get_optimizer_state_dict(ours, opt)
    checkpoint = os.path.join(out_dir, "checkpoint")
    dcp.save({"optim": osd}, checkpoint_id=checkpoint)
    opt.zero_grad()
    again = optimlab.Adafactor(ours.parameters(), lr=1e-2, weight_decay=0.01)
    loaded = {"optim": dsd.get_optimizer_state_dict(ours, again)}
    dcp.load(loaded, checkpoint_id=checkpoint)
    dsd.set_optimizer_state_dict(ours, again, loaded["optim"])
    before = [p.detach().to_local().clone() for p in ours.parameters()]
    _train(ours, opt, theirs, None, rank, 3, seed=1)
    after = [_full(p).detach().clone() for p in ours.parameters()]
    with torch.no_grad():
        for p, b in zip(ours.parameters(), before):
            p.to_local().copy_(b)
    _train(ours, again, theirs, None, rank, 3, seed=1)
    resumed = max(_rel(_full(p), a) for p, a in zip(ours.parameters(), after))
    others = {name: _other(name, rank) for name in OTHERS}
    placed = _placements_other_than_fsdp()
    # every param alone (the large-param path: views, each output written in place)
    from optimlab.fused import passes_shards_c, passes_torch

    passes_torch.GROUP_NUMEL = 1
    passes_shards_c.BLOCK = 32  # the sums of g^2 of a matrix over blocks of a row or two
    placed_alone = _placements_other_than_fsdp()  # three params of a shape, each alone
    ours, theirs = _model(True), _model(False)
    opt = optimlab.Adafactor(ours.parameters(), lr=1e-2, weight_decay=0.01)
    ref = torch.optim.Adafactor(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    _train(ours, opt, theirs, ref, rank, STEPS)
    alone = max(_rel(_full(a), b.detach()) for a, b in zip(ours.parameters(), theirs.parameters()))
    if rank == 0:
        torch.save({"err": err, "steps": sorted(steps), "on_shards": on_shards, "state_types": state_types,
                    "sd_states": len(sd["state"]), "osd_states": len(osd["state"]), "resumed": resumed,
                    "others": others, "alone": alone, "placed": placed, "placed_alone": placed_alone,
                    "compiled": compiled, "calls": calls, "routes": routes},
                   os.path.join(out_dir, "results.pt"))
    dist.barrier()


def _all_reduce_calls(opt) -> int:
    """How many ``all_reduce`` calls one step of ``opt`` makes."""
    calls, real = [], dist.all_reduce
    dist.all_reduce = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        opt.step()
    finally:
        dist.all_reduce = real
    return len(calls)


def _run_with(rank, compiled=True, all_reduce=None) -> float:
    """The 20-step error vs torch from fresh models, with the C passes switched on or off,
    or ``dist.all_reduce`` replaced."""
    import optimlab
    from optimlab.fused import passes

    ours, theirs = _model(True), _model(False)
    opt = optimlab.Adafactor(ours.parameters(), lr=1e-2, weight_decay=0.01)
    ref = torch.optim.Adafactor(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    real = dist.all_reduce
    passes.compiled, dist.all_reduce = compiled, all_reduce or real
    try:
        _train(ours, opt, theirs, ref, rank, STEPS)
    finally:
        passes.compiled, dist.all_reduce = True, real
    return max(_rel(_full(a), b.detach()) for a, b in zip(ours.parameters(), theirs.parameters()))


def _placements_other_than_fsdp():
    """Tensor parallelism's layouts: a matrix sharded by columns (its row means span the
    ranks), one sharded by rows, one replicated, with plain optimlab on the full tensors;
    three params of each (stacked: the buckets' several-param paths)."""
    import optimlab
    from optimlab.fused import passes_shards
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    gen = torch.Generator().manual_seed(0)
    shapes, places = [(6, 5), (7, 3), (4, 9), (5,)] * 3, [[Shard(1)], [Shard(0)], [Replicate()], [Shard(0)]] * 3
    x0 = [torch.randn(s, generator=gen) for s in shapes]
    ours = [torch.nn.Parameter(distribute_tensor(x.clone(), mesh, pl)) for x, pl in zip(x0, places)]
    theirs = [torch.nn.Parameter(x.clone()) for x in x0]
    opt = optimlab.Adafactor(ours, lr=1e-2, weight_decay=0.1)
    ref = optimlab.Adafactor(theirs, lr=1e-2, weight_decay=0.1)
    for _ in range(STEPS):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, g, pl in zip(ours, grads, places):
            p.grad = distribute_tensor(g.clone(), mesh, pl)
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        opt.step()
        ref.step()
    err = max(_rel(full(a), b.detach()) for a, b in zip(ours, theirs))
    (layout,) = passes_shards._layouts[opt].values()
    return err, sum(len(b.params) for b in layout.buckets)


#: other rules with reductions: LAMB, LARS (norms only) and Prodigy's estimate (dot
#: products) on the shards, equal to their unsharded run; Muon's Newton-Schulz has no local
#: form: the reference path, no crash
OTHERS = ("lamb", "lars", "prodigy", "muon", "prodigy-foreach")


def _other(name, rank):
    import optimlab
    from optimlab.fused import passes_shards

    ours, theirs = _model(True), _model(False)
    pick = (lambda m: [p for p in m.parameters() if p.dim() == 2]) if name == "muon" else (
        lambda m: list(m.parameters()))
    name, _, foreach = name.partition("-")  # foreach=True: the reference path on the DTensors
    flags = {"foreach": True} if foreach else {}
    opt = optimlab.create(name, pick(ours), lr=1e-2, **flags)
    ref = optimlab.create(name, pick(theirs), lr=1e-2, **flags)
    start = [_full(p).detach().clone() for p in pick(ours)]
    _train(ours, opt, theirs, ref, rank, STEPS)
    err = max(_rel(_full(a), b.detach()) for a, b in zip(pick(ours), pick(theirs)))
    moved = min((_full(a) - b).abs().max().item() for a, b in zip(pick(ours), start))
    layouts = passes_shards._layouts.get(opt, {})
    return err, moved, {phase: sum(len(b.params) for b in layouts[(g, phase)].buckets)
                        for g, phase in layouts}


@pytest.mark.slow
def test_adafactor_on_fsdp2_shards_matches_torch(tmp_path):
    run_group(_worker, tmp_path)
    r = torch.load(tmp_path / "results.pt", weights_only=True)
    assert r["err"] <= 1e-5, r["err"]
    assert r["alone"] <= 1e-5, r["alone"]
    assert r["placed"][0] <= 1e-5 and r["placed"][1] == 12, r["placed"]
    assert r["placed_alone"][0] <= 1e-5 and r["placed_alone"][1] == 12, r["placed_alone"]
    # the generated C passes stepped every param on its shards; their sums over the ranks
    # take one all_reduce call per round for the whole model, whatever the number of params:
    # the column sums and mean(R) of every matrix; RMS(p) and RMS(U) of every param; and a
    # third for the (6, 1) weight, whose row_var has its shape, so that R comes out of a
    # pass and mean(R) waits for it. Without them the step is wrong.
    assert r["compiled"] == 7, r["compiled"]
    assert r["calls"] == 3, r["calls"]
    assert r["routes"]["torch ops"] <= 1e-5, r["routes"]
    assert r["routes"]["no all_reduce"] > 1e-3, r["routes"]
    assert r["steps"] == [float(STEPS)]
    # every param but the (1, 33) weight stepped on its shards
    assert r["on_shards"] == sorted([(33, 16), (33,), (1,), (6, 1), (6,), (4, 6), (4,)]), r["on_shards"]
    assert r["state_types"] == ["DTensor"]
    assert r["sd_states"] == r["osd_states"] == 8
    assert r["resumed"] <= 1e-6, r["resumed"]
    for name, phases in (("lamb", {"update": 8}), ("lars", {"update": 8}),
                         ("prodigy", {"estimate": 8})):  # (Prodigy's update: element-wise)
        err, moved, on_shards = r["others"][name]
        assert err <= 1e-5 and moved > 0 and on_shards == phases, (name, err, moved, on_shards)
    _, moved, on_shards = r["others"]["muon"]
    assert moved > 0 and on_shards == {"update": 0}
    err, moved, on_shards = r["others"]["prodigy-foreach"]  # its dot products on uneven shards
    assert err <= 1e-5 and moved > 0 and on_shards == {}, (err, moved, on_shards)


def _one_rank_without_a_compiler(rank, world, out_dir):
    """Rank 1 has no C compiler (as on a node without cc); rank 0 builds the C passes into its
    own fresh kernel cache. Each rule with reductions, 20 steps, against its unsharded run."""
    import warnings

    os.environ["OPTIMLAB_CACHE"] = os.path.join(out_dir, f"cache{rank}")
    if rank == 1:
        os.environ["OPTIMLAB_CC"] = os.environ["OPTIMLAB_CXX"] = "/bin/false"
    import optimlab
    from optimlab.fused import passes_shards

    out = {}
    for name in ("adafactor", "lamb", "lars", "prodigy"):
        ours, theirs = _model(True), _model(False)
        opt = optimlab.create(name, list(ours.parameters()), lr=1e-2)
        ref = optimlab.create(name, list(theirs.parameters()), lr=1e-2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(ours, opt, theirs, ref, rank, STEPS)
        err = max(_rel(_full(a), b.detach()) for a, b in zip(ours.parameters(), theirs.parameters()))
        routes = {b.c_route for layout in passes_shards._layouts[opt].values() for b in layout.buckets}
        out[name] = (err, sorted(routes), any("another rank cannot run them" in str(w.message) for w in caught))
    torch.save(out, os.path.join(out_dir, f"no_compiler_{rank}.pt"))


@pytest.mark.slow
def test_a_rank_without_a_compiler_takes_every_rank_off_the_c_passes(tmp_path):
    """The C passes and the torch route complete their sums by different ``all_reduce``
    calls: a rank whose C build fails (no compiler, an unwritable cache) used to take the
    torch route alone, and gloo aborted both processes. Now the ranks agree: every rank takes
    the torch route, rank 0 warns why, and the step is right."""
    run_group(_one_rank_without_a_compiler, tmp_path)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"no_compiler_{rank}.pt", weights_only=True)
        for name, (err, routes, warned) in r.items():
            assert err <= 1e-5 and routes == [False], (rank, name, err, routes)
            assert warned == (rank == 0), (rank, name)


# ------------------------------------------------------------------ the plan, no process group
def _program(name, shape):
    import optimlab
    from optimlab.fused import passes
    from optimlab.rules.base import hyperparameters

    opt = optimlab.create(name, [torch.nn.Parameter(torch.zeros(shape))])
    p = opt.param_groups[0]["params"][0]
    h = hyperparameters(opt.param_groups[0], opt.defaults)
    state = opt.init_state(p, h)
    layout = {}
    for key in opt.rule.tensors(h):
        v = state.get(key)
        layout[key] = None if v is None else "E" if v.shape == p.shape else "T"
        if layout[key] == "T":
            layout[("shape", key)] = tuple(v.shape)
    return passes.trace_program(opt.rule, "update", h, shape, torch.float32, layout, cut=False)


def test_plan_completes_the_sums_that_span_ranks():
    """Adafactor on rows sharded over mesh dim 0: RMS(p), RMS(U), the column means and
    mean(R) are partial sums; the row means are not; a (1, m) weight or Muon's Newton-Schulz
    has no local form; an unsharded param needs no sum."""
    from optimlab import _reduce
    from optimlab.fused import shard_layout

    prog = _program("adafactor", (6, 4))
    sums = shard_layout.plan(prog, (6, 4), ((0, (0,)),))
    nodes = {n.index: n for n in prog.graph.nodes}
    kinds = sorted(nodes[i].op if nodes[i].op != "call" else nodes[i].fn[0].__name__ for i in sums.mesh_dims)
    assert kinds == ["mean", "mean_square", "red_sumsq", "red_sumsq"]
    assert all(ks == (0,) for ks in sums.mesh_dims.values())
    means = {nodes[i].fn[0]: v for i, v in sums.means.items()}
    assert means == {_reduce.mean_square: ((-2,), 6.0), _reduce.mean: ((-2,), 6.0)}
    assert shard_layout.plan(_program("adafactor", (1, 4)), (1, 4), ((0, (0,)),)) is None
    assert shard_layout.plan(_program("muon", (4, 4)), (4, 4), ((0, (0,)),)) is None
    unsharded = shard_layout.plan(prog, (6, 4), ())
    assert unsharded.mesh_dims == {} and unsharded.means == {}
