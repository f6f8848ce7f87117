"""Gradient descent on five points, as in the article — with optimlab.SGD.

Data X = [1, 2, 3, 4, 5], Y = [2, 3, 5, 7, 11]; model Y_hat = theta0 + theta1 * X;
loss MSE = (1/n) sum (Y - Y_hat)^2, whose gradient is

    d theta0 = (-2/n) sum (Y - Y_hat),    d theta1 = (-2/n) sum X (Y - Y_hat).

Start at theta0 = theta1 = 0, learning rate 0.01, 1000 iterations. The article's NumPy loop
and optimlab.SGD (float64, gradient from autograd) give the same theta.

    python examples/gradient_descent_5_points.py
"""

from __future__ import annotations

import numpy as np
import torch

import optimlab

X = [1.0, 2.0, 3.0, 4.0, 5.0]
Y = [2.0, 3.0, 5.0, 7.0, 11.0]


def numpy_gradient_descent(x=X, y=Y, lr=0.01, iterations=1000):
    """The article's loop: returns (theta0, theta1)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    theta0 = theta1 = 0.0
    for _ in range(iterations):
        y_hat = theta0 + theta1 * x
        d_theta0 = (-2 / n) * np.sum(y - y_hat)
        d_theta1 = (-2 / n) * np.sum(x * (y - y_hat))
        theta0 -= lr * d_theta0
        theta1 -= lr * d_theta1
    return float(theta0), float(theta1)


def optimlab_gradient_descent(x=X, y=Y, lr=0.01, iterations=1000):
    """The same descent with optimlab.SGD on the MSE loss: returns (theta0, theta1)."""
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.float64)
    theta0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    theta1 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = optimlab.SGD([theta0, theta1], lr=lr)
    for _ in range(iterations):
        opt.zero_grad()
        loss = torch.mean((y - (theta0 + theta1 * x)) ** 2)
        loss.backward()
        opt.step()
    return theta0.item(), theta1.item()


def main():
    ours = optimlab_gradient_descent()
    article = numpy_gradient_descent()
    print(f"{'':8}{'optimlab.SGD':>22}{'NumPy loop':>22}")
    for name, a, b in zip(("theta0", "theta1"), ours, article):
        print(f"{name:8}{a:22.15f}{b:22.15f}")
    return ours, article


if __name__ == "__main__":
    main()
