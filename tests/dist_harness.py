"""Start a real 2-process gloo group on 127.0.0.1 (torch.multiprocessing, spawn) for the
distributed tests, and bring rank 0's results back through a file.

``run_group(worker, out_dir, *args)`` calls ``worker(rank, world_size, out_dir, *args)`` in
every process after ``init_process_group``; the worker writes what the test checks under
``out_dir`` (``torch.save``; read back with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
#: seconds a collective may wait before the group gives up (a rank died or diverged)
COLLECTIVE_TIMEOUT = 120
#: seconds the whole group may run; generous: CI machines are shared
GROUP_TIMEOUT = 900


def full(t) -> torch.Tensor:
    """``t``'s whole value on every rank (a plain tensor: detached), gathered by one plain
    c10d ``all_reduce`` of the zero-padded shards.

    Not ``DTensor.full_tensor()``: its functional collectives (``all_gather_into_tensor``
    and ``wait_tensor``) on gloo, right after an FSDP2 backward, crash a rank about once in
    600 trainings of 20 steps ("double free or corruption", or SIGSEGV in ``redispatch``),
    with no optimizer step at all (torch 2.13; ``full_tensor`` alone on DTensors that FSDP2
    did not make: 0 in 120,000 calls)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(t, DTensor):
        return t.detach()
    mesh = t.device_mesh
    if mesh.size() != dist.get_world_size() or any(p.is_partial() for p in t.placements):
        return t.full_tensor()
    shape, offset = compute_local_shape_and_global_offset(t.shape, mesh, t.placements)
    out = torch.zeros(t.shape, dtype=t.dtype)
    coordinate = mesh.get_coordinate()
    first = all(c == 0 for c, p in zip(coordinate, t.placements) if p.is_replicate())
    if first:  # a replicated dimension adds its copy once
        out[tuple(slice(o, o + n) for o, n in zip(offset, shape))] = t.to_local().detach()
    dist.all_reduce(out)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, worker, port, out_dir, args):
    faulthandler.enable(all_threads=True)   # a rank that aborts prints where it was
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
    try:
        worker(rank, WORLD_SIZE, out_dir, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_group(worker, out_dir, *args) -> None:
    """Run ``worker`` on 2 gloo ranks; raise if a rank fails or the group overruns."""
    # the children import the test helpers by module name
    tests = os.path.dirname(os.path.abspath(__file__))
    if tests not in sys.path:
        sys.path.insert(0, tests)
    context = mp.start_processes(_entry, args=(worker, _free_port(), str(out_dir), args),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + GROUP_TIMEOUT
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{worker.__name__} did not finish within {GROUP_TIMEOUT} s")
