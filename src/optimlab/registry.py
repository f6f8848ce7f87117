"""The registry: one table of every named optimizer, read by the factory, the tests,
the docs and the lab. Register a new entry here and it is tested everywhere."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch

from . import optimizers as _o
from . import optimizers_torch_extra as _t
from . import optimizers_modern as _m
from . import optimizers_reductions as _r
from .engine import RuleOptimizer
from .lbfgs import LBFGS
from .sparse_adam import SparseAdam


@dataclass(frozen=True)
class Entry:
    """A named optimizer: its class, preset arguments, torch.optim twin and variants.

    ``variants`` are flag combinations the parity tests sweep (on top of ``preset``);
    ``test_lr`` is a learning rate at which the parity problem is well-behaved.
    """

    name: str
    cls: type
    summary: str
    paper: str
    preset: dict = field(default_factory=dict)
    torch_cls: type | None = None
    variants: tuple = ({},)
    test_lr: float = 1e-2
    aliases: tuple = ()
    #: named sets the entry belongs to besides "all" (the lab's ``--optimizers classic``, ...)
    tags: tuple = ()
    #: builds the authors' published implementation (a test-only dependency), for entries
    #: torch.optim lacks: ``reference(params, **hyperparameters) -> torch.optim.Optimizer``
    reference: object = None
    #: ``step`` needs a closure that re-evaluates the loss (LBFGS); the lab's runner passes one
    needs_closure: bool = False
    #: takes sparse gradients only (SparseAdam); the lab hands it its dense grads in sparse
    #: layout, so entries with an exactly zero gradient are skipped
    sparse_grads: bool = False
    #: takes 2-D parameters only (Muon): ``create`` on a model, and the lab, give it the
    #: model's 2-D weights and AdamW the rest (:func:`optimlab.muon_param_groups`)
    matrices_only: bool = False
    #: what the lab passes instead of the class defaults, with the reason in a comment
    lab_preset: dict = field(default_factory=dict)

    @property
    def is_rule(self) -> bool:
        """Whether the class is a :class:`~optimlab.engine.RuleOptimizer` (one rule, run by the
        engine and its backends) rather than an optimizer with its own ``step``."""
        return issubclass(self.cls, RuleOptimizer)

    def build(self, params, **hyperparameters):
        return self.cls(params, **{**self.preset, **hyperparameters})

    def build_torch(self, params, **hyperparameters):
        """The torch.optim equivalent (without optimlab-only arguments)."""
        kwargs = {**self.preset, **hyperparameters}
        kwargs.pop("bias_correction", None)
        if self.cls is _o.Momentum or self.cls is _o.NAG:
            kwargs.setdefault("momentum", 0.9)
            kwargs.setdefault("nesterov", self.cls is _o.NAG)
        return self.torch_cls(params, **kwargs)

    def build_reference(self, params, **hyperparameters):
        """The authors' published implementation, with the preset applied."""
        return self.reference(params, **{**self.preset, **hyperparameters})


def published(module: str, name: str, **renames):
    """A ``reference`` builder: ``module.name`` (a test-only dependency, imported when called),
    taking optimlab's hyperparameter names; ``renames`` maps optimlab's name to the reference's
    where they differ (``decoupled_weight_decay="weight_decouple"``)."""

    def build(params, **hyperparameters):
        import importlib

        cls = getattr(importlib.import_module(module), name)
        return cls(params, **{renames.get(k, k): v for k, v in hyperparameters.items()})

    build.__qualname__ = f"published({module}.{name})"
    build.renames = renames
    return build


def _where_torch_takes(torch_cls, *variants) -> tuple:
    """The ``variants`` the installed torch's class accepts (newer arguments, such as LBFGS's
    ``maximize`` and Muon's ``"spectral_unclamped"`` from torch 2.14 on): swept against torch
    where it has them; tests/test_own_step.py and test_reductions.py check them on any torch."""
    def takes(variant):
        try:
            torch_cls([torch.zeros(2, 2, requires_grad=True)], **variant)
        except (TypeError, ValueError):
            return False
        return True
    return tuple(v for v in variants if takes(v))


_WD = {"weight_decay": 0.1}
_MAX = {"maximize": True}

CLASSIC = (
    Entry("sgd", _o.SGD, "Plain (mini-batch) stochastic gradient descent",
          "Robbins & Monro 1951", torch_cls=torch.optim.SGD, test_lr=0.05,
          variants=({}, _WD, _MAX, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.5},
                    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01})),
    Entry("momentum", _o.Momentum, "SGD with heavy-ball momentum 0.9", "Polyak 1964",
          torch_cls=torch.optim.SGD, test_lr=0.02,
          variants=({}, {"dampening": 0.1}, {"weight_decay": 0.01, "maximize": True})),
    Entry("nesterov", _o.NAG, "SGD with Nesterov momentum 0.9 (NAG)", "Sutskever et al. 2013",
          torch_cls=torch.optim.SGD, test_lr=0.02, aliases=("nag",),
          variants=({}, {"weight_decay": 0.01, "maximize": True}, {"momentum": 0.5})),
    Entry("adagrad", _o.Adagrad, "Per-coordinate steps from the sum of squared gradients",
          "Duchi, Hazan & Singer 2011", torch_cls=torch.optim.Adagrad, test_lr=0.1,
          variants=({}, {"lr_decay": 0.01}, {"initial_accumulator_value": 0.1}, _WD, _MAX)),
    Entry("rmsprop", _o.RMSprop, "Divide by a running RMS of recent gradients",
          "Tieleman & Hinton 2012", torch_cls=torch.optim.RMSprop, test_lr=1e-3,
          variants=({}, {"centered": True}, {"momentum": 0.9}, {"alpha": 0.9},
                    {"centered": True, "momentum": 0.9, "weight_decay": 0.01}, _MAX)),
    Entry("adadelta", _o.Adadelta, "Ratio of running RMS of updates and of gradients",
          "Zeiler 2012", torch_cls=torch.optim.Adadelta, test_lr=1.0,
          variants=({}, {"rho": 0.95, "weight_decay": 0.01}, _MAX, {"eps": 1e-4})),
    Entry("adam", _o.Adam, "Momentum plus RMS scaling, with bias correction",
          "Kingma & Ba 2015", torch_cls=torch.optim.Adam, test_lr=1e-2,
          variants=({}, _WD, {"decoupled_weight_decay": True, "weight_decay": 0.1}, _MAX,
                    {"betas": (0.8, 0.99), "eps": 1e-6})),
    Entry("amsgrad", _o.Adam, "Adam with a non-decreasing second moment (AMSGrad)",
          "Reddi, Kale & Kumar 2018", preset={"amsgrad": True}, torch_cls=torch.optim.Adam,
          test_lr=1e-2, variants=({}, _WD, _MAX, {"betas": (0.9, 0.9)})),
    Entry("adamw", _o.AdamW, "Adam with decoupled weight decay", "Loshchilov & Hutter 2019",
          torch_cls=torch.optim.AdamW, test_lr=1e-2,
          variants=({}, {"amsgrad": True}, {"weight_decay": 0.0}, _MAX)),
    Entry("adamax", _o.Adamax, "Adam with the infinity norm", "Kingma & Ba 2015, Sec. 7.1",
          torch_cls=torch.optim.Adamax, test_lr=1e-2, variants=({}, _WD, _MAX)),
    Entry("nadam", _o.NAdam, "Adam with Nesterov momentum", "Dozat 2016",
          torch_cls=torch.optim.NAdam, test_lr=1e-2,
          variants=({}, {"momentum_decay": 0.01}, _WD,
                    {"decoupled_weight_decay": True, "weight_decay": 0.1}, _MAX)),
)



# the articles' eleven: the lab's default set
CLASSIC = tuple(replace(e, tags=("classic",)) for e in CLASSIC)

# --- the rest of torch.optim, element-wise rules (RAdam, Rprop, ASGD) -----------------------
TORCH_ELEMENTWISE: tuple = tuple(replace(e, tags=("torch",)) for e in (
    Entry("radam", _t.RAdam, "Adam with a rectified, warm-started adaptive step", "Liu et al. 2020",
          torch_cls=torch.optim.RAdam, test_lr=1e-2,
          variants=({}, _WD, {"decoupled_weight_decay": True, "weight_decay": 0.1}, _MAX,
                    {"betas": (0.8, 0.99), "eps": 1e-6}, {"betas": (0.9, 0.6)})),
    Entry("rprop", _t.Rprop, "Sign-based steps with a per-weight step size (full batch)",
          "Riedmiller & Braun 1993", torch_cls=torch.optim.Rprop, test_lr=1e-2,
          variants=({}, _MAX, {"etas": (0.3, 1.5)}, {"step_sizes": (1e-3, 0.02)})),
    Entry("asgd", _t.ASGD, "SGD with a decaying step and iterate averaging",
          "Polyak & Juditsky 1992", torch_cls=torch.optim.ASGD, test_lr=0.05,
          variants=({}, _WD, _MAX, {"t0": 20}, {"lambd": 0.01, "alpha": 0.5, "t0": 50})),
))



# --- today's element-wise optimizers (Lion, AdaBelief, Adan) --------------------------------
MODERN_ELEMENTWISE: tuple = (
    # lion-pytorch's own decoupled_weight_decay=True (wd divided by the initial lr) is not the
    # paper's Program 1 (lr * wd); left at its default False, it is
    Entry("lion", _t.Lion, "Sign of interpolated momentum, found by program search",
          "Chen et al. 2023", test_lr=1e-2, tags=("modern",),
          reference=published("lion_pytorch", "Lion"),
          variants=({}, {"weight_decay": 0.1}, {"betas": (0.95, 0.98)}, _MAX)),
    Entry("adabelief", _m.AdaBelief, "Adam with the belief (g - m)^2 as second moment",
          "Zhuang et al. 2020", test_lr=1e-2, tags=("modern",),
          reference=published("pytorch_optimizer", "AdaBelief",
                              decoupled_weight_decay="weight_decouple", amsgrad="ams_bound"),
          variants=({}, _WD, {"decoupled_weight_decay": False, "weight_decay": 0.1},
                    {"amsgrad": True, "betas": (0.9, 0.9)}, _MAX, {"eps": 1e-4})),
    Entry("adan", _m.Adan, "Adaptive Nesterov momentum from gradient differences",
          "Xie et al. 2022", test_lr=1e-2, tags=("modern",),
          reference=published("pytorch_optimizer", "Adan", no_prox="weight_decouple"),
          variants=({}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "no_prox": True}, _MAX,
                    {"betas": (0.9, 0.8, 0.95)})),
)



# Schedule-Free: the paper's Algorithm 1 is the authors' AdamWScheduleFreePaper (their
# AdamWScheduleFree moves Adam's bias correction into the denominator)
_SF_SCHEDULE = ({"warmup_steps": 20}, {"r": 1.0, "weight_lr_power": 0.0})
MODERN_ELEMENTWISE += (
    Entry("schedule_free_adamw", _m.ScheduleFreeAdamW, "AdamW without a schedule: interpolation "
          "and averaging (train()/eval())", "Defazio et al. 2024", test_lr=1e-2, tags=("modern",),
          reference=published("schedulefree", "AdamWScheduleFreePaper"),
          variants=({}, *_SF_SCHEDULE, {"weight_decay": 0.1}, _MAX, {"betas": (0.5, 0.99)})),
    Entry("schedule_free_sgd", _m.ScheduleFreeSGD, "SGD without a schedule: interpolation and "
          "averaging (train()/eval())", "Defazio et al. 2024", test_lr=0.05, tags=("modern",),
          reference=published("schedulefree", "SGDScheduleFree"),
          variants=({}, *_SF_SCHEDULE, {"weight_decay": 0.1}, _MAX, {"momentum": 0.5})),
)


# --- rules with reductions or matrix products (Adafactor, Muon, LAMB, LARS, Prodigy) ---------
def _lamb_reference(params, bias_correction=False, clamp_value=10.0, **hyperparameters):
    """pytorch_optimizer.Lamb in the paper's form where it has one: weight decay inside the
    trust ratio (``weight_decouple=False``); ``adam_debias=True`` drops its division of the
    step by 1 - beta1^t, so it equals ``bias_correction=False`` (it cannot correct v: the
    paper's ``bias_correction=True`` is checked against the NumPy reference)."""
    from pytorch_optimizer import Lamb

    if bias_correction:
        raise ValueError("pytorch_optimizer.Lamb has no bias correction of v: use bias_correction=False")
    opt = Lamb(params, weight_decouple=False, adam_debias=True, **hyperparameters)
    opt.clamp = clamp_value
    return opt


def _lars_reference(params, exclude_vectors=False, **hyperparameters):
    """pytorch_optimizer.LARS, which always gives tensors of dimension < 2 plain momentum SGD
    (``exclude_vectors=True``; the paper's every-layer form is checked against NumPy)."""
    from pytorch_optimizer import LARS

    if not exclude_vectors:
        raise ValueError("pytorch_optimizer.LARS always excludes vectors: use exclude_vectors=True")
    return LARS(params, **hyperparameters)


class _PerGroup(torch.optim.Optimizer):
    """One reference optimizer per param group (prodigyopt shares its d across groups and
    refuses different lrs; optimlab estimates d per group)."""

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.state = {}

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()


def _prodigy_reference(params, maximize=False, foreach=None, fused=None, **hyperparameters):
    """The authors' prodigyopt.Prodigy, one per param group. The paper puts this step's d in
    the eps term and, with beta1 = 0, on g; prodigyopt the updated d: the reference test uses
    a negligible eps and beta1 > 0 (both forms are checked against NumPy)."""
    import prodigyopt

    groups = list(params)
    groups = groups if groups and isinstance(groups[0], dict) else [{"params": groups}]
    return _PerGroup([prodigyopt.Prodigy([g], **hyperparameters) for g in groups])


_NO_BC = {"bias_correction": False}
_EXCL = {"exclude_vectors": True}
_TINY_EPS = {"eps": 1e-300}

WITH_REDUCTIONS: tuple = (
    Entry("adafactor", _r.Adafactor, "Factored second moment, relative step size",
          "Shazeer & Stern 2018", torch_cls=torch.optim.Adafactor, test_lr=1e-2, tags=("torch",),
          variants=({}, {"weight_decay": 0.1}, _MAX, {"beta2_decay": -0.5, "d": 2.0},
                    {"eps": (1e-30, 1e-3)})),
    Entry("muon", _r.Muon, "Momentum orthogonalised by Newton-Schulz (2-D params only)",
          "Jordan et al. 2024", torch_cls=torch.optim.Muon, test_lr=2e-3, tags=("torch", "modern"),
          matrices_only=True,
          # the lab tunes one lr for Muon and the AdamW on the other params: Moonshot's
          # adjustment (Liu et al. 2025) matches Muon's update RMS to AdamW's, so one lr fits both
          lab_preset={"adjust_lr_fn": "match_rms_adamw"},
          variants=({}, {"nesterov": False}, {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
                    {"momentum": 0.9, "ns_steps": 3},
                    *_where_torch_takes(torch.optim.Muon, {"adjust_lr_fn": "spectral_unclamped"}))),
    Entry("lamb", _r.LAMB, "Adam's direction with a layer-wise trust ratio",
          "You et al. 2020", test_lr=1e-2, tags=("modern",), reference=_lamb_reference,
          variants=(_NO_BC, {**_NO_BC, **_WD}, {**_NO_BC, **_MAX},
                    {**_NO_BC, "betas": (0.8, 0.99), "eps": 1e-8, "clamp_value": 1.0})),
    Entry("lars", _r.LARS, "Momentum SGD with a layer-wise trust ratio",
          "You, Gitman & Ginsburg 2017", test_lr=0.02, tags=("modern",), reference=_lars_reference,
          variants=(_EXCL, {**_EXCL, "weight_decay": 0.01, "trust_coefficient": 0.02}, {**_EXCL, **_MAX},
                    {**_EXCL, "nesterov": True, "dampening": 0.0}, {**_EXCL, "momentum": 0.0},
                    {**_EXCL, "momentum": 0.5, "dampening": 0.5})),
    Entry("prodigy", _r.Prodigy, "Adam with a learning-rate-free step size (distance estimate d)",
          "Mishchenko & Defazio 2024", test_lr=1.0, tags=("modern",), reference=_prodigy_reference,
          variants=(_TINY_EPS, {**_TINY_EPS, **_WD}, {**_TINY_EPS, "use_bias_correction": True},
                    {**_TINY_EPS, "weight_decay": 0.1, "decouple": False}, {**_TINY_EPS, **_MAX},
                    {**_TINY_EPS, "safeguard_warmup": True, "d_coef": 0.5, "growth_rate": 1.05})),
)



# --- optimizers with their own step (SparseAdam, LBFGS, Schedule-Free) ----------------------
OWN_STEP: tuple = (
    Entry("sparse_adam", SparseAdam, "Adam on the entries a sparse gradient touches, dense state",
          "Kingma & Ba 2015; torch.optim.SparseAdam", torch_cls=torch.optim.SparseAdam,
          test_lr=1e-2, aliases=("sparseadam",), tags=("torch",), sparse_grads=True,
          variants=({}, _MAX, {"betas": (0.8, 0.99), "eps": 1e-6})),
    Entry("lbfgs", LBFGS, "Limited-memory BFGS, optionally with a strong-Wolfe line search",
          "Liu & Nocedal 1989; Nocedal & Wright 2006, Alg. 7.5", torch_cls=torch.optim.LBFGS,
          test_lr=0.5, aliases=("l-bfgs",), tags=("torch",), needs_closure=True,
          variants=({"max_iter": 2}, {"max_iter": 3, "line_search_fn": "strong_wolfe"},
                    {"max_iter": 4, "history_size": 5, "line_search_fn": "strong_wolfe"},
                    {"max_iter": 1, "history_size": 3}, {}, {"line_search_fn": "strong_wolfe"},
                    *_where_torch_takes(torch.optim.LBFGS, {"max_iter": 3, "maximize": True},
                                        {"line_search_fn": "strong_wolfe", "maximize": True})),
          # one gradient evaluation per step, as every other optimizer in a comparison gets;
          # torch's default (20 iterations, 25 evaluations) would get 20x the budget
          lab_preset={"max_iter": 1}),
)



ENTRIES = CLASSIC + TORCH_ELEMENTWISE + MODERN_ELEMENTWISE + WITH_REDUCTIONS + OWN_STEP
#: entries run by the engine (one rule): the fused, multi-tensor and reference-path tests
RULE_ENTRIES = tuple(e for e in ENTRIES if e.is_rule and not e.matrices_only)
#: rule entries whose rule is element-wise: the C kernel's and the multi-tensor path's tests
#: (a rule with reductions or matrix products runs on tensors; the tracer refuses it)
ELEMENTWISE_ENTRIES = tuple(e for e in RULE_ENTRIES if e.cls.rule.elementwise)
#: rule entries with a torch.optim twin: the parity, state_dict, DCP and error-message tests
TORCH_ENTRIES = tuple(e for e in RULE_ENTRIES if e.torch_cls is not None)
#: entries with their own ``step`` and a torch.optim twin (SparseAdam, LBFGS): tests/test_own_step.py
OWN_TORCH_ENTRIES = tuple(e for e in ENTRIES if not e.is_rule and e.torch_cls is not None)

REGISTRY = {entry.name: entry for entry in ENTRIES}
_ALIASES = {alias: entry.name for entry in ENTRIES for alias in entry.aliases}


def names() -> list[str]:
    """Registered optimizer names, in registry order."""
    return list(REGISTRY)


def lookup(name: str) -> Entry:
    """The entry for ``name`` (case-insensitive, aliases allowed); ValueError lists valid names."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in REGISTRY:
        valid = ", ".join(names() + sorted(_ALIASES))
        raise ValueError(f"Unknown optimizer {name!r}; valid names: {valid}")
    return REGISTRY[key]


#: the baselines a "modern" comparison measures the new optimizers against
MODERN_BASELINES = ("adamw", "momentum")


def sets() -> dict[str, list[str]]:
    """The named optimizer sets (``optimlab compare --optimizers classic|modern|torch|all``).

    classic: the articles' eleven (tag "classic", the lab's default); modern: AdamW and SGD
    with momentum as baselines plus every entry tagged "modern"; torch: every entry with a
    torch.optim twin; all: every entry.
    """
    return {
        "classic": [e.name for e in ENTRIES if "classic" in e.tags],
        "modern": [e.name for e in ENTRIES if e.name in MODERN_BASELINES or "modern" in e.tags],
        "torch": [e.name for e in ENTRIES if e.torch_cls is not None],
        "all": names(),
    }


def create(name: str, params_or_model, **hyperparameters) -> torch.optim.Optimizer:
    """Build an optimizer by name, Keras-style.

    ``params_or_model`` is anything torch.optim accepts, or an ``nn.Module``: then its
    trainable parameters are grouped by :func:`optimlab.param_groups` (no weight decay on
    biases and normalisation weights), or passed as one list to a class without
    ``weight_decay`` (LBFGS, Rprop, SparseAdam). Unknown hyperparameters raise ``TypeError``.

    An entry that takes 2-D parameters only (Muon), given a model, gets the model's 2-D
    weights and AdamW the rest, both at the same ``lr`` (:func:`optimlab.with_adamw_for_the_rest`).

    >>> opt = optimlab.create("adamw", model, lr=3e-4, weight_decay=0.05)
    """
    entry = lookup(name)
    params = params_or_model
    if isinstance(params_or_model, torch.nn.Module) and entry.matrices_only:
        from .combined import with_adamw_for_the_rest

        return with_adamw_for_the_rest(entry.build, params_or_model, **hyperparameters)
    if isinstance(params_or_model, torch.nn.Module):
        from .groups import param_groups

        if "weight_decay" in inspect.signature(entry.cls).parameters:
            params = param_groups(params_or_model,
                                  weight_decay=hyperparameters.get("weight_decay"))
        else:   # no decay to exempt anything from (LBFGS takes one group only)
            params = [p for p in params_or_model.parameters() if p.requires_grad]
    return entry.build(params, **hyperparameters)
