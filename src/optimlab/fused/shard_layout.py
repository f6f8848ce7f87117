"""Which values of a traced graph are local blocks of a DTensor parameter's shards, and
where their local values are partial sums (for :mod:`.passes_shards`).

Which values are local blocks follows from their global shapes alone, right-aligned with
the parameter's: a dimension of the parameter's size that the parameter shards is this
rank's slice of it; a dimension of size 1 (a broadcast or reduced one) is whole on every
rank. So Adafactor's ``row_var`` (n, 1) is sharded like the rows and ``col_var`` (1, m) is
replicated: every rank adds the same column sums, so every rank holds the same, complete
``col_var``. The state stays DTensor; state created in another layout (``p.new_zeros``
makes both replicated; a checkpoint may hold any) is redistributed once to this one, so
``state_dict()``, ``get_optimizer_state_dict`` and DCP read the state as the step keeps it.

The graph is accepted only where this holds for each of its torch values: element-wise
calls, outer products (``(n, 1) @ (1, m)``), means along a dimension, state whose shape is
laid out as above. A parameter whose mesh placements are not ``Shard``/``Replicate`` (a
pending ``Partial``, FSDP2 + TP's strided shards), whose grad is not laid out like it, not
on CPU, or whose graph holds another call (Muon's Newton-Schulz), or a size-1 sharded
dimension with torch values in the graph (a (1, m) weight: its rows are on one rank only),
is left to the reference path, which runs on the DTensors themselves. Every choice here
depends on global shapes and placements only, the same on every rank, so the ranks call
the same collectives in the same order.
"""

from __future__ import annotations

import operator

import numpy as np

from .. import _reduce
from .passes_trace import REDUCTIONS, TORCH_OPS, _to

#: recorded calls whose value is element-wise in their arguments (a local block of local blocks)
_ELEMENTWISE = set(TORCH_OPS.values()) | {_reduce.lerp, _reduce.low_precision, _to}
_MEANS = (_reduce.mean, _reduce.mean_square)


def sharding(p):
    """``((param dim, mesh dims that shard it), ...)`` of the DTensor ``p``, or None where a
    placement is neither ``Shard`` nor ``Replicate``."""
    from torch.distributed.tensor import Replicate, Shard

    dims: dict = {}
    for k, placement in enumerate(p.placements):
        if type(placement) is Shard:
            dims.setdefault(placement.dim % max(p.dim(), 1), []).append(k)
        elif type(placement) is not Replicate:
            return None
    return tuple((d, tuple(ks)) for d, ks in sorted(dims.items()))


def _aligned(shape, param_shape) -> bool:
    """``shape`` broadcasts to the parameter's, right-aligned, each dim its size or 1."""
    offset = len(param_shape) - len(shape)
    return offset >= 0 and all(s in (1, param_shape[offset + j]) for j, s in enumerate(shape))


def _split_dims(shape, param_shape, sharding) -> dict:
    """The dims (negative) of a value of global ``shape`` that are local slices on this
    rank: {dim: the mesh dims sharding it}."""
    out = {}
    for d, ks in sharding:
        i = d - len(param_shape)
        if -i <= len(shape) and shape[i] == param_shape[d] > 1:
            out[i] = ks
    return out


class Sums:
    """Where a program's local values are partial sums: ``mesh_dims[node index]`` (the mesh
    dims to add over), ``means[node index] = (reduced dims, global count)`` for means along
    dims of a torch value that span ranks."""

    def __init__(self):
        self.mesh_dims: dict = {}
        self.means: dict = {}


def plan(prog, shape, sharding) -> Sums | None:
    """The partial sums of ``prog`` on shards of a parameter of global ``shape`` sharded as
    ``sharding``, or None where a value of its graph has no local form (module docstring)."""
    sums = Sums()
    whole = tuple(sorted({k for _, ks in sharding for k in ks}))
    tiny = any(shape[d] == 1 for d, _ in sharding)
    for n in prog.graph.nodes:
        if n.index not in prog.level:
            continue
        if n.op in REDUCTIONS:
            if whole:
                sums.mesh_dims[n.index] = whole
            continue
        if n.kind != "T":
            continue
        if tiny or not _aligned(tuple(n.meta.shape), shape):
            return None
        if n.op == "tin" or (n.op != "call" and n.op in TORCH_OPS):
            continue
        f, _, kws = n.fn
        metas = [prog.graph.meta_of(a) for a in n.args]
        if f is operator.matmul:
            a, b = (m.shape for m in metas)
            if len(a) < 2 or len(b) < 2 or a[-1] != 1 or b[-2] != 1:
                return None  # not an outer product: a contraction over a sharded dim
        elif f in _MEANS:
            x = tuple(metas[0].shape)
            dim = dict(kws).get("dim")
            dims = tuple(range(-len(x), 0)) if dim is None else ((dim - len(x) if dim >= 0 else dim),)
            split = _split_dims(x, shape, sharding)
            ks = tuple(sorted({k for d in dims for k in split.get(d, ())}))
            if ks:
                sums.mesh_dims[n.index] = ks
                sums.means[n.index] = (dims, float(np.prod([x[d] for d in dims])))
        elif f not in _ELEMENTWISE:
            return None
    return sums


def placements(shape, param, sharding):
    """The placements of a state of global ``shape`` laid out as the module docstring says."""
    from torch.distributed.tensor import Replicate, Shard

    out = [Replicate()] * param.device_mesh.ndim
    for i, ks in _split_dims(shape, tuple(param.shape), sharding).items():
        for k in ks:
            out[k] = Shard(len(shape) + i)
    return tuple(out)


__all__ = ["sharding", "plan", "placements", "Sums"]
