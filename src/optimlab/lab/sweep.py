"""The comparison protocol, fair by construction, and its resumable execution (the runs
themselves are executed by :mod:`.executor`).

Phases, all with the same initial weights and batch order for every optimizer:

* "sweep": the learning-rate search (:mod:`.search`), seed 0: the shared coarse grid,
  extended past an edge while the best sits there, then refined around the best to a
  quarter decade. It runs in rounds; each round's lrs follow from the stored scores.
* "seeds": the best few lrs of the sweep (:mod:`.selection`) rerun with seeds 1..N-1; the
  selected lr is the candidate with the lowest seed-mean validation loss (the test split
  is never used).
* "bias-correction": Adam with and without bias correction on the VAE problems, on the
  lrs Adam's own search tried there.

Only the learning rate is tuned; every other hyperparameter stays at its default.
Execution skips run ids already in the store and stores each record (one transaction)
as soon as it arrives, and every round is a pure function of the stored records, so an
interrupted comparison resumes where it stopped and the results do not depend on the
number of worker processes.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field

from . import search as S
from .executor import Executor, SweepError, _problem
from .selection import CANDIDATES, PROMOTE_T, RUNG_SEEDS, score as _score
from .spec import RunSpec
from .store import Store
from .wording import plural

#: The coarse lr grid the search starts from: log-spaced 1e-4 .. 1, one per decade.
GRID_LO, GRID_HI, PER_DECADE = S.COARSE[0], S.COARSE[-1], 1

#: beta2 values of the bias-correction experiment (Kingma & Ba 2015, Fig. 4).
BIAS_BETA2 = (0.99, 0.999, 0.9999)


def lr_grid(lo: float = GRID_LO, hi: float = GRID_HI, per_decade: int = PER_DECADE) -> list:
    """Log-spaced learning rates from ``lo`` to ``hi`` with ``per_decade`` points per decade."""
    a, b = math.log10(lo), math.log10(hi)
    n = round((b - a) * per_decade)
    # 3 significant digits: 10**-3.5 is shown and stored as 3.16e-04, the same everywhere.
    return [float(f"{10 ** (a + (b - a) * i / n):.3g}") for i in range(n + 1)]


# ---------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """What a comparison runs.

    sources: {problem name: source} (registry name or "pkg.module:factory");
    steps: {problem name: step budget}; lrs: the coarse grid the search starts from (or
    the user's fixed grid); seeds: total seeds of each candidate lr; adaptive: whether
    the search extends and refines (False for a user-given grid).
    """

    sources: dict
    optimizers: list
    lrs: list
    seeds: int
    steps: dict
    schedule: str = "constant"
    grid_note: str = ""
    problems: dict = field(default_factory=dict, repr=False)   # name -> Problem
    adaptive: bool = False

    @classmethod
    def build(cls, sources, optimizers, lrs=None, seeds=5, steps=None, schedule="constant"):
        """Resolve problem sources (in this process) and fill in defaults; ``steps`` None
        means each problem's default budget; ``lrs`` None means the adaptive search."""
        problems = {}
        for source in sources:
            problem = _problem(source)
            if problem.name in problems and problems[problem.name][0] != source:
                raise ValueError(f"two problems are named {problem.name!r} "
                                 f"({problems[problem.name][0]} and {source})")
            problems[problem.name] = (source, problem)
        custom = lrs is not None
        lrs = sorted(float(lr) for lr in (lrs if custom else S.COARSE))
        return cls(sources={n: s for n, (s, _) in problems.items()},
                   optimizers=list(optimizers), lrs=lrs, seeds=int(seeds),
                   steps={n: int(steps or p.default_steps) for n, (_, p) in problems.items()},
                   schedule=schedule, grid_note="custom" if custom else S.describe(True),
                   problems={n: p for n, (_, p) in problems.items()}, adaptive=not custom)

    # ------------------------------------------------------------------ phases

    def _spec(self, p, o, lr, seed=0, phase="sweep") -> RunSpec:
        return RunSpec(problem=p, optimizer=o, lr=lr, seed=seed, steps=self.steps[p],
                       schedule=self.schedule, phase=phase)

    def search(self, records=()) -> dict:
        """{(problem, optimizer): search.State} given the stored records: this plan's
        seed-0 sweep runs score the lrs, anything else in the store is ignored."""
        mine = {}
        for r in records:
            s = r.spec
            if s.phase == "sweep" and s.problem in self.steps and \
                    r.spec == self._spec(s.problem, s.optimizer, s.lr):
                mine.setdefault((s.problem, s.optimizer), {})[s.lr] = _score(r)
        return {(p, o): S.search(mine.get((p, o), {}), self.lrs, adaptive=self.adaptive)
                for p in self.sources for o in self.optimizers}

    def sweep_specs(self, states: dict | None = None) -> list:
        """Phase "sweep", seed 0: every lr visited by the search of each (problem,
        optimizer) (``states`` from :meth:`search`; None: the starting grid)."""
        out = []
        for p in self.sources:
            for o in self.optimizers:
                st = (states or {}).get((p, o))
                out += [self._spec(p, o, lr) for lr in (st.visited if st else self.lrs)]
        return out

    def seed_specs(self, selections: dict) -> list:
        """Phase "seeds", successive halving (see :mod:`.selection`): every candidate lr
        of each (problem, optimizer) gets seeds 1..RUNG_SEEDS-1, and the promoted ones
        (known once that rung is stored) seeds RUNG_SEEDS..N-1; none when every lr
        failed."""
        rung = min(RUNG_SEEDS, self.seeds)
        out = []
        for p in self.sources:
            for o in self.optimizers:
                sel = selections.get((p, o))
                if sel is None or sel.lr is None:
                    continue
                lrs = [lr for lr, _ in sel.candidates] or \
                    ([sel.lr] if math.isfinite(sel.score) else [])
                # A lone lr (no candidates recorded) is trivially the leader.
                full = sel.promoted if sel.candidates else lrs
                out += [self._spec(p, o, lr, seed, "seeds")
                        for lr in sorted(lrs) for seed in range(1, rung)]
                out += [self._spec(p, o, lr, seed, "seeds")
                        for lr in sorted(full) for seed in range(rung, self.seeds)]
        return out

    def bias_specs(self, selections: dict | None = None) -> list:
        """Phase "bias-correction" (Adam paper Fig. 4 analogue): Adam with and without bias
        correction for each beta2 in BIAS_BETA2 on every VAE problem, across the lrs
        Adam's search tried there (the starting grid before it has run)."""
        from .analysis import bias_correction_specs

        if "adam" not in self.optimizers:
            return []
        out = []
        for p, problem in self.problems.items():
            if problem.kind != "vae":
                continue
            sel = (selections or {}).get((p, "adam"))
            lrs = sel.grid if sel is not None and sel.grid else self.lrs
            out += bias_correction_specs(p, lrs, BIAS_BETA2, self.steps[p],
                                         schedule=self.schedule)
        return out

    def all_specs(self, selections: dict) -> list:
        """Every spec of this comparison, all phases; the sweep's lrs are each selection's
        ``grid`` (every lr its search tried)."""
        from .experiments import specs as experiment_specs

        sweep = []
        for p in self.sources:
            for o in self.optimizers:
                sel = selections.get((p, o))
                sweep += [self._spec(p, o, lr) for lr in (sel.grid if sel else self.lrs)]
        return (sweep + self.seed_specs(selections) + self.bias_specs(selections)
                + experiment_specs(self, selections))

    def describe(self) -> dict:
        """The plan as JSON-ready metadata."""
        budgets = set(self.steps.values())
        info = {n: {"kind": p.kind, "description": p.description, "optimum": p.optimum,
                    "target": p.target, "metric_name": p.metric_name}
                for n, p in self.problems.items()}
        return {"problems": list(self.sources), "sources": dict(self.sources),
                "problem_info": info, "bias_correction_beta2": list(BIAS_BETA2),
                "optimizers": list(self.optimizers),
                "grid": list(self.lrs), "grid_spacing": self.grid_note, "seeds": self.seeds,
                "search": {"adaptive": self.adaptive, "coarse": list(self.lrs),
                           "bounds": [S.LOWER, S.UPPER] if self.adaptive else
                           [min(self.lrs), max(self.lrs)],
                           "per_decade_refined": S.PER_DECADE if self.adaptive else None,
                           "candidates": CANDIDATES, "rung_seeds": RUNG_SEEDS},
                # One number when every problem has the same budget, else None (see
                # steps_per_problem): the report reads "steps" as an int.
                "steps": budgets.pop() if len(budgets) == 1 else None,
                "steps_per_problem": dict(self.steps), "schedule": self.schedule,
                "hyperparameters": "defaults; only the learning rate is tuned",
                "selection": f"lr search on seed 0 ({S.describe(self.adaptive)}); the "
                             f"{CANDIDATES} best lrs by seed-0 validation loss are rerun "
                             f"to {min(RUNG_SEEDS, self.seeds)} seeds, those within noise of "
                             f"the leader (excess < {PROMOTE_T:g} standard errors of the "
                             f"paired difference) to {self.seeds} seeds in total, and the "
                             f"lr with the lowest seed-mean final validation loss among "
                             f"them is selected (never test); "
                             f"an lr at the edge of what was searched is flagged on_edge, "
                             f"one at a hard bound at_bound"}


def select(store: Store, specs) -> dict:
    """Selections per (problem, optimizer) from the stored sweep and seeds runs of
    ``specs`` (see :func:`analysis.select_best`)."""
    return _select(store.records("sweep") + store.records("seeds"), specs)


def _select(records, specs) -> dict:
    from .analysis import select_best

    wanted = {s.run_id for s in specs}
    return select_best([r for r in records if r.run_id in wanted])


#: Runs named per error text in the error that stops a comparison (the rest counted).
NAMED_ERRORS = 3


def raise_errors(records) -> None:
    """Stop the comparison when a run raised (status "error"): an exception is a bug to
    fix (a custom problem's, an environment's), not an outcome to compare, and the same
    spec would raise again. The :class:`SweepError` is one line: each distinct error
    text with the runs (problem/optimizer, lr, seed) that raised it. The store keeps
    them, and the next command retries them."""
    by_error = {}
    for r in sorted((r for r in records if r.status == "error"),
                    key=lambda r: (r.spec.problem, r.spec.optimizer, r.spec.lr, r.spec.seed)):
        text = _short((r.final or {}).get("error") or "unknown error")
        by_error.setdefault(text, []).append(
            f"{r.spec.problem}/{r.spec.optimizer} lr {r.spec.lr:g} seed {r.spec.seed}")
    if not by_error:
        return
    parts = [f"{text} ({', '.join(runs[:NAMED_ERRORS])}"
             + (f" and {len(runs) - NAMED_ERRORS} more" if len(runs) > NAMED_ERRORS else "")
             + ")" for text, runs in by_error.items()]
    n = sum(len(runs) for runs in by_error.values())
    raise SweepError(f"{plural(n, 'run')} raised an error: {'; '.join(parts)}; fix the "
                     f"cause and re-run the same command (finished runs are kept)")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


#: "phase sweep, round 2 (extension/refinement): ..." -> "sweep, round 2".
_PHASE_LINE = re.compile(r"^phase ([^:(]+?)\s*[:(]")


def _recording_phase(store: Store, log):
    """``log``, also keeping the phase a "phase NAME: ..." line starts in the comparison's
    meta ("phase"), so that the report of one that stopped can say where it stopped."""
    def logged(msg: str) -> None:
        match = _PHASE_LINE.match(msg)
        if match:
            store.set_meta("phase", match.group(1))
        log(msg)
    return logged


def compare(plan: Plan, store: Store, workers: int = 1, progress: bool = False,
            log=None, executor: Executor | None = None) -> dict:
    """The whole protocol: the lr search (rounds until every search is done), the seeds
    of the candidate lrs, selection on seed means, then the bias-correction phase.

    ``executor``: how the runs are executed (default: the local :class:`Executor` with
    ``workers`` processes); it is entered and closed here. Returns the selections
    ``{(problem, optimizer): Selection}``. A run that raises stops it after the batch
    it was in (:func:`raise_errors`), so no run is retried within one call.
    """
    log = _recording_phase(store, log or (lambda msg: print(msg, file=sys.stderr)))
    # Stored runs are read once (a resumed comparison); new ones are kept in memory as
    # they finish, so a round does not decode the whole store again.
    known = {r.run_id: r for r in store.records("sweep") + store.records("seeds")}

    def records():
        known.update(ex.finished)
        return list(known.values())

    if executor is None:
        executor = Executor(store, plan.sources, workers, progress, plan.problems)
    with executor as ex:
        rnd = 0
        while True:
            states = plan.search(r for r in records() if r.spec.phase == "sweep")
            sweep = plan.sweep_specs(states)
            # The report shows this comparison's runs only (an --out directory may hold
            # older ones); the list grows with every round.
            store.set_meta("runs", sorted({s.run_id for s in sweep + plan.bias_specs()}))
            todo = ex.pending(sweep)
            if not todo:
                break
            rnd += 1
            name = "coarse grid" if rnd == 1 and len(todo) == len(sweep) else \
                "extension/refinement"
            log(f"phase sweep, round {rnd} ({name}): {plural(len(todo), 'run')}, "
                f"{plural(len(plan.optimizers), 'optimizer')} x "
                f"{plural(len(plan.sources), 'problem')}, {ex.describe()} "
                f"({plural(len(sweep), 'lr')} searched so far)")
            ex.run(todo, f"sweep {rnd}")
            raise_errors(ex.finished.values())
            if rnd > S.MAX_ROUNDS:   # cannot happen: every round adds lattice points
                raise SweepError("the lr search did not converge")
        selections = _select(records(), sweep)
        seeds = []
        # Two rungs: every candidate to RUNG_SEEDS seeds, then the promoted ones to all;
        # each rung's specs follow from the stored records, so a resume replays them.
        for rung in (1, 2):
            specs = plan.seed_specs(selections)
            store.set_meta("runs", sorted(s.run_id for s in plan.all_specs(selections)))
            done = {x.run_id for x in seeds}
            todo = [s for s in specs if s.run_id not in done]
            if todo:
                n = len(ex.pending(todo))
                lo, hi = min(s.seed for s in todo), max(s.seed for s in todo)
                what = (f"the best {CANDIDATES} lrs per pair" if rung == 1 else
                        "the candidates within noise of each pair's leader")
                log(f"phase seeds, rung {rung}: {plural(len(todo), 'run')} "
                    f"({len(todo) - n} already stored), seeds {lo}..{hi} of {what}")
                ex.run(todo, f"seeds {rung}")
                raise_errors(ex.finished.values())
            seeds = specs
            selections = _select(records(), sweep + seeds)
        store.set_meta("runs", sorted(s.run_id for s in plan.all_specs(selections)))
        bias = plan.bias_specs(selections)
        if bias:
            n = len(ex.pending(bias))
            log(f"phase bias-correction: {plural(len(bias), 'run')} ({len(bias) - n} already stored), "
                f"Adam with/without bias correction, beta2 in {list(BIAS_BETA2)}")
            ex.run(bias, "bias-correction")
            raise_errors(ex.finished.values())
        # Phases "schedules" and "layerwise" (claims 2, 9, 10) at the final selections.
        from . import experiments
        experiments.run(plan, selections, ex, log)
        raise_errors(ex.finished.values())
        store.set_meta("runs", sorted(s.run_id for s in plan.all_specs(selections)))
    return selections
