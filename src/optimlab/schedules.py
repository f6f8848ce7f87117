"""Learning-rate schedules in closed form: ``step -> multiplier`` of the base learning rate.

A schedule is a pure callable ``s(t) -> float``: the learning rate of optimizer step ``t``
(0-based: ``t`` optimizer steps have already been taken) is ``base_lr * s(t)``. Schedules
hold no state, so calling one twice gives the same value, and they are frozen dataclasses,
so they compare, print and pickle. Use them with :class:`optimlab.LRScheduler`, or call them
directly. ``t`` counts like ``last_epoch`` in ``torch.optim.lr_scheduler``: the value after
``t`` calls of ``scheduler.step()`` is ``base_lr * s(t)``.

>>> s = warmup(cosine(900, floor=0.01), 100)
>>> sched = optimlab.LRScheduler(opt, s)          # or by_name("warmup_cosine", 1000)
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "Schedule", "constant", "step_decay", "multi_step", "exponential", "inverse_sqrt",
    "polynomial", "cosine", "cosine_restarts", "linear_warmup", "one_cycle", "warmup", "join",
    "by_name", "NAMES",
]


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _cos_anneal(start: float, end: float, frac: float) -> float:
    """Half a cosine from ``start`` (frac 0) to ``end`` (frac 1)."""
    return end + (start - end) * (1.0 + math.cos(math.pi * frac)) / 2.0


class Schedule:
    """Base class: subclasses implement ``_at(t)``; ``__call__`` checks ``t >= 0``."""

    def __call__(self, step) -> float:
        if step < 0:
            raise ValueError(f"schedule step must be >= 0, got {step}")
        return float(self._at(step))

    def _at(self, t) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class constant(Schedule):
    """``s(t) = value`` (default 1: the base learning rate throughout)."""

    value: float = 1.0

    def _at(self, t):
        return self.value


@dataclass(frozen=True)
class step_decay(Schedule):
    """Step decay: ``s(t) = gamma ** floor(t / step_size)``; equals ``torch.optim.lr_scheduler.StepLR``."""

    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _positive_int("step_size", self.step_size)

    def _at(self, t):
        return self.gamma ** (t // self.step_size)


@dataclass(frozen=True)
class multi_step(Schedule):
    """``s(t) = gamma ** #{m in milestones : m <= t}``; equals ``MultiStepLR``."""

    milestones: tuple
    gamma: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(sorted(self.milestones)))

    def _at(self, t):
        return self.gamma ** bisect_right(self.milestones, t)


@dataclass(frozen=True)
class exponential(Schedule):
    """Exponential decay ``s(t) = gamma ** t``; equals ``ExponentialLR``."""

    gamma: float

    def _at(self, t):
        return self.gamma ** t


@dataclass(frozen=True)
class inverse_sqrt(Schedule):
    """Inverse square-root decay ``s(t) = 1 / sqrt(1 + t / timescale)``.

    Kingma & Ba 2015, Sec. 6 use ``alpha_t = alpha / sqrt(t)`` with the paper's step
    counter ``t = 1, 2, ...``. Our steps are 0-based, so with the default ``timescale=1``
    ``s(t) = 1 / sqrt(t + 1)`` is exactly the paper's schedule: ``s(0) = 1`` and step ``t``
    gets ``alpha / sqrt(t + 1)``. A larger ``timescale`` slows the decay.
    """

    timescale: float = 1.0

    def __post_init__(self):
        if not self.timescale > 0:
            raise ValueError(f"timescale must be > 0, got {self.timescale!r}")

    def _at(self, t):
        return 1.0 / math.sqrt(1.0 + t / self.timescale)


@dataclass(frozen=True)
class polynomial(Schedule):
    """Polynomial decay ``s(t) = end + (1 - end) * (1 - min(t, T) / T) ** power``, ``T = total_steps``.

    Constant at ``end`` from step ``T`` on. With ``end=0`` this equals
    ``PolynomialLR(total_iters=T, power=power)``; as ``optax.polynomial_schedule``.
    """

    total_steps: int
    power: float = 1.0
    end: float = 0.0

    def __post_init__(self):
        _positive_int("total_steps", self.total_steps)

    def _at(self, t):
        frac = min(t, self.total_steps) / self.total_steps
        return self.end + (1.0 - self.end) * (1.0 - frac) ** self.power


@dataclass(frozen=True)
class cosine(Schedule):
    """Cosine annealing with a floor (Loshchilov & Hutter 2017, without restarts):

        s(t) = floor + (1 - floor) * (1 + cos(pi * min(t, T) / T)) / 2,   T = total_steps

    Equals ``CosineAnnealingLR(T_max=T, eta_min=floor * base_lr)`` for ``t <= T``; after
    ``T`` we stay at ``floor`` where torch's cosine comes back up.
    """

    total_steps: int
    floor: float = 0.0

    def __post_init__(self):
        _positive_int("total_steps", self.total_steps)

    def _at(self, t):
        return _cos_anneal(1.0, self.floor, min(t, self.total_steps) / self.total_steps)


@dataclass(frozen=True)
class cosine_restarts(Schedule):
    """Cosine annealing with warm restarts, SGDR (Loshchilov & Hutter 2017):

        s(t) = floor + (1 - floor) * (1 + cos(pi * T_cur / T_i)) / 2

    where cycle ``i`` lasts ``T_i = T_0 * T_mult ** i`` steps and ``T_cur`` counts steps
    since the last restart (``s = 1`` at each restart). Equals
    ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min=floor * base_lr)``.
    """

    T_0: int
    T_mult: int = 1
    floor: float = 0.0

    def __post_init__(self):
        _positive_int("T_0", self.T_0)
        _positive_int("T_mult", self.T_mult)

    def _at(self, t):
        length, t_cur = self.T_0, t
        if self.T_mult == 1:
            t_cur = t % length
        else:
            # Walk the cycles rather than take log(): exact at cycle boundaries, O(log t).
            while t_cur >= length:
                t_cur -= length
                length *= self.T_mult
        return _cos_anneal(1.0, self.floor, t_cur / length)


@dataclass(frozen=True)
class linear_warmup(Schedule):
    """Linear warmup: ``s(t) = start + (1 - start) * min(t, W) / W``, ``W = warmup_steps``.

    ``start`` defaults to ``1 / (W + 1)``, i.e. ``s(t) = (t + 1) / (W + 1)`` for ``t < W``,
    so no step is wasted at lr 0 and ``s(W) = 1``. Equals
    ``LinearLR(start_factor=start, end_factor=1, total_iters=W)``.
    """

    warmup_steps: int
    start: float | None = None

    def __post_init__(self):
        _positive_int("warmup_steps", self.warmup_steps)
        if self.start is None:
            object.__setattr__(self, "start", 1.0 / (self.warmup_steps + 1))

    def _at(self, t):
        return self.start + (1.0 - self.start) * min(t, self.warmup_steps) / self.warmup_steps


@dataclass(frozen=True)
class one_cycle(Schedule):
    """The 1cycle policy (Smith 2018; Smith & Topin 2019), base lr = the peak lr:

        s(t) = cos_anneal(1/div_factor -> 1,  t / P)                 t <= P = pct_start * T - 1
        s(t) = cos_anneal(1 -> 1/(div_factor * final_div_factor), (t - P) / (T - 1 - P))

    with ``cos_anneal(a -> b, x) = b + (a - b) * (1 + cos(pi x)) / 2`` and ``T = total_steps``.
    The phase ends ``P`` and ``T - 1`` are those of ``torch.optim.lr_scheduler.OneCycleLR``
    (``anneal_strategy="cos"``, ``three_phase=False``), so this equals its lr for
    ``max_lr = base_lr`` on ``t < T``; from ``T - 1`` on we stay at the final value.
    """

    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self):
        _positive_int("total_steps", self.total_steps)
        if not 0.0 <= self.pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {self.pct_start!r}")

    def _at(self, t):
        start = 1.0 / self.div_factor
        end = start / self.final_div_factor
        peak, last = self.pct_start * self.total_steps - 1, self.total_steps - 1
        if t <= peak:
            return _cos_anneal(start, 1.0, t / peak) if peak > 0 else 1.0
        if t >= last or last <= peak:
            return end
        return _cos_anneal(1.0, end, (t - peak) / (last - peak))


@dataclass(frozen=True)
class join(Schedule):
    """Run ``schedules[i]`` between boundaries, each restarted from 0 (as ``optax.join_schedules``):

        s(t) = schedules[0](t)                       t < boundaries[0]
        s(t) = schedules[i + 1](t - boundaries[i])   boundaries[i] <= t < boundaries[i + 1]

    ``len(boundaries) == len(schedules) - 1``; boundaries increasing and >= 0.
    """

    schedules: tuple
    boundaries: tuple

    def __post_init__(self):
        object.__setattr__(self, "schedules", tuple(self.schedules))
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(f"join needs len(boundaries) == len(schedules) - 1, got "
                             f"{len(self.boundaries)} boundaries for {len(self.schedules)} schedules")
        if any(b < 0 for b in self.boundaries) or list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"boundaries must be non-negative and sorted, got {self.boundaries}")
        if not all(callable(s) for s in self.schedules):
            raise TypeError("join: every schedule must be callable")

    def _at(self, t):
        i = bisect_right(self.boundaries, t)
        return self.schedules[i](t - self.boundaries[i - 1] if i else t)


@dataclass(frozen=True)
class _scaled(Schedule):
    """``s(t) = scale * schedule(t)``."""

    schedule: Callable
    scale: float

    def _at(self, t):
        return self.scale * self.schedule(t)


def warmup(schedule: Callable[[int], float], warmup_steps: int) -> Schedule:
    """Linear warmup into ``schedule``, which then runs shifted by ``warmup_steps``:

        s(t) = (t + 1) / (W + 1) * schedule(0)    t < W
        s(t) = schedule(t - W)                    t >= W

    ``warmup_steps=0`` returns ``schedule`` unchanged (wrapped as a :class:`join`).
    """
    if warmup_steps == 0:
        return join((schedule,), ())
    ramp = _scaled(linear_warmup(warmup_steps), float(schedule(0)))
    return join((ramp, schedule), (warmup_steps,))



NAMES = ("constant", "step", "exponential", "inverse_sqrt", "cosine", "cosine_restarts",
         "warmup_cosine", "one_cycle", "polynomial")


def by_name(name: str, total_steps: int) -> Schedule:
    """A sensible schedule called ``name`` for a run of ``total_steps`` steps (the lab's ``--schedule``).

    constant         1 throughout
    step             x0.1 after each third of the run: ``step_decay(ceil(T / 3), 0.1)``
    exponential      down to 0.01 at the end: ``exponential(0.01 ** (1 / T))``
    inverse_sqrt     the Adam paper's alpha / sqrt(t): ``inverse_sqrt()``
    cosine           ``cosine(T)`` down to 0
    cosine_restarts  SGDR with cycles T0, 2 T0 and T - 3 T0 (4 T0 when 7 divides T),
                     T0 = max(1, T // 7): the last cycle ends at T (``cosine(T)`` if T < 4)
    warmup_cosine    5% linear warmup (at least 1 step), then cosine to 0 over the rest
    one_cycle        ``one_cycle(T)`` with torch's defaults
    polynomial       linear decay to 0: ``polynomial(T, power=1)``

    Unknown names raise ``ValueError`` listing the valid ones.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in NAMES:
        raise ValueError(f"Unknown schedule {name!r}; valid names: {', '.join(NAMES)}")
    _positive_int("total_steps", total_steps)
    T = total_steps
    if key == "constant":
        return constant()
    if key == "step":
        return step_decay(math.ceil(T / 3), 0.1)
    if key == "exponential":
        return exponential(0.01 ** (1.0 / T))
    if key == "inverse_sqrt":
        return inverse_sqrt()
    if key == "cosine":
        return cosine(T)
    if key == "cosine_restarts":
        t0 = max(1, T // 7)
        if 3 * t0 >= T:
            return cosine(T)
        # cosine_restarts(t0, 2)'s cycles, the third stretched to end exactly at T
        return join((cosine(t0), cosine(2 * t0), cosine(T - 3 * t0)), (t0, 3 * t0))
    if key == "warmup_cosine":
        w = min(max(1, round(0.05 * T)), T - 1)
        return warmup(cosine(T - w), w) if w > 0 else cosine(T)
    if key == "one_cycle":
        return one_cycle(T)
    return polynomial(T, power=1.0)

