"""FSDP2 on CPU: optimlab's step vs torch.optim's best on the same shards.

Two processes over gloo on 127.0.0.1; a model of N x Linear(256, 256) (default 200), every
layer ``fully_shard``-ed, so every parameter is a DTensor sharded over the two ranks.
For every registry class at default flags: torch's for-loop, foreach and (where torch has
it) fused step, and optimlab's default step, timed in interleaved rounds on the same
grads (medians of ``--reps`` steps per round, ``--rounds`` rounds, rank 0's clock); then
20 steps from equal parameters with a fresh grad per step, and the largest relative
difference between optimlab's and torch's parameters (float32).

    python benchmarks/fsdp_step.py [--layers 200] [--reps 20] [--rounds 3] [--only sgd,adam] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from step_speed import machine  # noqa: E402

import optimlab  # noqa: E402
from optimlab.registry import ENTRIES  # noqa: E402


def _model(layers: int, width: int):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def _set_grads(params, step: int):
    for i, p in enumerate(params):
        g = torch.randn(p.to_local().shape, generator=torch.Generator().manual_seed(1000 * step + i))
        p.grad = torch.distributed.tensor.DTensor.from_local(g * 1e-2, p.device_mesh, p.placements,
                                                             shape=p.shape, stride=p.stride())


def _implementations(entry, params):
    out = {"optimlab": entry.build(params, lr=1e-3)}
    for name, extra in (("torch for-loop", {"foreach": False}), ("torch foreach", {"foreach": True}),
                        ("torch fused", {"fused": True})):
        try:
            opt = entry.build_torch(params, lr=1e-3, **extra)
            opt.step()
            out[name] = opt
        except (RuntimeError, TypeError, ValueError):
            pass
    return out


def _time(opt, reps: int) -> float:
    dist.barrier()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _error(entry, layers, width) -> float:
    ours, theirs = _model(layers, width), _model(layers, width)
    opt = entry.build(list(ours.parameters()), lr=1e-3)
    ref = entry.build_torch(list(theirs.parameters()), lr=1e-3)
    for step in range(20):
        _set_grads(list(ours.parameters()), step)
        _set_grads(list(theirs.parameters()), step)
        opt.step()
        ref.step()
    err = 0.0
    for a, b in zip(ours.parameters(), theirs.parameters()):
        a, b = a.to_local(), b.to_local()
        err = max(err, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return err


def _worker(rank, world, port, args, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)  # one core per rank: the two ranks share this machine
    try:
        rows = []
        for entry in ENTRIES:
            if args.only and entry.name not in args.only:
                continue
            model = _model(args.layers, args.width)
            params = list(model.parameters())
            _set_grads(params, 0)
            impls = _implementations(entry, params)
            for opt in impls.values():  # warm-up: state, kernels, plans
                opt.step()
            times = {name: [] for name in impls}
            for _ in range(args.rounds):
                for name, opt in impls.items():
                    times[name].append(_time(opt, args.reps))
            rows.append((entry.name, {k: statistics.median(v) for k, v in times.items()},
                         _error(entry, args.layers, args.width)))
            if rank == 0:
                print(_row(*rows[-1]), flush=True)
        result[rank] = rows
    finally:
        dist.destroy_process_group()


def _row(name, t, err) -> str:
    best = min(v for k, v in t.items() if k != "optimlab")
    cells = [f"{t[k] * 1e3:.2f}" if k in t else "–"
             for k in ("optimlab", "torch for-loop", "torch foreach", "torch fused")]
    return f"| {name} | " + " | ".join(cells) + f" | {best / t['optimlab']:.2f}x | {err:.1e} |"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated registry names (default: all)")
    ap.add_argument("--out", default=None, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    args.only = [n for n in args.only.split(",") if n]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with mp.get_context("spawn").Manager() as manager:
        result = manager.dict()
        mp.start_processes(_worker, args=(2, _free_port(), args, result), nprocs=2, join=True,
                           start_method="spawn")
        rows = result[0]
    lines = [f"## FSDP2 on CPU: {args.layers} x Linear({args.width}, {args.width}), 2 gloo ranks",
             "",
             f"{started}; {machine()}; one thread per rank. `python benchmarks/fsdp_step.py` "
             f"(medians of {args.reps} steps x {args.rounds} interleaved rounds, rank 0). "
             "Max rel err: optimlab vs torch after 20 steps, float32.",
             "",
             "| optimizer | optimlab ms | torch for-loop ms | torch foreach ms | torch fused ms "
             "| vs torch best | max rel err |",
             "|---|---|---|---|---|---|---|"]
    lines += [_row(*row) for row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
