"""A 100-D noisy ill-conditioned quadratic, the "noisy quadratic model" of deep learning.

f(w) = 1/2 w^T H w with H = Q diag(lam) Q^T, Q a fixed random rotation and ``lam`` a
power law (a few large eigenvalues, most of them small, as measured for deep nets).
Stochastic gradients are H w + xi with xi ~ N(0, sigma^2 H): the noise covariance is
proportional to the Hessian (Zhang et al. 2019), and xi is the batch, a pure function of
(step, seed). The loss reported by ``evaluate`` is the noise-free f, optimum 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ._common import DrawCache, check_split, generator, salt
from .base import Problem

DIM = 100
LAMBDA_MAX = 10.0
POWER = 1.5          # lam_i = LAMBDA_MAX * i^-POWER: condition number 100^1.5 = 1000
NOISE = 0.5          # sigma: gradient-noise scale (like 1/sqrt(batch size))
DATA_SEED = 20240


class Vector(torch.nn.Module):
    """One parameter vector ``w``."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self) -> torch.Tensor:
        return self.w


@lru_cache(maxsize=1)
def spectrum() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eigenvalues, H, noise map M) with xi = M z, z ~ N(0, I)."""
    lam = LAMBDA_MAX * np.arange(1, DIM + 1, dtype=np.float64) ** -POWER
    # QR of a Gaussian matrix (sign-fixed) is a uniformly random rotation.
    q, r = np.linalg.qr(np.random.default_rng(DATA_SEED).standard_normal((DIM, DIM)))
    q = q * np.sign(np.diag(r))
    h = (q * lam) @ q.T
    h = 0.5 * (h + h.T)
    noise_map = NOISE * q * np.sqrt(lam)
    as32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as32(lam), as32(h), as32(noise_map)


def noisy_quadratic_problem() -> Problem:
    key = salt("noisy-quadratic")
    _, h, noise_map = spectrum()

    def model(seed: int) -> Vector:
        return Vector(torch.randn(DIM, generator=generator(key, 0, seed)))

    def draw(seed: int, step: int) -> tuple:
        z = torch.randn(DIM, generator=generator(key, 1, seed, step))
        return (noise_map @ z,)

    noise = DrawCache(draw)   # the same noise for every optimizer: drawn once per process

    def batch(step: int, seed: int) -> tuple:
        return noise(seed, step)

    def loss(m: Vector, b: tuple) -> torch.Tensor:
        w = m()
        (xi,) = b
        return 0.5 * w @ (h @ w) + xi @ w

    def evaluate(m: Vector, split: str) -> dict:
        check_split(split)
        with torch.no_grad():
            w = m()
            return {"loss": float(0.5 * w @ (h @ w)), "metric": None}

    return Problem(
        name="noisy-quadratic", kind="quadratic",
        description=(f"{DIM}-D quadratic, Hessian eigenvalues {LAMBDA_MAX:g} i^-{POWER:g} "
                     f"(condition number {100 ** POWER:g}) under a random rotation; gradient "
                     f"noise N(0, {NOISE:g}^2 H). Loss = noise-free f, optimum 0."),
        default_steps=500, model=model, batch=batch, loss=loss, evaluate=evaluate,
        metric_name=None, optimum=0.0, target=0.5)


FACTORIES = {"noisy-quadratic": noisy_quadratic_problem}
