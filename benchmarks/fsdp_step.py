"""FSDP2 on CPU: optimlab's step vs torch.optim's best on the same shards.

Two processes over gloo on 127.0.0.1; a model of N x Linear(256, 256) (default 200), or of
GPT-2 small's 148 parameter shapes (``--shapes gpt2``, 124M parameters), every module
``fully_shard``-ed, so every parameter is a DTensor sharded over the two ranks. For every
registry class with a torch.optim twin, at default flags: torch's for-loop, foreach and
(where torch has it) fused step, and optimlab's default step, timed in interleaved rounds
on the same grads (``--reps`` steps per round timed to the slowest rank, median of ``--rounds`` rounds, rank 0's
clock); then 20 steps from equal parameters with a fresh grad per step, and the largest
relative difference between optimlab's and torch's parameters (float32). After each class,
an in-place probe ``a.add_(b)`` on flat tensors of a rank's local size, on both ranks at
once, measures the bandwidth the step can reach: each time is also given as a fraction of
that roofline (the bytes the rule must move on the shards / the probe's bandwidth).

Memory: one implementation's optimizer is alive at a time. The params and grads are shared
by all of them; each round times each implementation in its own block (params restored
from one saved copy, a fresh optimizer, two warm-up steps, the timed steps, then freed), the
order rotated from round to round; the 20-step check keeps optimlab's end point, frees its
optimizer, then runs torch's. Each row gives each rank's peak RSS for that class
(``ru_maxrss``, reset per class through ``/proc/self/clear_refs``); on GPT-2's shapes
(62M float32 elements a rank) that is params + grads + the saved copy + one optimizer's
state and temporaries.

Where torch.optim raises on DTensor shards (Rprop, Adafactor), torch is timed on plain
tensors of the same local shapes and the same grads, and its 20-step trajectory is run on
the unsharded model with the full grads; the row says so (``torch on`` column).

    python benchmarks/fsdp_step.py [--shapes linear|gpt2] [--layers 200] [--reps 20] [--rounds 3]
                                   [--only sgd,adam] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import os
import resource
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from markdown_section import replace_section  # noqa: E402
from step_speed import gpt2_small, machine, must_touch  # noqa: E402

import optimlab  # noqa: E402,F401
from optimlab.registry import TORCH_ENTRIES  # noqa: E402

_IMPLS = (("torch for-loop", {"foreach": False}), ("torch foreach", {"foreach": True}),
          ("torch fused", {"fused": True}))


class _Leaf(torch.nn.Module):
    """One parameter of a given shape (GPT-2's shapes, each its own FSDP unit)."""

    def __init__(self, shape):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(shape) * 0.02)


class _Shapes(torch.nn.Module):
    """GPT-2 small's parameters as leaves (``fully_shard`` wants a module with ``forward``)."""

    def __init__(self, made=lambda leaf: leaf):
        super().__init__()
        self.leaves = torch.nn.ModuleList([made(_Leaf(s)) for s in gpt2_small()])

    def forward(self, x):  # never called: the benchmark sets grads directly
        raise NotImplementedError


def _model(args, shard: bool = True):
    """The model from seed 0; ``shard``: each layer ``fully_shard``-ed as soon as it is made
    (the same values: sharding draws no random numbers), so the whole unsharded model never
    exists on a rank (500 MB for GPT-2's shapes)."""
    from torch.distributed.fsdp import fully_shard

    def made(layer):
        if shard:
            fully_shard(layer)
        return layer

    torch.manual_seed(0)
    if args.shapes == "gpt2":
        model = _Shapes(made)
    else:
        model = torch.nn.Sequential(*[made(torch.nn.Linear(args.width, args.width)) for _ in range(args.layers)])
    if shard:
        fully_shard(model)
    return model


def _set_grads(params, step: int):
    for i, p in enumerate(params):
        p.grad = None  # the old grad goes before the new one is drawn
        g = torch.randn(p.to_local().shape, generator=torch.Generator().manual_seed(1000 * step + i)).mul_(1e-2)
        p.grad = torch.distributed.tensor.DTensor.from_local(g, p.device_mesh, p.placements,
                                                             shape=p.shape, stride=p.stride())


def _build(entry, name, params):
    """A fresh optimizer: optimlab's default step, or one of torch's implementations."""
    if name == "optimlab":
        return entry.build(params, lr=1e-3)
    return entry.build_torch(params, lr=1e-3, **dict(_IMPLS)[name])


def _restore(params, start) -> None:
    """Every implementation starts from the same parameters: ``start``'s local shards."""
    with torch.no_grad():
        for p, s in zip(params, start):
            _local(p).copy_(s)


def _local(p):
    return p.to_local().detach() if isinstance(p, torch.distributed.tensor.DTensor) else p.detach()


def _free() -> None:
    """Drop what the last block left (optimizers and FSDP modules hold reference cycles) and
    hand freed heap pages back to the OS, so the next block starts from the shared tensors."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _implementations(entry, params, start):
    """The torch implementations that step on the DTensor shards; where none does, those that
    step on plain tensors sharing the shards' memory, with the local grads. Each is tried
    alone (built, one step, freed) on the smallest param of each rank (1-D, 2-D: Adafactor
    factors only matrices), so a refusal costs neither time nor memory (torch's fused SGD on
    DTensors allocates ~1 GB on GPT-2's shapes before it raises).
    ``(names, params torch steps, whether those are the shards)``."""
    probe = {}
    for p in sorted(params, key=torch.Tensor.numel):
        probe.setdefault(p.dim(), p)
    for sharded in (True, False):
        theirs = params
        if not sharded:
            theirs = [_local(p).requires_grad_() for p in params]
            for q, p in zip(theirs, params):
                q.grad = p.grad.to_local()
        tried = [theirs[i] for i, p in enumerate(params) if any(p is q for q in probe.values())]
        names = []
        for name, _ in _IMPLS:
            try:
                _build(entry, name, tried).step()
                names.append(name)
            except (RuntimeError, TypeError, ValueError, NotImplementedError):
                pass
            _free()
            _restore(params, start)
        if names:
            return names, theirs, sharded
    return [], params, True


def _time(opt, reps: int) -> float:
    """Wall time of one step of the whole job: ``reps`` steps from a barrier to the barrier
    after the slowest rank's last step, divided by ``reps``. In training the next forward's
    all-gather waits for the slowest rank; timing rank 0's steps alone (as this benchmark did
    until 2026-12-03) let an implementation without collectives run while the other rank
    idled (torch's Adafactor on local tensors read 36 ms a step then, 60 ms with both ranks
    stepping)."""
    dist.barrier()
    t = time.perf_counter()
    for _ in range(reps):
        opt.step()
    dist.barrier()
    return (time.perf_counter() - t) / reps


def _timings(entry, args, params, start):
    """Median step time of every implementation, one implementation alive at a time: each
    round times each implementation in its own block (parameters restored to ``start``, a
    fresh optimizer, two warm-up steps that create its state and plans, ``--reps`` timed steps, freed),
    the order rotated from round to round; the same grads throughout."""
    names, theirs, sharded = _implementations(entry, params, start)
    names = ["optimlab"] + names
    times = {name: [] for name in names}
    nbytes = None
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _restore(params, start)
            opt = _build(entry, name, params if name == "optimlab" else theirs)
            for _ in range(2):  # warm-up: state (lazily created state takes a step), kernels, plans
                opt.step()
            if name == "optimlab" and nbytes is None:
                nbytes = sum(must_touch(opt, g) for g in opt.param_groups)
            times[name].append(_time(opt, args.reps))
            del opt
            _free()
    return {k: statistics.median(v) for k, v in times.items()}, sharded, nbytes


def _probe(nelem: int, args) -> float:
    """The bandwidth probe on every rank at once: ``a.add_(b)`` on flat tensors of the rank's
    number of local elements (12 bytes each), timed as a step (:func:`_time`), median of
    ``--rounds``; run after the class's block, so its memory is not in the class's peak RSS."""
    class Probe:
        a, b = torch.randn(nelem), torch.randn(nelem)

        def step(self):
            self.a.add_(self.b)

    probe = Probe()
    probe.step()
    t = statistics.median(_time(probe, args.reps) for _ in range(args.rounds))
    del probe, Probe
    _free()
    return t


def _error(entry, args, params, start, sharded: bool) -> float:
    """Largest relative difference after 20 steps from ``start`` with a fresh grad per step
    (rank 0's figure): torch on the same shards, or (``sharded`` False) on the unsharded
    model with the full grads, built on rank 0 only (the other ranks take part in the
    gathers). One optimizer alive at a time: optimlab's end point is kept, then torch runs."""
    rank0 = dist.get_rank() == 0
    _restore(params, start)
    opt = entry.build(params, lr=1e-3)
    for step in range(20):
        _set_grads(params, step)
        opt.step()
    with torch.no_grad():  # full_tensor is a collective: every rank gathers, rank 0 keeps
        ours = ([_local(p).clone() for p in params] if sharded
                else [t if rank0 else None for t in map(torch.distributed.tensor.DTensor.full_tensor, params)])
    del opt
    _free()
    theirs = None
    if sharded:
        _restore(params, start)
        theirs = params
    elif rank0:
        theirs = list(_model(args, shard=False).parameters())
    ref = entry.build_torch(theirs, lr=1e-3) if theirs is not None else None
    for step in range(20):
        _set_grads(params, step)
        if not sharded:
            for i, p in enumerate(params):
                full = p.grad.full_tensor()
                if theirs is not None:
                    theirs[i].grad = full
        if ref is not None:
            ref.step()
    if theirs is None:
        return 0.0
    err = 0.0
    for a, b in zip(ours, theirs):
        b = _local(b)
        err = max(err, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return err


def _reset_peak() -> bool:
    """Restart the kernel's peak-RSS count of this process (Linux: ``/proc/self/clear_refs``),
    so ``ru_maxrss`` then reports the peak of one class; False: it counts since the start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(rank, world, port, args, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)  # one core per rank: the two ranks share this machine
    try:
        rows = []
        for entry in TORCH_ENTRIES:
            if args.only and entry.name not in args.only:
                continue
            t0, per_class = time.perf_counter(), _reset_peak()
            model = _model(args)
            params = list(model.parameters())
            start = [_local(p).clone() for p in params]
            _set_grads(params, 0)
            t1 = time.perf_counter()
            times, sharded, nbytes = _timings(entry, args, params, start)
            t2 = time.perf_counter()
            err = _error(entry, args, params, start, sharded)
            t3 = time.perf_counter()
            n_local = sum(_local(p).numel() for p in params)
            local_bytes = nbytes * n_local / sum(p.numel() for p in params)  # sharded evenly
            del model, params, start
            _free()
            peaks = [None] * world
            dist.all_gather_object(peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
            t_probe = _probe(n_local, args)
            roofline = {k: local_bytes * t_probe / (12 * n_local * t) for k, t in times.items()}
            rows.append((entry.name, times, err, sharded, peaks, roofline, 12 * n_local * world / t_probe / 1e9))
            if rank == 0:
                print(_row(*rows[-1]), flush=True)
                print(f"fsdp_step: {entry.name} {time.perf_counter() - t0:.0f} s (setup {t1 - t0:.0f}, timing "
                      f"{t2 - t1:.0f}, 20-step check {t3 - t2:.0f}); peak RSS "
                      + ", ".join(f"rank {i} {gb:.2f} GB" for i, gb in enumerate(peaks))
                      + ("" if per_class else " (since the start: no /proc/self/clear_refs)"),
                      file=sys.stderr, flush=True)
        result[rank] = rows
    finally:
        dist.destroy_process_group()


def _row(name, t, err, sharded, peaks, roofline, bw) -> str:
    best = min((k for k in t if k != "optimlab"), key=t.get)
    cells = [f"{t[k] * 1e3:.2f}" if k in t else "–"
             for k in ("optimlab", "torch for-loop", "torch foreach", "torch fused")]
    where = "shards" if sharded else "plain local tensors (raises on DTensor)"
    return (f"| {name} | " + " | ".join(cells) + f" | {where} | {t[best] / t['optimlab']:.2f}x | "
            f"{roofline['optimlab']:.2f} / {roofline[best]:.2f} | {bw:.1f} | {err:.1e} | "
            + " / ".join(f"{gb:.1f}" for gb in peaks) + " |")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=("linear", "gpt2"), default="linear")
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated registry names (default: all)")
    ap.add_argument("--out", default=None, help="write the table as this shape's section of this markdown file")
    ap.add_argument("--note", default="", help="a sentence added under the table (the machine's load)")
    args = ap.parse_args(argv)
    args.only = [n for n in args.only.split(",") if n]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load, t0 = os.getloadavg(), time.perf_counter()
    with mp.get_context("spawn").Manager() as manager:
        result = manager.dict()
        mp.start_processes(_worker, args=(2, _free_port(), args, result), nprocs=2, join=True,
                           start_method="spawn")
        rows = result[0]
    if args.shapes == "gpt2":
        title, tag = "GPT-2 small's 148 parameter shapes (124M)", "gpt2"
        command = f"python benchmarks/fsdp_step.py --shapes gpt2 --reps {args.reps} --rounds {args.rounds}"
    else:
        title, tag = f"{args.layers} x Linear({args.width}, {args.width})", f"linear{args.layers}x{args.width}"
        command = f"python benchmarks/fsdp_step.py --reps {args.reps} --rounds {args.rounds}"
    if args.only:
        command += " --only " + ",".join(args.only)
    ratios = [min(v for k, v in t.items() if k != "optimlab") / t["optimlab"] for _, t, *_ in rows]
    below = [r[0] for r, x in zip(rows, ratios) if x < 1.0]
    lines = [f"<!-- fsdp-step {tag}: begin -->",
             f"## FSDP2 on CPU: {title}, 2 gloo ranks",
             "",
             f"{started}; {machine()}; one thread per rank; {(time.perf_counter() - t0) / 60:.1f} min, load "
             f"average {load[0]:.1f} before / {os.getloadavg()[0]:.1f} after (shared machine). `{command}` "
             f"({args.reps} steps timed from a barrier to the slowest rank's end, median of {args.rounds} interleaved rounds). `vs torch best`: "
             "fastest torch.optim implementation / optimlab (>1: optimlab faster). Max rel err: optimlab vs "
             "torch after 20 steps, float32. `torch on`: where torch.optim raises on DTensor shards, torch is "
             "timed on plain tensors of the same local shapes (and its 20 steps run on the unsharded model "
             "with the full grads). `peak RSS`: the class's peak resident memory of each rank "
             "(`ru_maxrss`), one implementation's optimizer alive at a time. `roofline`: the bytes the rule "
             "must move on a rank's shards per step (`step_speed.must_touch`) / the bandwidth of an in-place "
             "probe `a.add_(b)` on flat tensors of the rank's local size, run on both ranks at once and timed "
             "the same way after the class's rounds / the step's time, for optimlab and for torch's best "
             "(1.0: at the probe's bandwidth); `probe GB/s`: both ranks together.",
             "",
             "| optimizer | optimlab ms | torch for-loop ms | torch foreach ms | torch fused ms | torch on "
             "| vs torch best | roofline optimlab / torch best | probe GB/s | max rel err | peak RSS GB rank 0 / 1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(*row) for row in rows]
    lines += ["", f"vs torch best: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x; "
              f"{len(below)} of {len(rows)} rows below 1.00x" + (f" ({', '.join(below)})." if below else ".")]
    if args.note:
        lines += ["", args.note]
    lines.append(f"<!-- fsdp-step {tag}: end -->")
    text = "\n".join(lines)
    print(text)
    if args.out:
        replace_section(args.out, lines[0], lines[-1], text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
