"""The problem suite: a registry of factories, built lazily (data loading costs time).

>>> from optimlab.lab import problems
>>> p = problems.get("rosenbrock")
>>> model = p.model(seed=0); loss = p.loss(model, p.batch(step=0, seed=0))
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Callable

from . import classification, functions2d, language, quadratic, regression, sparse, vae
from .base import KINDS, Problem

PROBLEMS: dict[str, Callable[[], Problem]] = {
    **functions2d.FACTORIES,
    **quadratic.FACTORIES,
    **regression.FACTORIES,
    **classification.FACTORIES,
    **sparse.FACTORIES,
    **language.FACTORIES,
    **vae.FACTORIES,
}

# One problem per kind, each cheap at its default budget (<~1 s per run on one core),
# plus a second 2-D problem: the ill-conditioned ravine (x^2 + 100 y^2) / 2, where SGD's
# zig-zag and momentum's overshoot are the lesson (200 steps, ~0.1 s per run).
# digits-cnn is left out: CPU convolutions make one run ~3x a digits-mlp run, and the
# MLP already covers "small network on digits".
DEFAULT_SUITE: list[str] = [
    "rosenbrock", "ill-conditioned", "noisy-quadratic", "five-points", "digits-logistic", "sparse-bow",
    "digits-mlp", "markov-lm", "digits-vae",
]
FULL_SUITE: list[str] = list(PROBLEMS)


def names() -> list[str]:
    """All registered problem names, in registry order."""
    return list(PROBLEMS)


@lru_cache(maxsize=None)
def get(name: str) -> Problem:
    """The problem called ``name`` (built once per process)."""
    try:
        factory = PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(PROBLEMS)}") from None
    return factory()


def load_custom(spec: str) -> Problem:
    """A user problem from ``"package.module:factory"``: import the module, call the
    zero-argument factory and check that it returns a :class:`Problem`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"custom problem spec must look like 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for custom problem {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (custom problem {spec!r})")
    if not callable(factory):
        raise ValueError(f"{spec!r} is not callable; it must be a factory returning a Problem")
    try:
        problem = factory()
    except Exception as exc:   # the user's code: a user error, not an internal one
        raise ValueError(f"custom problem {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(problem, Problem):
        raise ValueError(f"{spec!r} returned {type(problem).__name__}, not an "
                         "optimlab.lab.problems.base.Problem")
    if problem.name in PROBLEMS:  # the report would show two problems of one name
        raise ValueError(f"custom problem {spec!r} is named {problem.name!r}, the name of a "
                         "built-in problem; give it another name")
    if problem.kind not in KINDS:  # the report groups its answer by kind
        raise ValueError(f"custom problem {spec!r} has kind {problem.kind!r}; the kinds are "
                         f"{', '.join(KINDS)}")
    return problem


__all__ = ["Problem", "KINDS", "PROBLEMS", "DEFAULT_SUITE", "FULL_SUITE", "get", "names",
           "load_custom"]
