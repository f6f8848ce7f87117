"""The update rules: one small pure function per optimizer, read next to its paper.

See :mod:`optimlab.rules.base` for the signature every rule has (``rule(g, s, h) -> u``)
and for :func:`~optimlab.rules.base.update`, the per-parameter step that wraps it. The
rules are split by family, one module each.
"""

from .base import Rule, update
from .classic import (
    ADADELTA, ADAGRAD, ADAM, ADAMAX, ALL_RULES, NADAM, RMSPROP, SGD,
    adadelta, adagrad, adam, adamax, nadam, rmsprop, sgd,
)
from .torch_extra import ASGD, RADAM, RPROP, asgd, radam, rprop
from .sign_based import LION, lion
from .modern import (
    ADABELIEF, ADAN, MODERN_RULES, SCHEDULE_FREE_ADAMW, SCHEDULE_FREE_SGD,
    adabelief, adan, schedule_free_adamw, schedule_free_sgd,
)
from .factored import ADAFACTOR, adafactor
from .layerwise import LAMB, LARS, lamb, lars
from .learning_rate_free import PRODIGY, prodigy, prodigy_distance, prodigy_estimate
from .orthogonal import MUON, muon

__all__ = [
    "Rule", "update", "ALL_RULES",
    "SGD", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM", "ADAMAX", "NADAM",
    "sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamax", "nadam",
    "RADAM", "RPROP", "ASGD", "radam", "rprop", "asgd", "LION", "lion",
    "ADABELIEF", "ADAN", "SCHEDULE_FREE_ADAMW", "SCHEDULE_FREE_SGD", "MODERN_RULES",
    "adabelief", "adan", "schedule_free_adamw", "schedule_free_sgd",
    "ADAFACTOR", "adafactor", "MUON", "muon", "LARS", "lars", "LAMB", "lamb",
    "PRODIGY", "prodigy", "prodigy_estimate", "prodigy_distance",
]
