"""Least-squares problems with closed-form optima, so the report can show the exact gap.

five-points: the 5-point data set of the optimizer-tutorial articles (x = 1..5,
y = 2, 3, 5, 7, 11), a line theta0 + theta1 x fitted by MSE from theta = 0, full batch.
diabetes: scikit-learn's bundled diabetes data, standardised, linear model, mini-batches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ._common import split_indices
from ._supervised import supervised_problem
from .base import Problem

FIVE_X = (1.0, 2.0, 3.0, 4.0, 5.0)
FIVE_Y = (2.0, 3.0, 5.0, 7.0, 11.0)
SPLIT_SEED = 1234


def mse(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((m(x).squeeze(-1) - y) ** 2).mean()


def least_squares_mse(x: np.ndarray, y: np.ndarray) -> float:
    """The minimum of mean((a + x b - y)^2), solved in float64."""
    design = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)
    return float(np.mean((design @ coef - y) ** 2))


def _zero_line() -> torch.nn.Module:
    line = torch.nn.Linear(1, 1)
    torch.nn.init.zeros_(line.weight)
    torch.nn.init.zeros_(line.bias)
    return line


def five_points_problem() -> Problem:
    x = torch.tensor(FIVE_X).unsqueeze(1)
    y = torch.tensor(FIVE_Y)
    optimum = least_squares_mse(x.numpy(), y.numpy())   # 0.56 (theta = (-1.0, 2.2))
    data = {split: (x, y) for split in ("train", "val", "test")}
    return supervised_problem(
        "five-points", "least-squares",
        "Line theta0 + theta1 x fitted by MSE to the articles' 5 points (x = 1..5, "
        "y = 2, 3, 5, 7, 11) from theta = 0, full batch; optimum 0.56 at (-1.0, 2.2).",
        data, _zero_line, mse, batch_size=None, default_steps=300,
        optimum=optimum, target=optimum + 1e-3)


@lru_cache(maxsize=1)
def diabetes_data() -> dict:
    """Standardised (train statistics) features and target, fixed 60/20/20 split."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    train, val, test = split_indices(len(y), SPLIT_SEED)
    mu, sd = x[train].mean(0), x[train].std(0)
    y_mu, y_sd = y[train].mean(), y[train].std()
    out = {}
    for split, idx in (("train", train), ("val", val), ("test", test)):
        out[split] = (torch.tensor((x[idx] - mu) / sd, dtype=torch.float32),
                      torch.tensor((y[idx] - y_mu) / y_sd, dtype=torch.float32))
    return out


def diabetes_problem() -> Problem:
    data = diabetes_data()
    x, y = data["train"]
    optimum = least_squares_mse(x.double().numpy(), y.double().numpy())
    return supervised_problem(
        "diabetes", "least-squares",
        "Linear regression on scikit-learn's diabetes data (10 standardised features, "
        "standardised target), mini-batches of 32; optimum = closed-form train MSE.",
        data, lambda: torch.nn.Linear(10, 1), mse, batch_size=32, default_steps=300,
        optimum=optimum, target=optimum + 0.01)


FACTORIES = {"five-points": five_points_problem, "diabetes": diabetes_problem}
