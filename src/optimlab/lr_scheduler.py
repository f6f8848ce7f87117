"""A ``torch.optim.lr_scheduler.LRScheduler`` that runs a closed-form schedule.

    lr_g(t) = base_lr_g * schedule_g(t)

for each param group ``g``, where ``t`` is ``last_epoch`` (the number of ``step()`` calls since
construction) and ``base_lr_g`` is the group's ``initial_lr``. The value at ``t`` never
depends on the previous lr, so ``step(epoch)``, resuming and other code writing
``group["lr"]`` cannot make it drift, unlike torch's chainable schedulers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["LRScheduler"]

# Attributes that are code, not state: never put in ``state_dict()``.
_NOT_STATE = ("optimizer", "schedules")


class LRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Set each group's lr to ``base_lr * schedule(step)``; ``schedule`` from :mod:`optimlab.schedules`.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (optimlab's or torch's).
        schedule: a callable ``int -> float`` multiplier, or a list of them, one per group.
        last_epoch: as in torch; ``-1`` starts fresh (and sets lr to ``base_lr * schedule(0)``).

    ``state_dict()`` holds only numbers (``last_epoch``, ``base_lrs``, ...), never the schedule,
    so it loads with ``torch.load(weights_only=True)``; rebuild the scheduler with the same
    schedule and call ``load_state_dict``.

    >>> sched = optimlab.LRScheduler(opt, optimlab.schedules.cosine(10_000, floor=0.1))
    >>> for batch in data: ...; opt.step(); sched.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer,
                 schedule: Callable[[int], float] | Sequence[Callable[[int], float]],
                 last_epoch: int = -1) -> None:
        n_groups = len(optimizer.param_groups)
        if callable(schedule):
            schedules = [schedule] * n_groups
        else:
            schedules = list(schedule)
            if len(schedules) != n_groups:
                raise ValueError(f"Expected {n_groups} schedules (one per param group), "
                                 f"got {len(schedules)}")
            if not all(callable(s) for s in schedules):
                raise TypeError("every schedule must be callable (int -> float)")
        self.schedules = schedules
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """``base_lr * schedule(last_epoch)`` for each group (closed form)."""
        return [base_lr * s(self.last_epoch) for s, base_lr in zip(self.schedules, self.base_lrs)]

    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict:
        """The scheduler's numbers: everything in ``__dict__`` but the optimizer and schedules."""
        return {key: value for key, value in self.__dict__.items() if key not in _NOT_STATE}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`; the schedules are the ones given to the constructor."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _NOT_STATE})
