"""The Adam paper's Fig. 4 analogue: Adam with and without bias correction per beta2 x lr
(run specs and the curves the report draws); re-exported by :mod:`.analysis`."""

from __future__ import annotations

from collections import defaultdict

from .selection import score
from .spec import RunSpec

BIAS_PHASE = "bias-correction"


def bias_correction_specs(problem: str, lrs, betas2, steps: int, seed: int = 0,
                          schedule: str = "constant") -> list:
    """RunSpecs for the Adam-paper Fig. 4 analogue: Adam, beta1 = 0.9, every beta2 x
    bias_correction in {False, True} x lr, in phase "bias-correction"."""
    return [RunSpec(problem=problem, optimizer="adam", lr=float(lr), seed=seed, steps=steps,
                    schedule=schedule,
                    hyperparameters=(("betas", (0.9, float(b2))), ("bias_correction", bc)),
                    phase=BIAS_PHASE)
            for b2 in betas2 for bc in (False, True) for lr in lrs]


def bias_correction_curves(records) -> dict:
    """{problem: {(beta2, bias_correction): [(lr, val score), ...] sorted by lr}} from
    runs whose hyperparameters set both ``betas`` and ``bias_correction``."""
    out = defaultdict(lambda: defaultdict(list))
    for r in records:
        try:
            hp = dict(r.spec.hyperparameters)
            b2 = float(hp["betas"][1])
            bc = bool(hp["bias_correction"])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        out[r.spec.problem][(b2, bc)].append((r.spec.lr, score(r)))
    return {p: {k: sorted(v) for k, v in sorted(d.items())} for p, d in sorted(out.items())}
