"""Two-dimensional test functions with known minima, for trajectories and contour plots.

The model is :class:`Point`, a module whose only parameter ``xy`` (float64, shape (2,))
is the current position; the runner records trajectories from it. Gradients are exact
(batch is the empty tuple) and all splits report the same loss.

Seeds: seed 0 starts exactly at the published start point; other seeds add a small
fixed Gaussian jitter (same for every optimizer), so seed reruns are not identical.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ._common import check_split, generator, salt
from .base import Problem


class Point(torch.nn.Module):
    """One 2-vector parameter ``xy``; ``forward()`` returns it."""

    def __init__(self, start):
        super().__init__()
        self.xy = torch.nn.Parameter(torch.as_tensor(start, dtype=torch.float64).clone())

    def forward(self) -> torch.Tensor:
        return self.xy


# Each function takes (x, y, xp) with xp = numpy or torch, so one formula serves both the
# differentiable loss and the vectorised contour surface.
def rosenbrock(x, y, xp):
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def beale(x, y, xp):
    return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2
            + (2.625 - x + x * y ** 3) ** 2)


def rastrigin(x, y, xp):
    two_pi = 2 * math.pi
    return 20 + x ** 2 - 10 * xp.cos(two_pi * x) + y ** 2 - 10 * xp.cos(two_pi * y)


def saddle(x, y, xp):
    return x ** 2 - y ** 2


KAPPA = 100.0


def ill_conditioned(x, y, xp):
    return 0.5 * (x ** 2 + KAPPA * y ** 2)


def make_2d(name: str, f: Callable, start, bounds, minima, optimum, target, description,
            default_steps: int = 500, jitter: tuple = (0.01, 0.01)) -> Problem:
    """A Problem for ``f`` started at ``start``; ``jitter`` is the per-axis standard
    deviation of the start perturbation used for seeds other than 0."""
    start = tuple(float(v) for v in start)
    key = salt(name)

    def model(seed: int) -> Point:
        xy = torch.tensor(start, dtype=torch.float64)
        if seed != 0:
            noise = torch.randn(2, generator=generator(key, seed), dtype=torch.float64)
            xy = xy + noise * torch.tensor(jitter, dtype=torch.float64)
        return Point(xy)

    def batch(step: int, seed: int) -> tuple:
        return ()

    def loss(m: Point, b: tuple) -> torch.Tensor:
        xy = m()
        return f(xy[0], xy[1], torch)

    def evaluate(m: Point, split: str) -> dict:
        check_split(split)
        with torch.no_grad():
            return {"loss": float(loss(m, ())), "metric": None}

    def surface(x, y):
        return f(np.asarray(x, dtype=float), np.asarray(y, dtype=float), np)

    return Problem(name=name, kind="2d", description=description,
                   default_steps=default_steps, model=model, batch=batch, loss=loss,
                   evaluate=evaluate, metric_name=None, optimum=optimum, target=target,
                   surface=surface, bounds=bounds, minima=tuple(minima))


def rosenbrock_problem() -> Problem:
    return make_2d("rosenbrock", rosenbrock, (-1.2, 1.0), ((-2.0, 2.0), (-1.0, 3.0)),
                   [(1.0, 1.0)], 0.0, 1e-3,
                   "Rosenbrock's banana valley from the classic start (-1.2, 1); min 0 at (1, 1).")


def rosenbrock_far_problem() -> Problem:
    return make_2d("rosenbrock-far", rosenbrock, (-2.0, 2.0), ((-2.5, 2.0), (-1.0, 5.0)),
                   [(1.0, 1.0)], 0.0, 1e-3,
                   "Rosenbrock from the far start (-2, 2); min 0 at (1, 1).")


def beale_problem() -> Problem:
    return make_2d("beale", beale, (1.0, 1.5), ((-0.5, 4.0), (-1.0, 2.0)),
                   [(3.0, 0.5)], 0.0, 1e-3,
                   "Beale's function from (1, 1.5): flat plateaus and steep walls; min 0 at (3, 0.5).")


def rastrigin_problem() -> Problem:
    return make_2d("rastrigin", rastrigin, (-2.6, 2.3), ((-5.12, 5.12), (-5.12, 5.12)),
                   [(0.0, 0.0)], 0.0, 1e-3,
                   "Rastrigin from (-2.6, 2.3): a lattice of local minima around the global "
                   "min 0 at (0, 0); reaching the target needs to escape them.")


def saddle_problem() -> Problem:
    # Unbounded below, so no optimum; the target -1 means "escaped the saddle"
    # (|y| > 1 once x has settled), so steps-to-target measures the escape time.
    # Loss keeps decreasing without bound after escape: that is not divergence.
    return make_2d("saddle", saddle, (1.0, 1e-3), ((-1.5, 1.5), (-2.0, 2.0)),
                   [], None, -1.0,
                   "Saddle x^2 - y^2 started at (1, 1e-3), just off the stable axis. Unbounded "
                   "below (optimum None); target -1 = escaped the saddle.",
                   jitter=(0.01, 1e-4))


def ill_conditioned_problem() -> Problem:
    return make_2d("ill-conditioned", ill_conditioned, (-2.0, 0.4), ((-2.5, 2.5), (-1.0, 1.0)),
                   [(0.0, 0.0)], 0.0, 1e-3,
                   f"Ill-conditioned quadratic (x^2 + {KAPPA:g} y^2) / 2 (condition number "
                   f"{KAPPA:g}) from (-2, 0.4); min 0 at (0, 0).",
                   # 200 steps: SGD at its best stable lr (< 2 / KAPPA) has crossed most of
                   # the ravine and momentum has settled, at ~0.1 s per run.
                   default_steps=200)


FACTORIES = {
    "rosenbrock": rosenbrock_problem,
    "rosenbrock-far": rosenbrock_far_problem,
    "beale": beale_problem,
    "rastrigin": rastrigin_problem,
    "saddle": saddle_problem,
    "ill-conditioned": ill_conditioned_problem,
}
