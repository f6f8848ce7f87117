"""One builder for every data-set problem: fixed splits, seeded mini-batches, evaluation.

``objective(model, X, y, *extra)`` is the mean loss over the rows given; training uses
it on a mini-batch (plus per-step ``extra`` tensors such as dropout masks or VAE noise,
drawn from the batch seed), evaluation on a whole split (plus fixed ``eval_extra``).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._common import DrawCache, EpochSampler, check_split, generator, salt, seeded_module
from .base import Problem

Splits = dict  # {"train" | "val" | "test": (X, y)}


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction correct; binary if ``logits`` is 1-D (threshold 0), else argmax."""
    pred = (logits > 0).to(y.dtype) if logits.dim() == 1 else logits.argmax(dim=1)
    return float((pred == y).float().mean())


class _SharedForward:
    """``model`` whose latest output is reused when it is called again on the very same
    input tensors (by identity): evaluation computes a split's loss and its metric from
    one forward pass instead of two. Attributes (e.g. ``weight``) read through."""

    def __init__(self, model: torch.nn.Module):
        self._model, self._args, self._out = model, None, None

    def __call__(self, *args):
        same = self._args is not None and len(args) == len(self._args) and \
            all(a is b for a, b in zip(args, self._args))
        if not same:
            self._args, self._out = args, self._model(*args)
        return self._out

    def __getattr__(self, name):
        return getattr(self._model, name)


def supervised_problem(
    name: str, kind: str, description: str, data: Splits,
    build: Callable[[], torch.nn.Module],
    objective: Callable[..., torch.Tensor],
    *, batch_size: int | None, default_steps: int,
    metric: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], float] | None = None,
    metric_name: str | None = None,
    batch_extra: Callable[[torch.Generator, int], tuple] | None = None,
    eval_extra: Callable[[str, int], tuple] | None = None,
    optimum: float | None = None, target: float | None = None,
) -> Problem:
    """A Problem over fixed splits.

    batch_size None means full-batch (deterministic) training. ``batch_extra(gen, n)``
    returns extra tensors for a batch of ``n`` rows from a generator seeded by
    (problem, seed, step); ``eval_extra(split, n)`` the fixed extras for evaluation.
    """
    key = salt(name)
    x_train, y_train = data["train"]
    n_train = x_train.shape[0]
    sampler = EpochSampler(n_train, batch_size, key) if batch_size else None
    # The extras of (seed, step) are drawn once per process (see DrawCache).
    extras = DrawCache(lambda seed, step, n: batch_extra(generator(key, seed, step, 1), n)) \
        if batch_extra else None

    def model(seed: int) -> torch.nn.Module:
        return seeded_module(build, key, seed)

    def batch(step: int, seed: int) -> tuple:
        if sampler is None:
            xb, yb = x_train, y_train
        else:
            idx = sampler(step, seed)   # index_select: the same rows as x[idx], faster
            xb, yb = x_train.index_select(0, idx), y_train.index_select(0, idx)
        extra = extras(seed, step, xb.shape[0]) if extras else ()
        return (xb, yb, *extra)

    def loss(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return objective(m, *b)

    def evaluate_loss(m: torch.nn.Module, split: str) -> float:
        check_split(split)
        x, y = data[split]
        extra = eval_extra(split, x.shape[0]) if eval_extra else ()
        with torch.no_grad():
            return float(objective(m, x, y, *extra))

    def evaluate(m: torch.nn.Module, split: str) -> dict:
        if metric is None:
            return {"loss": evaluate_loss(m, split), "metric": None}
        m = _SharedForward(m)   # the loss and the metric share one forward pass
        value = evaluate_loss(m, split)
        x, y = data[split]
        with torch.no_grad():
            return {"loss": value, "metric": float(metric(m, x, y))}

    return Problem(name=name, kind=kind, description=description,
                   default_steps=default_steps, model=model, batch=batch, loss=loss,
                   evaluate=evaluate, metric_name=metric_name, optimum=optimum,
                   target=target, evaluate_loss=evaluate_loss,
                   sizes={**{k: int(x.shape[0]) for k, (x, _) in data.items()},
                          "batch": batch_size})
