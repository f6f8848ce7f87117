"""Several optimizers over disjoint parameters, stepped as one; Muon's AdamW-for-the-rest recipe.

``torch.optim.Muon`` takes 2-D parameters only: "Muon is an optimizer for 2D parameters of
neural network hidden layers. Other parameters, such as bias, and embedding, should be
optimized by a standard method such as AdamW" (its docstring, which splits on
``p.ndim == 2``). :func:`muon_param_groups` makes that split, :class:`Combined` steps the
two optimizers as one, and :func:`with_adamw_for_the_rest` does both.
"""

from __future__ import annotations

from collections import ChainMap

import torch
from torch import nn
from torch.optim import Optimizer

from .groups import param_groups

__all__ = ["Combined", "muon_param_groups", "with_adamw_for_the_rest"]


class Combined(Optimizer):
    """Optimizers over disjoint parameters, used as one optimizer.

    ``param_groups`` lists every part's groups (the same dicts, so an lr scheduler or a
    write to ``group["lr"]`` reaches the part that owns the group; read afresh at each
    access, so also after ``load_state_dict``); ``add_param_group`` goes to a part
    (``opt.optimizers[i].add_param_group``); ``step(closure)``
    evaluates the closure once and steps each part; ``state`` reads every part's state;
    ``state_dict()`` is ``{"optimizers": [each part's state_dict]}``; ``train()``/``eval()``
    reach the parts that have them (Schedule-Free).

    >>> muon_groups, adamw_groups = optimlab.muon_param_groups(model)
    >>> opt = optimlab.Combined(optimlab.Muon(muon_groups, lr=0.02),
    ...                         optimlab.AdamW(adamw_groups, lr=3e-4))
    """

    def __init__(self, *optimizers: Optimizer):
        if not optimizers:
            raise ValueError("Combined needs at least one optimizer")
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("the optimizers of a Combined must not share parameters")
        super().__init__(params, {})
        self.optimizers = list(optimizers)

    # ``param_groups`` and ``state`` are read from the parts at each access: a part's
    # ``load_state_dict`` or ``add_param_group`` replaces its groups and state, and a
    # scheduler holding this optimizer must still reach them. torch.optim.Optimizer's
    # ``__init__`` assigns both before the parts are known; those go to ``_unparted``.
    @property
    def param_groups(self) -> list:
        parts = self.__dict__.get("optimizers")
        if parts is None:
            return self.__dict__.setdefault("_unparted", {}).setdefault("param_groups", [])
        return [g for o in parts for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, groups) -> None:
        self._set_unparted("param_groups", groups)

    @property
    def state(self):
        parts = self.__dict__.get("optimizers")
        if parts is None:
            return self.__dict__.setdefault("_unparted", {}).setdefault("state", {})
        return ChainMap(*(o.state for o in parts))

    @state.setter
    def state(self, state) -> None:
        self._set_unparted("state", state)

    def _set_unparted(self, key, value) -> None:
        if "optimizers" in self.__dict__:
            raise AttributeError(f"a Combined's {key} are its parts'; set them on "
                                 f"opt.optimizers[i]")
        self.__dict__.setdefault("_unparted", {})[key] = value

    def add_param_group(self, param_group: dict) -> None:
        """Refused once constructed: which part should own the group? Add it to that part,
        ``opt.optimizers[i].add_param_group(group)``; this optimizer then lists it."""
        if "optimizers" not in self.__dict__:   # torch.optim.Optimizer.__init__
            return super().add_param_group(param_group)
        raise ValueError("a Combined steps its parts' groups: add the group to the part that "
                         "should own it, opt.optimizers[i].add_param_group(group)")

    @torch.no_grad()
    def step(self, closure=None):
        """Evaluate ``closure`` (if given) once, then step every part; returns its loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict["optimizers"]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"state_dict has {len(parts)} optimizers, this Combined "
                             f"{len(self.optimizers)}")
        for o, sd in zip(self.optimizers, parts):
            o.load_state_dict(sd)

    def train(self):
        for o in self.optimizers:
            if callable(getattr(o, "train", None)):
                o.train()

    def eval(self):
        for o in self.optimizers:
            if callable(getattr(o, "eval", None)):
                o.eval()


def muon_param_groups(model: nn.Module, *, weight_decay: float | None = None) -> tuple[list, list]:
    """``(matrix_groups, other_groups)``: the model's trainable 2-D parameters (hidden weight
    matrices; embeddings excluded) and everything else, as torch.optim.Muon's docs split them.

    Both sides keep :func:`optimlab.param_groups`' groups (no weight decay on biases and
    norms); ``weight_decay`` as there (``None``: each optimizer's default).
    """
    embeddings = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                  for p in m.parameters(recurse=False)}
    matrices, others = [], []
    for group in param_groups(model, weight_decay=weight_decay):
        is_matrix = [p.ndim == 2 and id(p) not in embeddings for p in group["params"]]
        mine = [p for p, m in zip(group["params"], is_matrix) if m]
        rest = [p for p, m in zip(group["params"], is_matrix) if not m]
        if mine:
            matrices.append({**group, "params": mine})
        if rest:
            others.append({**group, "params": rest})
    return matrices, others


def with_adamw_for_the_rest(build, model: nn.Module, **hyperparameters) -> Optimizer:
    """``build(matrix_groups, **hyperparameters)`` for the 2-D weights and AdamW (its
    defaults, with the same ``lr`` and ``weight_decay`` when given) for the rest, as one
    :class:`Combined`; a single optimizer when one side has no parameters."""
    from .optimizers import AdamW

    matrices, others = muon_param_groups(model, weight_decay=hyperparameters.get("weight_decay"))
    shared = {k: v for k, v in hyperparameters.items() if k in ("lr", "weight_decay")}
    parts = ([build(matrices, **hyperparameters)] if matrices else []) + \
        ([AdamW(others, **shared)] if others else [])
    if not parts:
        raise ValueError("the model has no trainable parameters")
    return parts[0] if len(parts) == 1 else Combined(*parts)
