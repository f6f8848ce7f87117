"""Shared plumbing for the problems: seeds, seeded modules, batch samplers, splits.

Every random choice a problem makes is drawn from a generator seeded from a tuple of
integers (a problem-specific salt, the run seed, the step), never from the global RNG,
so batches are the same for every optimizer and nothing leaks into the caller's state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

SPLITS = ("train", "val", "test")


def salt(name: str) -> int:
    """A stable integer for a string (Python's hash() is randomised per process)."""
    return zlib.crc32(name.encode())


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(*keys: int) -> torch.Generator:
    """A torch CPU generator seeded from ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def seeded_module(build: Callable[[], torch.nn.Module], *keys: int) -> torch.nn.Module:
    """Build a module with torch's default initialisers under a seed derived from
    ``keys``, inside ``fork_rng`` so the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*keys))
        return build()


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def split_indices(n: int, seed: int, fractions=(0.6, 0.2, 0.2)) -> tuple[np.ndarray, ...]:
    """A fixed random train / val / test partition of range(n)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


class EpochSampler:
    """Mini-batch indices for ``(step, seed)``: a fresh permutation of the training set
    per (seed, epoch), cut into ``n // batch_size`` batches (the remainder is dropped,
    so every batch has the same size). Pure function of (step, seed)."""

    def __init__(self, n: int, batch_size: int, key: int):
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
        self.n, self.batch_size, self.key = n, batch_size, key
        self.steps_per_epoch = n // batch_size
        # Per-instance cache: one permutation per (seed, epoch). A sweep trains many
        # runs per seed, each through every epoch of its budget (~20 at the default
        # budgets), so enough are kept for a few seeds' whole budgets (~10 kB each).
        self._perm = lru_cache(maxsize=256)(self._make_perm)

    def _make_perm(self, seed: int, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator(self.key, seed, epoch))

    def __call__(self, step: int, seed: int) -> torch.Tensor:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.batch_size
        return self._perm(seed, epoch)[start:start + self.batch_size]


class DrawCache:
    """``draw(*key)`` memoised per process: the per-step random draws of a problem (a
    VAE's noise, a noisy gradient, dropout masks), which are a pure function of
    (seed, step) and so the same for every optimizer and lr of a sweep. Drawing them
    (seeding a generator from a SeedSequence, then sampling) costs ~10-20% of a small
    run; from the cache they are the very same tensors, so results are bit-identical.

    ``draw`` returns a tuple of tensors that callers must not modify in place. At most
    ``max_bytes`` are kept; past that, draws are made afresh (and not kept).
    """

    def __init__(self, draw: Callable[..., tuple], max_bytes: int = 64 << 20):
        self.draw, self.max_bytes, self.nbytes = draw, max_bytes, 0
        self._kept: dict = {}

    def __call__(self, *key) -> tuple:
        found = self._kept.get(key)
        if found is None:
            found = self.draw(*key)
            size = sum(t.numel() * t.element_size() for t in found)
            if self.nbytes + size <= self.max_bytes:
                self._kept[key] = found
                self.nbytes += size
        return found


def solve_convex(objective: Callable[[], torch.Tensor], params: list[torch.Tensor],
                 max_rounds: int = 50, grad_tol: float = 1e-8) -> tuple[float, float]:
    """Minimise a smooth convex float64 objective with L-BFGS to high precision.

    Returns (objective value, final gradient max-norm). The rounds restart L-BFGS's
    internal iteration cap until the gradient is tiny, which is what makes the value a
    trustworthy optimum to within ~1e-10 for strongly convex objectives.
    """
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=500, history_size=50,
                            tolerance_grad=grad_tol, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    # These small problems run many times faster on one thread than on a contended pool.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gmax = float("inf")
        for _ in range(max_rounds):
            opt.step(closure)
            closure()
            gmax = max(float(p.grad.abs().max()) for p in params)
            if gmax < grad_tol:
                break
        with torch.no_grad():
            value = float(objective())
    finally:
        torch.set_num_threads(threads)
    return value, gmax


def cached_value(key_parts, compute: Callable[[], float]) -> float:
    """``compute()``, memoised on disk under a hash of ``key_parts`` (bytes or str).

    For costly, deterministic constants such as a convex problem's optimum: every worker
    process of a comparison builds the problems, and would otherwise solve it again. The
    file holds one JSON number in ``$OPTIMLAB_CACHE/values`` (default
    ``~/.cache/optimlab/values``); anything unreadable is recomputed. Include in the key
    everything the value depends on (data, constants, library versions).
    """
    h = hashlib.sha256()
    for part in key_parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    root = os.environ.get("OPTIMLAB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "optimlab")
    path = os.path.join(root, "values", h.hexdigest()[:32] + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        if isinstance(value, float) and math.isfinite(value):
            return value
    except (OSError, ValueError):
        pass
    value = float(compute())
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, path)   # atomic: concurrent workers never read half a file
    except OSError:
        pass
    return value
