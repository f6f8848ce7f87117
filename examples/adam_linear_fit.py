"""Fit y = 3x + 2 + noise with optimlab.Adam, as in the article.

np.random.seed(0); X = rand(100, 1); y = 3 X + 2 + 0.5 randn(100, 1). A one-feature
linear model trained full-batch on the MSE with Adam (lr 0.1) recovers w ~ 3, b ~ 2 up to
the noise, i.e. the least-squares fit.

    python examples/adam_linear_fit.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import optimlab


def make_data():
    np.random.seed(0)
    x = np.random.rand(100, 1)
    y = 3 * x + 2 + 0.5 * np.random.randn(100, 1)
    return x, y


def least_squares(x, y):
    """Closed-form fit (w, b) of y = w x + b."""
    a = np.hstack([x, np.ones_like(x)])
    (w, b), *_ = np.linalg.lstsq(a, y[:, 0], rcond=None)
    return float(w), float(b)


def fit(lr=0.1, steps=500, seed=0):
    """Train nn.Linear(1, 1) with optimlab.Adam; returns (w, b, final MSE)."""
    x, y = (torch.tensor(a, dtype=torch.float64) for a in make_data())
    torch.manual_seed(seed)
    model = nn.Linear(1, 1).double()
    opt = optimlab.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model.weight.item(), model.bias.item(), loss.item()


def main():
    w, b, loss = fit()
    w_ls, b_ls = least_squares(*make_data())
    print(f"optimlab.Adam : w = {w:.4f}, b = {b:.4f}  (MSE {loss:.4f})")
    print(f"least squares : w = {w_ls:.4f}, b = {b_ls:.4f}")
    print("true          : w = 3, b = 2")
    return w, b


if __name__ == "__main__":
    main()
