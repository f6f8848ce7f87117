"""Param groups from an ``nn.Module``: no weight decay on biases and norms, lr multipliers,
layer-wise lr decay.

Every trainable parameter (``requires_grad=True``) gets

    lr = lr * layer_decay ** (L - 1 - layer) * multiplier(name)
    weight_decay = 0.0 if exempt(name) else weight_decay

and parameters with equal ``(lr, weight_decay)`` share a group. Weight decay on biases and
normalisation gains only pulls them toward 0, which is not a sensible prior for them
(Loshchilov & Hutter 2019; Goyal et al. 2017, "no bias decay"). Layer-wise lr decay gives
lower layers smaller steps when fine-tuning (Howard & Ruder 2018, "discriminative
fine-tuning"; Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Mapping, Sequence

from torch import nn

__all__ = ["param_groups", "NORM_TYPES"]

#: Modules whose parameters (gains and shifts) are never weight-decayed. Extend if needed.
NORM_TYPES: tuple = tuple(t for t in (
    nn.modules.batchnorm._BatchNorm,         # BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants
    nn.modules.instancenorm._InstanceNorm,   # InstanceNorm1d/2d/3d, lazy variants
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    getattr(nn, "RMSNorm", None),            # torch >= 2.4
) if t is not None)


def param_groups(model: nn.Module, *, lr: float | None = None, weight_decay: float | None = None,
                 no_decay: bool | Iterable[str] = True,
                 lr_multipliers: Mapping[str, float] | None = None,
                 layer_decay: float | None = None,
                 layers: Sequence[str | Sequence[str]] | None = None) -> list[dict]:
    """Torch param groups for ``model``'s trainable parameters.

    Args:
        lr: base learning rate written into every group; ``None`` leaves ``lr`` out (the
            optimizer's default applies), which ``lr_multipliers``/``layer_decay`` forbid.
        weight_decay: written into the decayed group(s); ``None`` leaves it out (optimizer
            default). Exempt parameters always get ``weight_decay=0.0``.
        no_decay: ``True``: exempt all parameters of :data:`NORM_TYPES` modules and every 1-D
            parameter whose name ends in ``bias``. ``False``: exempt nothing. An iterable of
            glob patterns: the ``True`` rule plus names matching any pattern
            (e.g. ``["*pos_embed", "*.cls_token"]``).
        lr_multipliers: ``{glob: factor}`` on qualified names (``fnmatch``, case-sensitive);
            the first matching pattern wins, e.g. ``{"head.*": 10.0}``.
        layer_decay: layer-wise lr decay ``d``: the top layer gets ``lr``, the one below
            ``lr * d``, then ``lr * d**2``, ... Layers are, bottom to top, the model's own
            direct parameters (if any), then its top-level children owning parameters, in
            registration order. Frozen parameters count when defining layers, so freezing
            does not shift the others' lr.
        layers: explicit layers, bottom to top, instead: each entry is a name prefix or a
            tuple of them; a parameter belongs to the layer of the longest prefix matching
            it (``name == prefix`` or ``name.startswith(prefix + ".")``). Every trainable
            parameter must match one.

    Groups are plain dicts (``params`` and, when set, ``lr``/``weight_decay``), ordered by
    first appearance in ``model.named_parameters()``; that order is kept within groups.

    >>> opt = optimlab.AdamW(param_groups(model, lr=1e-3, weight_decay=0.05,
    ...                                   lr_multipliers={"head.*": 10.0}), lr=1e-3)
    """
    if lr is None and (lr_multipliers or layer_decay is not None):
        raise ValueError("lr_multipliers and layer_decay need a base lr: pass lr=... to "
                         "param_groups (the optimizer's default lr is not known here)")
    if layer_decay is not None and not layer_decay > 0:
        raise ValueError(f"layer_decay must be > 0, got {layer_decay!r}")
    if layers is not None and layer_decay is None:
        raise ValueError("layers= only has an effect with layer_decay=...")
    multipliers = dict(lr_multipliers or {})
    if any(not m >= 0 for m in multipliers.values()):
        raise ValueError(f"lr multipliers must be >= 0, got {multipliers}")

    named = list(model.named_parameters())
    exempt = _exempt(model, named, no_decay)
    depth, n_layers = _layers(model, named, layers) if layer_decay is not None else ({}, 1)

    groups: dict[tuple, dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        group: dict = {"params": []}
        if lr is not None:
            factor = next((m for pat, m in multipliers.items() if fnmatchcase(name, pat)), 1.0)
            if layer_decay is not None:
                factor *= layer_decay ** (n_layers - 1 - depth[name])
            group["lr"] = lr * factor
        if id(p) in exempt:
            group["weight_decay"] = 0.0
        elif weight_decay is not None:
            group["weight_decay"] = weight_decay
        key = (group.get("lr"), group.get("weight_decay"))
        groups.setdefault(key, group)["params"].append(p)
    return list(groups.values())


def _exempt(model: nn.Module, named: list, no_decay) -> set[int]:
    """ids of the parameters that get no weight decay."""
    if no_decay is False:
        return set()
    patterns = () if no_decay is True else tuple(no_decay)
    exempt = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES)
              for p in m.parameters(recurse=False)}
    for name, p in named:
        if (p.ndim == 1 and name.endswith("bias")) or any(fnmatchcase(name, pat) for pat in patterns):
            exempt.add(id(p))
    return exempt


def _layers(model: nn.Module, named: list, layers) -> tuple[dict[str, int], int]:
    """Each parameter name's layer index (0 = bottom) and the number of layers."""
    if layers is None:
        prefixes = [name for name, child in model.named_children()
                    if next(child.parameters(), None) is not None]
        own = [name for name, _ in model.named_parameters(recurse=False)]
        entries = ([tuple(own)] if own else []) + [(p,) for p in prefixes]
    else:
        entries = [(e,) if isinstance(e, str) else tuple(e) for e in layers]
    depth = {}
    for name, _ in (item for item in named if item[1].requires_grad):
        best = max(((len(pre), i) for i, entry in enumerate(entries) for pre in entry
                    if name == pre or name.startswith(pre + ".")), default=None)
        if best is None:
            raise ValueError(f"parameter {name!r} is in none of the layers {entries}")
        depth[name] = best[1]
    return depth, len(entries)
