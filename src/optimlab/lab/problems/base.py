"""The problem interface: everything the runner needs to train and score one model.

A problem is deterministic given a seed: ``model(seed)`` gives the same initial weights
and ``batch(step, seed)`` the same batch order for every optimizer, which is what makes
the comparison fair. The data set itself is fixed (bundled or generated from a fixed
seed) and split once into train / validation / test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Problem:
    """A trainable problem.

    name, kind, description: identity (kind is one of KINDS).
    default_steps: the step budget when the user gives none.
    model: seed -> nn.Module with seeded initial weights.
    batch: (step, seed) -> training batch (any tuple the loss understands).
    loss: (model, batch) -> scalar loss tensor to minimise.
    evaluate: (model, split) -> {"loss": float, "metric": float | None}, split in
        {"train", "val", "test"}; for problems without splits all three are the same.
    metric_name: e.g. "accuracy" (higher is better), or None.
    optimum: the best achievable train loss where known (2-D minima, closed-form
        least squares, a precisely solved convex optimum, a Markov chain's entropy
        rate), so the report can show the gap; None otherwise.
    target: a train-loss target for "steps to target", or None.
    surface: for 2-D problems, (x, y) -> loss as NumPy-vectorised function, with
        ``bounds`` ((xmin, xmax), (ymin, ymax)) for the contour plot and ``minima``.
    evaluate_loss: optional (model, split) -> float, the same loss as ``evaluate`` but
        without the metric; the runner uses it where the metric is not kept (the train
        split at intermediate evaluation points). None: ``evaluate`` is used.
    gpus: GPUs one run wants (the problem puts its model and batches on them); the Ray
        executor reserves them for each task. 0 for CPU problems.
    sizes: rows per split and per mini-batch, e.g. {"train": 1078, "val": 359, "test":
        360, "batch": 64} ("batch" None: full batch), for the report's protocol; None
        for problems without a data set (2-D functions, the noisy quadratic).
    """

    name: str
    kind: str
    description: str
    default_steps: int
    model: Callable[[int], torch.nn.Module]
    batch: Callable[[int, int], tuple]
    loss: Callable[[torch.nn.Module, tuple], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, str], dict]
    metric_name: str | None = None
    optimum: float | None = None
    target: float | None = None
    surface: Callable | None = None
    bounds: tuple | None = None
    minima: tuple = field(default_factory=tuple)
    evaluate_loss: Callable[[torch.nn.Module, str], float] | None = None
    gpus: float = 0.0
    sizes: dict | None = None

    @property
    def is_2d(self) -> bool:
        return self.surface is not None


KINDS = ("2d", "quadratic", "least-squares", "logistic", "sparse", "mlp", "cnn", "char-lm", "vae")
