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
