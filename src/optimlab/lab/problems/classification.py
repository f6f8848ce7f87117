"""Classifiers on scikit-learn's bundled 8x8 digits (1797 images, 10 classes).

digits-logistic: convex multinomial logistic regression with a small L2 penalty, whose
optimum is solved once per process with float64 L-BFGS. digits-mlp(-dropout) and
digits-cnn: small networks. Features are standardised per pixel with train statistics;
the split is a fixed 60/20/20.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ._common import cached_value, solve_convex, split_indices
from ._supervised import accuracy, supervised_problem
from .base import Problem

SPLIT_SEED = 4321
L2 = 1e-3            # small ridge: makes the logistic optimum unique and finite
HIDDEN = 128
DROPOUT = 0.5
CHANNELS = (8, 16)


def _load_digits() -> tuple:
    """scikit-learn's bundled digits (X float64 (1797, 64), y int): read from its CSV
    directly when the file is where scikit-learn keeps it (importing sklearn costs
    seconds in every worker process), else through ``load_digits``."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")   # locates the package without importing
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            data = np.loadtxt(path, delimiter=",")
            if data.shape == (1797, 65):
                return data[:, :-1], data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


@lru_cache(maxsize=1)
def digits_data() -> dict:
    """{split: (X float32 (n, 64) standardised, y int64)}."""
    x, y = _load_digits()
    train, val, test = split_indices(len(y), SPLIT_SEED)
    mu, sd = x[train].mean(0), x[train].std(0)
    sd = np.where(sd > 0, sd, 1.0)   # a few border pixels are constant in train
    return {split: (torch.tensor((x[idx] - mu) / sd, dtype=torch.float32),
                    torch.tensor(y[idx], dtype=torch.int64))
            for split, idx in (("train", train), ("val", val), ("test", test))}


def classify_accuracy(m, x, y) -> float:
    return accuracy(m(x), y)


def logistic_objective(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy + L2/2 ||W||^2 (bias not penalised), on any split."""
    return F.cross_entropy(m(x), y) + 0.5 * L2 * (m.weight ** 2).sum()


@lru_cache(maxsize=1)
def logistic_optimum() -> float:
    """The train objective at its minimum, solved in float64 (cached per process)."""
    x, y = digits_data()["train"]
    lin = torch.nn.Linear(x.shape[1], 10, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    x = x.double()
    return cached_value(
        ("digits-logistic optimum v1", L2, torch.__version__, x.numpy().tobytes(),
         y.numpy().tobytes()),
        lambda: solve_convex(lambda: logistic_objective(lin, x, y),
                             list(lin.parameters()))[0])


def digits_logistic_problem() -> Problem:
    optimum = logistic_optimum()
    return supervised_problem(
        "digits-logistic", "logistic",
        f"Multinomial logistic regression on 8x8 digits (64 standardised pixels), L2 "
        f"{L2:g}, mini-batches of 64; convex, optimum solved with float64 L-BFGS.",
        digits_data(), lambda: torch.nn.Linear(64, 10), logistic_objective,
        batch_size=64, default_steps=300, metric=classify_accuracy,
        metric_name="accuracy", optimum=optimum, target=optimum + 0.01)


class MLP(torch.nn.Module):
    """64 -> HIDDEN -> 10 with ReLU; ``mask`` (pre-scaled dropout mask) if training."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(64, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, 10)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.hidden(x))
        if mask is not None:
            h = h * mask
        return self.out(h)


class SmallCNN(torch.nn.Module):
    """Two 3x3 conv + 2x2 max-pool stages (8x8 -> 4x4 -> 2x2), then a linear layer.
    Few channels on purpose: convolutions are the slowest thing in the suite on CPU."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, CHANNELS[0], 3, padding=1)
        self.conv2 = torch.nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, padding=1)
        self.fc = torch.nn.Linear(CHANNELS[1] * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(-1, 1, 8, 8)
        h = max_pool2(torch.relu(self.conv1(h)))
        h = max_pool2(torch.relu(self.conv2(h)))
        return self.fc(h.flatten(1))


def max_pool2(h: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2; same values as F.max_pool2d(h, 2) but ~10x faster on
    CPU for these tiny maps (max_pool2d dominated the CNN's run time)."""
    return torch.maximum(torch.maximum(h[:, :, 0::2, 0::2], h[:, :, 0::2, 1::2]),
                         torch.maximum(h[:, :, 1::2, 0::2], h[:, :, 1::2, 1::2]))


def cross_entropy(m, x, y, *extra) -> torch.Tensor:
    return F.cross_entropy(m(x, *extra), y)


def dropout_mask(gen: torch.Generator, n: int) -> tuple:
    # Inverted dropout: keep with prob 1 - p and rescale, so evaluation needs no mask.
    keep = torch.rand(n, HIDDEN, generator=gen) >= DROPOUT
    return (keep.float() / (1.0 - DROPOUT),)


def digits_mlp_problem(dropout: bool = False) -> Problem:
    name = "digits-mlp-dropout" if dropout else "digits-mlp"
    extra = f", dropout {DROPOUT:g} on the hidden layer" if dropout else ""
    return supervised_problem(
        name, "mlp",
        f"MLP 64-{HIDDEN}-10 (ReLU) on 8x8 digits{extra}, mini-batches of 64.",
        digits_data(), MLP, cross_entropy, batch_size=64, default_steps=300,
        metric=classify_accuracy, metric_name="accuracy",
        batch_extra=dropout_mask if dropout else None)


def digits_cnn_problem() -> Problem:
    return supervised_problem(
        "digits-cnn", "cnn",
        f"Small CNN (conv {CHANNELS[0]} - pool - conv {CHANNELS[1]} - pool - linear) on 8x8 "
        "digits, "
        "mini-batches of 64.",
        digits_data(), SmallCNN, cross_entropy, batch_size=64, default_steps=300,
        metric=classify_accuracy, metric_name="accuracy")


FACTORIES = {
    "digits-logistic": digits_logistic_problem,
    "digits-mlp": digits_mlp_problem,
    "digits-mlp-dropout": lambda: digits_mlp_problem(dropout=True),
    "digits-cnn": digits_cnn_problem,
}
