"""``torch.compile(opt.step)`` with a per-step cosine schedule: optimlab's four compiled modes vs eager vs torch.

For each optimizer and param set, one process steps (each method on its own copy of the
params, the same grads, a ``CosineAnnealingLR`` stepped after every step):

* ``optimlab eager``: the default step (the C kernel);
* ``step op``: ``torch.compile(opt.step)`` in ``compiled.MODE = "step_op"`` (the default): the
  compiled frame has no graph; its bytecode calls the eager step (a call Dynamo replays,
  :mod:`optimlab.fused.step_op`);
* ``one op``: the same mode where Dynamo does not replay that call (compiled under
  ``torch._dynamo.config.patch(reorderable_logging_functions=set())``): the whole eager step
  as one op, ``optimlab::step``, with no tensor in the graph;
* ``floor``: the ``step op`` frame with the step's work removed (the step finds an optimizer
  with nothing to step): what Dynamo's frame and the call cost by themselves;
* ``kernel``: ``MODE = "kernel"``: the C kernel called in the graph as the custom op
  ``optimlab::fused_step`` with every param, grad and state tensor as a graph input
  (:mod:`optimlab.fused.kernel_op`; what a compiled function that calls ``opt.step()`` among
  other work gets in the default mode); for a rule the kernel op does not take, its plan in
  that mode: the traced reference path, or (LAMB) the eager step as the op
  ``optimlab::group_step`` (:mod:`optimlab.fused.group_op`);
* ``printed``: ``MODE = "printed"``: the rule's graph printed as ``torch._foreach_*`` ops and
  fused by Inductor (:mod:`optimlab.fused.compiled`); likewise the traced reference path or
  (LAMB, RAdam) ``optimlab::group_step`` for the rules it does not print;
* ``kept out``: ``MODE = "kept_out"``: the eager step (C kernel) behind a graph break;
* ``torch compiled``: ``torch.compile`` of torch.optim's step, torch's recipe (Tensor ``lr``);
* ``torch eager best``: the fastest of torch.optim's for-loop/foreach/fused steps.

50 scheduled steps first count compilations (frames Dynamo compiled, from
``torch._dynamo.utils.counters``; ``recompiles`` are those after the first step), then
interleaved repetitions of at least 10 steps (and ~20 ms) time ``step()`` alone. ``--threads 1`` times with the
thread's CPU time (``time.thread_time``), steadier than wall time on a shared machine.

    python benchmarks/compile_step.py            # writes its section of BENCHMARKS.md
    python benchmarks/compile_step.py --quick    # small sizes, prints only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
import weakref

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, os.path.dirname(__file__))
import step_speed
from markdown_section import replace_section  # noqa: E402

from optimlab.fused import compiled  # noqa: E402
from optimlab.registry import REGISTRY  # noqa: E402

BEGIN, END = "<!-- compile-step: begin -->", "<!-- compile-step: end -->"
OPTIMIZERS = ("adamw", "adam", "momentum", "adagrad", "rmsprop", "nadam", "lion", "rprop")
#: param set -> (shapes, optimizers run on it by default: all of them where None)
SETS = {"10 x 32x32": ([(32, 32)] * 10, ("adamw", "adam", "momentum")),
        "20 x 256x256": ([(256, 256)] * 20, None),
        "32 transformer tensors (28M)": (None, ("adamw", "adam", "momentum"))}
MODES = ("step_op", "one_op", "kernel", "printed", "kept_out")
LABELS = {"step_op": "step op", "one_op": "one op", "kernel": "kernel", "printed": "printed",
          "kept_out": "kept out"}
_clock = [time.perf_counter]


def _frames() -> int:
    return counters["frames"]["ok"]


class Method:
    """One optimizer on its own params, its scheduler, and its compile counts."""

    def __init__(self, name, opt, params, compile_=False, mode="kernel"):
        self.name, self.opt, self.params, self.mode = name, opt, params, mode
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50)
        self.step = torch.compile(opt.step) if compile_ else opt.step
        self.compiles = self.recompiles = None

    def __call__(self):
        compiled.MODE = "step_op" if self.mode == "one_op" else self.mode
        self.step()

    def warm(self, steps=50):
        g0 = _frames()
        for i in range(steps):
            if self.mode == "one_op":  # compiled without the replayed call; guards ignore the config
                with torch._dynamo.config.patch(reorderable_logging_functions=set()):
                    self()
            else:
                self()
            self.sched.step()
            if i == 0:
                g1 = _frames()
        self.compiles, self.recompiles = _frames() - g0, _frames() - g1
        # timed at the lr of step 51, not cosine's 0 at step 50: prodigyopt skips its step at
        # lr 0, and the timed steps do not step the scheduler
        self.sched.step()


class _Nothing:
    """Stands in for the optimizer in ``optimlab::step``'s registry: a step with no group."""

    param_groups: list = []

    def step_groups(self, groups) -> None:
        pass


class Floor(Method):
    """``step_op``'s compiled frame with the step's work removed (after its 50 counted steps)."""

    def warm(self, steps=50):
        super().warm(steps)
        from optimlab.fused import step_op

        self.nothing = _Nothing()
        step_op._optimizers[id(self.opt)] = weakref.ref(self.nothing)


def methods(entry, shapes):
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]

    def params():
        ps = [b.clone().requires_grad_() for b in base]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps

    lr = entry.test_lr
    out = [Method("optimlab eager", entry.build(p := params(), lr=lr), p)]
    out += [Method(mode, entry.build(p := params(), lr=lr), p, compile_=True, mode=mode) for mode in MODES]
    out.append(Floor("floor", entry.build(p := params(), lr=lr), p, compile_=True, mode="step_op"))
    if entry.torch_cls is not None:  # else torch.optim has no such class (Lion): no torch compiled
        out.append(Method("torch compiled", entry.build_torch(p := params(), lr=torch.tensor(lr)), p,
                          compile_=True))
    best, best_t = None, None
    for name, opt in step_speed.torch_variants(entry, params(), {}).items():
        t = statistics.median(_timed(opt.step, 1) for _ in range(5))
        if best_t is None or t < best_t:
            best, best_t = (name, opt), t
    if best is not None:  # else torch.optim has no such class (LAMB, LARS)
        out.append(Method(f"torch eager ({best[0]})", best[1], None))
    return out


def bench(entry, shapes, reps):
    torch._dynamo.reset()  # every optimizer instance is a new entry in the step's cache
    ms = methods(entry, shapes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in ms:
            m.warm()
    ours = [w for w in caught if "optimlab" in (w.filename or "")]
    times = {m.name: [] for m in ms}
    # at least 10 steps and ~20 ms per timing: 10 steps of a 50 us step are too short a
    # window against scheduling noise on a shared machine
    steps = max(10, min(400, int(0.02 / max(_timed(ms[0], 5), 1e-6))))
    for rep in range(reps):
        for i in range(len(ms)):
            m = ms[(i + rep) % len(ms)]
            times[m.name].append(_timed(m, steps))
    compiled.MODE = compiled.MODES[0]
    return ms, times, ours


def _timed(fn, n: int) -> float:
    clock = _clock[0]
    t = clock()
    for _ in range(n):
        fn()
    return (clock() - t) / n


HEADER = ("| optimizer | params | optimlab eager us | "
          + " | ".join(f"{LABELS[m]} us (compiles/recompiles)" for m in MODES)
          + " | floor us | torch compiled us (compiles/recompiles) | torch eager best us | "
          + " | ".join(f"{LABELS[m]} / eager" for m in MODES)
          + " | step op / torch compiled |")


def row(name, set_name, ms, times, ours) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    by = {m.name: m for m in ms}

    def cell(k):
        if k not in by:
            return "-"
        m = by[k]
        return f"{med[k] * 1e6:.0f} ({m.compiles}/{m.recompiles})"

    def ratio(a, b):  # median of the per-repetition ratios
        if a not in times or b not in times:
            return "-"
        return f"{statistics.median(x / y for x, y in zip(times[a], times[b])):.2f}"

    eager_best = next((k for k in med if k.startswith("torch eager")), None)
    best_cell = f"{med[eager_best] * 1e6:.0f} ({eager_best[13:-1]})" if eager_best else "-"
    warn = f" ({len(ours)} optimlab warnings)" if ours else ""
    return (f"| {name}{warn} | {set_name} | {med['optimlab eager'] * 1e6:.0f} | "
            + " | ".join(cell(k) for k in MODES)
            + f" | {med['floor'] * 1e6:.0f} | {cell('torch compiled')}"
            + f" | {best_cell} | "
            + " | ".join(ratio(k, "optimlab eager") for k in MODES)
            + f" | {ratio('step_op', 'torch compiled')} |")


def run(optimizers, sets, reps, scale) -> list:
    lines = []
    print(HEADER, flush=True)
    for set_name, (shapes, names) in sets.items():
        shapes = shapes or step_speed.transformer_28m()
        shapes = [tuple(max(1, s // scale) for s in shape) for shape in shapes]
        for name in optimizers:
            if names is not None and name not in names and optimizers == OPTIMIZERS:
                continue
            line = row(name, set_name, *bench(REGISTRY[name], shapes, reps))
            lines.append(line)
            print(line, flush=True)
    return lines


def write_section(path, lines, started, load, wall, clock) -> None:
    section = [BEGIN, "## torch.compile(opt.step): compiled vs eager", "",
               f"Machine: {step_speed.machine()}; clock: {clock}.",
               f"Run: {started}, {wall / 60:.1f} min, load average {load[0]:.1f} before / "
               f"{os.getloadavg()[0]:.1f} after (shared machine; medians of interleaved repetitions).", "",
               "Generated by `python benchmarks/compile_step.py`. Per-step time of `step()` (us) after 50 steps "
               "with a per-step `CosineAnnealingLR`; `(compiles/recompiles)`: frames Dynamo compiled in those 50 "
               "steps / of them after the first step (SGD with momentum in the modes that trace the step: "
               "its buffer is created by the first step, a second graph, as for torch; `kept out`: the "
               "frames after its break). `step op` (the default where the compiled frame is `opt.step` "
               "itself): no graph, the frame's bytecode calls the eager step (a call Dynamo replays); "
               "`one op`: the same where Dynamo does not replay it, the whole eager step as one op, "
               "`optimlab::step`, with no tensor in the graph; `floor`: the `step op` frame with the "
               "step's work removed (Dynamo's frame, its guards and the call alone); "
               "`kernel`: the C kernel as the custom op `optimlab::fused_step` inside the graph, every "
               "param, grad and state tensor a graph input (what the default does inside a larger "
               "compiled function); `printed`: the rule's graph as `torch._foreach_*` ops fused by "
               "Inductor; `kept out`: the eager C-kernel step behind a graph break. `x / eager` = that mode's time / optimlab's eager time, the median of per-repetition "
               "ratios (<= 1: compiling does not slow the step). torch compiled uses torch's recipe, "
               "`lr=torch.tensor(lr)`.", "",
               HEADER, "|" + "---|" * (HEADER.count("|") - 1), *lines, "", END]
    replace_section(path, BEGIN, END, "\n".join(section))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes scaled down 16x, 3 reps, prints only")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads; 1: thread CPU time")
    ap.add_argument("--sets", default=None, help="comma-separated set names (default: all)")
    args = ap.parse_args(argv)
    started, load, t0 = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg(), time.perf_counter()
    optimizers = tuple(args.optimizers.split(","))
    optimizers = OPTIMIZERS if optimizers == OPTIMIZERS else optimizers
    clock = "wall time"
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.threads == 1:
            _clock[0], clock = time.thread_time, "the stepping thread's CPU time (1 thread)"
    sets = {k: v for k, v in SETS.items() if args.sets is None or k in args.sets.split(",")}
    lines = run(optimizers, sets, 3 if args.quick else args.reps, 16 if args.quick else 1)
    out = args.out or (None if args.quick else os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    if out:
        write_section(out, lines, started, load, time.perf_counter() - t0, clock)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
