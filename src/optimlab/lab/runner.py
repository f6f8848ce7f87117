"""The runner: train one RunSpec on one Problem and return its RunRecord.

A run is deterministic given its spec (timings aside): the problem seeds the initial
weights and the batch order, the global RNG is seeded from the spec for anything else
(e.g. a VAE's sampling noise), and torch runs single-threaded so that results do not
depend on how many runs share the machine. A run never raises: divergence and errors
are outcomes recorded in the returned record. A run *diverged* when, at an evaluation
point, a parameter or the train or validation loss is not finite or a loss has grown
more than EXPLODED (1e10) times above its starting value.
"""

from __future__ import annotations

import math
import platform
import statistics
import time

import numpy as np
import torch

import optimlab

from .problems.base import Problem
from .spec import RunRecord, RunSpec

#: Evaluation points per run when ``spec.eval_every`` is 0 (plus the initial point).
#: Evaluating the full train and validation splits is most of a small run's time; 25
#: points draw every curve of the report and put steps-to-target within 4% of the budget.
EVAL_POINTS = 25

INF = float("inf")

#: A loss above EXPLODED x max(|its starting loss|, 1) counts as diverged, like a
#: non-finite one: past an lr's stability limit the loss grows geometrically, and whether
#: it reaches inf before the budget ends is an accident of the budget (SGD at lr 0.1 on
#: the ill-conditioned ravine ends at 1e191 after 100 steps, at inf after 200). Over
#: ~10,000 stored finite runs, those that recovered peaked at most 1.2e4 x their start
#: (Adam on Rosenbrock at lr 10) and those that did not at 1e21 x or more.
EXPLODED = 1e10


def versions() -> dict:
    """Versions that a result depends on."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "optimlab": optimlab.__version__}


def machine() -> dict:
    """The machine a comparison runs on, for the report's protocol: CPU model, logical
    CPUs, the CPUs this process may use, torch threads per run (the runner uses 1) and
    the platform. Recorded in the comparison's meta, never in a run (runs are shared)."""
    import os

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.lower().startswith("model name")), cpu)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu": cpu or "unknown", "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "torch_threads_per_run": 1, "platform": platform.platform()}


def load_average():
    """The 1-minute load average (None where the OS has none)."""
    import os
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def eval_every(spec: RunSpec) -> int:
    """Steps between evaluations: the spec's, or about EVAL_POINTS points per run."""
    return spec.eval_every if spec.eval_every > 0 else max(1, spec.steps // EVAL_POINTS)


class _Diverged(Exception):
    """A non-finite or exploded loss (see EXPLODED), or a non-finite parameter, at
    ``step`` (the number of steps completed)."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _exploded(loss: float, start: float | None) -> bool:
    """Whether ``loss`` is more than EXPLODED times above its starting value."""
    return start is not None and loss > EXPLODED * max(abs(start), 1.0)


def _params_finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


class _EvalParams:
    """Evaluate at the optimizer's evaluation point: optimizers with ``train()``/``eval()``
    (Schedule-Free keeps the averaged point ``x`` for evaluation and steps from another,
    ``y``) are switched to ``eval()`` around evaluation and back to ``train()`` after."""

    def __init__(self, opt):
        self.switch = callable(getattr(opt, "eval", None)) and callable(getattr(opt, "train", None))
        self.opt = opt

    def __enter__(self):
        if self.switch:
            self.opt.eval()

    def __exit__(self, *exc):
        if self.switch:
            self.opt.train()


def _evaluate(problem: Problem, model: torch.nn.Module, split: str,
              metric: bool = True) -> dict:
    """{"loss", "metric"} of a split in eval mode; ``metric=False`` lets a problem with
    ``evaluate_loss`` skip the metric (which then reads None)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not metric and problem.evaluate_loss is not None:
                out = {"loss": problem.evaluate_loss(model, split), "metric": None}
            else:
                out = problem.evaluate(model, split)
    finally:
        model.train(was_training)
    metric = out.get("metric")
    return {"loss": float(out["loss"]), "metric": None if metric is None else float(metric)}


def _position(params) -> list:
    """The parameters as one flat list of floats (a 2-D problem's point, every step):
    read in place when there is one parameter tensor (no concatenated copy)."""
    if len(params) == 1:
        return params[0].detach().reshape(-1).tolist()
    return torch.cat([p.detach().reshape(-1) for p in params]).tolist()


#: Lab-only hyperparameters: read by the runner, never passed to the optimizer.
#: ``layer_decay`` d: layer-wise lr decay via :func:`optimlab.param_groups` (the top layer
#: gets ``spec.lr``, the one below ``spec.lr * d``, ...).
RUNNER_KEYS = ("layer_decay",)


def _optimizer_kwargs(spec: RunSpec) -> dict:
    return {k: v for k, v in spec.hyperparameters if k not in RUNNER_KEYS}


def _optimizer(spec: RunSpec, model: torch.nn.Module, params: list):
    """The spec's optimizer, with its entry's ``lab_preset`` under the spec's hyperparameters.
    An entry that takes 2-D parameters only (Muon) gets the model's 2-D weights and AdamW
    the rest (``optimlab.create`` on the model); one with ``train()`` starts in train mode."""
    entry = optimlab.lookup(spec.optimizer)
    kwargs = {**entry.lab_preset, **_optimizer_kwargs(spec)}
    if entry.matrices_only and "layer_decay" not in dict(spec.hyperparameters):
        opt = optimlab.create(spec.optimizer, model, lr=spec.lr, **kwargs)
    else:
        opt = optimlab.create(spec.optimizer, _param_groups(model, params, spec), lr=spec.lr,
                              **kwargs)
    if callable(getattr(opt, "train", None)):
        opt.train()
    return entry, opt


def _param_groups(model: torch.nn.Module, params: list, spec: RunSpec):
    """The parameters, or layer-wise lr groups when the spec asks for ``layer_decay``."""
    decay = dict(spec.hyperparameters).get("layer_decay")
    if decay is None:
        return params
    # no_decay=False: one group per layer, nothing else changes (weight decay stays default).
    return optimlab.param_groups(model, lr=spec.lr, layer_decay=float(decay), no_decay=False)


def _no_result(diverged_at=None, error=None) -> dict:
    return {"train_loss": INF, "val_loss": INF, "test_loss": INF, "train_metric": None,
            "val_metric": None, "test_metric": None, "gap": None,
            "steps_to_target": None, "diverged_at": diverged_at, "error": error}


def failed(spec: RunSpec, error: str) -> RunRecord:
    """The record of a run that never returned (e.g. its worker process kept dying):
    status "error" with ``error`` as the reason; the comparison stops on it (see
    ``sweep.raise_errors``) and the next command retries it."""
    curves = {"step": [], "train_loss": [], "val_loss": [], "val_metric": [], "lr": []}
    return RunRecord(spec=spec, status="error", final=_no_result(error=error), curves=curves,
                     seconds=0.0, seconds_per_step=0.0, trajectory=None, versions=versions())


def run(spec: RunSpec, problem: Problem) -> RunRecord:
    """Train ``spec`` on ``problem``; status "ok", "diverged" or "error" (never raises
    for failures inside training)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            return _run(spec, problem)
    finally:
        torch.set_num_threads(threads)


def _run(spec: RunSpec, problem: Problem) -> RunRecord:
    start = time.perf_counter()
    every = eval_every(spec)
    curves = {"step": [], "train_loss": [], "val_loss": [], "val_metric": [], "lr": []}
    trajectory = [] if problem.is_2d else None
    step_times: list[float] = []
    status, diverged_at, error = "ok", None, None
    model = opt = None
    last: dict = {}   # the latest evaluation, reused for the final metrics
    first: dict = {}  # the step-0 losses, the reference of EXPLODED

    def record_point(step: int) -> None:
        if not _params_finite(params):
            raise _Diverged(step)
        # Only the final point keeps the train metric; elsewhere it would be discarded.
        with _EvalParams(opt):
            train = _evaluate(problem, model, "train", metric=step == spec.steps)
            val = _evaluate(problem, model, "val")
        if not (_finite(train["loss"]) and _finite(val["loss"])):
            raise _Diverged(step)
        first.setdefault("train", train["loss"])
        first.setdefault("val", val["loss"])
        if _exploded(train["loss"], first["train"]) or _exploded(val["loss"], first["val"]):
            raise _Diverged(step)
        last.update(step=step, train=train, val=val)
        curves["step"].append(step)
        curves["train_loss"].append(train["loss"])
        curves["val_loss"].append(val["loss"])
        curves["val_metric"].append(val["metric"])
        curves["lr"].append(float(opt.param_groups[0]["lr"]))

    try:
        model = problem.model(spec.seed)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        entry, opt = _optimizer(spec, model, params)
        scheduler = None
        if spec.schedule != "constant":
            schedule = optimlab.schedules.by_name(spec.schedule, spec.steps)
            scheduler = optimlab.LRScheduler(opt, schedule)
        if trajectory is not None:
            trajectory.append(_position(params))
        record_point(0)
        scalar = None
        for step in range(spec.steps):
            batch = problem.batch(step, spec.seed)
            t0 = time.perf_counter()
            evaluations = 0

            def closure():
                nonlocal scalar, evaluations
                # What opt.zero_grad(set_to_none=True) does, without its profiler/dynamo
                # wrappers (~10% of a tiny model's step); every param is in the optimizer.
                for p in params:
                    p.grad = None
                loss = problem.loss(model, batch)
                if scalar is None:
                    scalar = loss.numel() == 1
                evaluations += 1
                if evaluations == 1 and not (math.isfinite(loss.item()) if scalar
                                             else bool(torch.isfinite(loss.detach()).all())):
                    raise _Diverged(step)  # (a line search's trial points may overshoot)
                loss.backward()
                if entry.sparse_grads:  # SparseAdam: exactly-zero entries are not stepped
                    for p in params:
                        if p.grad is not None and not p.grad.is_sparse:
                            p.grad = p.grad.to_sparse()
                return loss

            if entry.needs_closure:  # LBFGS re-evaluates the loss on this step's batch
                opt.step(closure)
            else:
                closure()
                opt.step()
            step_times.append(time.perf_counter() - t0)
            if scheduler is not None:
                scheduler.step()
            done = step + 1
            # Parameters are checked at evaluation points only (it costs ~10% of a small
            # model's step); a non-finite parameter shows up in the next step's loss anyway.
            if trajectory is not None:
                xy = _position(params)
                if not all(map(math.isfinite, xy)):
                    raise _Diverged(done)
                trajectory.append(xy)
            if done % every == 0 or done == spec.steps:
                record_point(done)
    except _Diverged as exc:
        status, diverged_at = "diverged", exc.step
    except Exception as exc:  # any failure inside training is an outcome, not a crash
        status, error = "error", f"{type(exc).__name__}: {exc}"

    final = _no_result(diverged_at, error)
    if status == "ok":
        try:
            with _EvalParams(opt):
                if last.get("step") == spec.steps:
                    train, val = last["train"], last["val"]
                else:
                    train = _evaluate(problem, model, "train")
                    val = _evaluate(problem, model, "val")
                test = _evaluate(problem, model, "test")
        except Exception as exc:
            status, error = "error", f"{type(exc).__name__}: {exc}"
            final["error"] = error
        else:
            if not all(_finite(s["loss"]) for s in (train, val, test)) or \
                    _exploded(test["loss"], first.get("val")):
                status, final["diverged_at"] = "diverged", spec.steps
            else:
                final.update(train_loss=train["loss"], val_loss=val["loss"],
                             test_loss=test["loss"], train_metric=train["metric"],
                             val_metric=val["metric"], test_metric=test["metric"])
                if problem.optimum is not None:
                    final["gap"] = train["loss"] - problem.optimum
    if problem.target is not None:
        final["steps_to_target"] = next(
            (s for s, l in zip(curves["step"], curves["train_loss"]) if l <= problem.target),
            None)

    return RunRecord(
        spec=spec, status=status, final=final, curves=curves,
        seconds=time.perf_counter() - start,
        seconds_per_step=statistics.median(step_times) if step_times else 0.0,
        trajectory=trajectory, versions=versions(),
    )
