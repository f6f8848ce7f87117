"""The phases that test the articles' claims 2, 9 and 10 (see ``claims.py``).

Phase "schedules": a few representative optimizers (SCHEDULE_OPTIMIZERS) on the neural
problems of the comparison, each at its *selected* learning rate (chosen under the
comparison's own schedule, usually constant), trained with every schedule of SCHEDULES
(``optimlab.schedules.by_name``: step decay x0.1 after each third, cosine to 0, 5% linear
warmup then cosine) over the comparison's seeds. The baseline schedule is not rerun: the
selected runs of phases "sweep" (seed 0) and "seeds" are the same configuration with the
same seeds, so every schedule is compared with the baseline paired by seed (same initial
weights and batch order).

Phase "layerwise": the same optimizers at their selected lr on the MLP/CNN problems, with
layer-wise lr decay LAYER_DECAY (``optimlab.param_groups(model, lr, layer_decay=d)``: the
output layer gets the selected lr, the layer below ``lr * d``, ...; Howard & Ruder 2018),
against the uniform-lr selected runs, paired by seed. The runner reads the decay from
``RunSpec.hyperparameters`` (``("layer_decay", d)``); such runs never enter lr selection,
which only reads default-hyperparameter runs of phases "sweep"/"seeds".

Run count of the default comparison (3 neural problems, 1 MLP, seeds 5):
schedules 3 problems x 2 optimizers x 3 schedules x 5 seeds = 90 runs; layerwise
1 problem x 3 optimizers x 5 seeds = 15 runs.
"""

from __future__ import annotations

import math

from .spec import RunSpec

SCHEDULE_PHASE = "schedules"
LAYERWISE_PHASE = "layerwise"

#: Problem kinds trained by a neural network (the "neural problems").
NEURAL_KINDS = ("mlp", "cnn", "char-lm", "vae")
#: Plain SGD and Adam: the two sides of claim 2 (and the usual defaults of claim 9).
SCHEDULE_OPTIMIZERS = ("sgd", "adam")
#: Decaying schedules compared with the comparison's own (constant) one.
SCHEDULES = ("step", "cosine", "warmup_cosine")

#: Layered networks for the layer-wise lr phase.
LAYERWISE_KINDS = ("mlp", "cnn")
LAYERWISE_OPTIMIZERS = ("sgd", "momentum", "adam")
#: With two or three layers a mild decay (0.8) changes the lower layers' lr by < 40%,
#: below what the seeds can resolve; 0.5 halves it per layer.
LAYER_DECAY = 0.5


def _selected(plan, selections, kinds, optimizers):
    """(problem, optimizer, lr) for the neural problems x optimizers with a usable lr."""
    for p, problem in plan.problems.items():
        if problem.kind not in kinds:
            continue
        for o in optimizers:
            if o not in plan.optimizers:
                continue
            sel = selections.get((p, o))
            if sel is None or sel.lr is None or not math.isfinite(sel.score):
                continue   # nothing trained: no lr to reuse
            yield p, o, float(sel.lr)


def schedule_specs(plan, selections: dict) -> list:
    """Phase "schedules": SCHEDULES (minus the comparison's own schedule) for
    SCHEDULE_OPTIMIZERS on the neural problems, at the selected lr, seeds 0..N-1."""
    scheds = [s for s in SCHEDULES if s != plan.schedule]
    return [RunSpec(problem=p, optimizer=o, lr=lr, seed=seed, steps=plan.steps[p],
                    schedule=s, phase=SCHEDULE_PHASE)
            for p, o, lr in _selected(plan, selections, NEURAL_KINDS, SCHEDULE_OPTIMIZERS)
            for s in scheds for seed in range(plan.seeds)]


def layerwise_specs(plan, selections: dict) -> list:
    """Phase "layerwise": LAYERWISE_OPTIMIZERS on the MLP/CNN problems at the selected lr
    with layer-wise decay LAYER_DECAY, seeds 0..N-1."""
    return [RunSpec(problem=p, optimizer=o, lr=lr, seed=seed, steps=plan.steps[p],
                    schedule=plan.schedule, hyperparameters=(("layer_decay", LAYER_DECAY),),
                    phase=LAYERWISE_PHASE)
            for p, o, lr in _selected(plan, selections, LAYERWISE_KINDS, LAYERWISE_OPTIMIZERS)
            for seed in range(plan.seeds)]


def specs(plan, selections: dict) -> list:
    """Both phases' specs."""
    return schedule_specs(plan, selections) + layerwise_specs(plan, selections)


def run(plan, selections: dict, executor, log) -> list:
    """Run both phases with ``executor`` (an ``executor.Executor``); returns their specs."""
    phases = ((SCHEDULE_PHASE, schedule_specs(plan, selections),
               f"{', '.join(SCHEDULE_OPTIMIZERS)} x schedules {', '.join(SCHEDULES)} "
               f"at the selected lr"),
              (LAYERWISE_PHASE, layerwise_specs(plan, selections),
               f"{', '.join(LAYERWISE_OPTIMIZERS)} with layer-wise lr decay {LAYER_DECAY:g}"))
    out = []
    for name, todo, what in phases:
        if todo:
            n = len(executor.pending(todo))
            log(f"phase {name}: {len(todo)} runs ({len(todo) - n} already stored), {what}")
            executor.run(todo, name)
        out += todo
    return out
