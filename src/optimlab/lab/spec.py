"""What a run is (RunSpec) and what it leaves behind (RunRecord).

A run is identified by the content hash of its spec, so re-running a sweep skips what
is already in the store and the results do not depend on how the work was scheduled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import cached_property


@dataclass(frozen=True)
class RunSpec:
    problem: str
    optimizer: str          # a registry name, e.g. "adam"
    lr: float
    seed: int
    steps: int
    schedule: str = "constant"
    hyperparameters: tuple = ()   # sorted (key, value) pairs beyond lr; () = defaults
    phase: str = "sweep"          # "sweep" (lr grid, seed 0) or "seeds" (best lr, more seeds)
    eval_every: int = 0           # 0: the runner picks ~EVAL_POINTS (25) evaluation points

    @cached_property
    def run_id(self) -> str:
        """The content hash of the spec (computed once per instance: a comparison looks
        the ids of ~2,000 specs up again at every round). The fields' values as JSON are
        what ``asdict`` would give: every field is a number, a string or a tuple of pairs."""
        fields_ = {f.name: getattr(self, f.name) for f in fields(self)}
        payload = json.dumps(fields_, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class RunRecord:
    spec: RunSpec
    status: str                   # "ok" | "diverged" | "error"
    final: dict                   # train_loss, val_loss, test_loss, val_metric, test_metric,
                                  # gap (train_loss - optimum, or None), steps_to_target (or None),
                                  # diverged_at (step or None), error (message or None)
    curves: dict                  # lists of equal length: step, train_loss, val_loss, val_metric, lr
    seconds: float                # wall time of the whole run
    seconds_per_step: float       # median wall time of one optimizer step (fwd+bwd+step)
    trajectory: list | None = None  # 2-D problems: [[x, y], ...] at every step
    versions: dict = field(default_factory=dict)   # python, torch, numpy, optimlab

    @property
    def run_id(self) -> str:
        return self.spec.run_id
