"""Tie-aware ranks: optimizers whose losses are equal, or that a verdict found
statistically indistinguishable, share one rank (fractional ranking keeps the sum of
ranks fixed, so mean ranks over problems stay fair)."""

from __future__ import annotations

import math

from .stats import INF, _close

__all__ = ["tie_ranks"]


def tie_ranks(values: dict, groups=None, method: str = "mean", rtol: float = 0.0) -> dict:
    """Ranks (1 = lowest value) where ties share a rank.

    values: {name: value}, lower is better; nan/None sort last as +inf.
    groups: optional iterable of name collections that share a rank (e.g. a
    verdict's tied group); each group is placed at its best member's value. A member
    joins only while the group is contiguous in value order: one that a non-member
    with a lower value precedes (not equal to the group's best) keeps its own rank, so
    no name ever ranks ahead of one with a lower value.
    Equal values (and group members) form one block; a block occupying positions
    i..j gets rank (i + j) / 2 with ``method="mean"`` (fractional ranking, keeps the
    sum of ranks fixed so mean ranks over problems stay fair) or i with
    ``method="min"`` (competition ranking, "1 1 3"). rtol: values within this relative
    distance of a block's lowest value join that block (0 = exact equality).
    """
    if method not in ("mean", "min"):
        raise ValueError(f"method must be 'mean' or 'min', got {method!r}")

    def val(x):
        try:
            x = float(x)
        except (TypeError, ValueError):
            return INF
        return INF if math.isnan(x) else x

    v = {k: val(x) for k, x in values.items()}
    block_of = {k: (k,) for k in v}
    for g in groups or ():
        members = tuple(sorted(_contiguous(v, g, rtol)))
        for k in members:
            block_of[k] = members
    blocks = {}
    for k, b in block_of.items():
        blocks[b] = min(v[m] for m in b)
    # Blocks with equal values (within rtol of the merged block's lowest) merge.
    merged = []
    for b, x in sorted(blocks.items(), key=lambda t: (t[1], t[0])):
        if merged and _close(merged[-1][0], x, rtol):
            merged[-1][1].extend(b)
        else:
            merged.append((x, list(b)))
    out, pos = {}, 1
    for _, ms in merged:
        members = sorted(set(ms))
        r = pos if method == "min" else pos + (len(members) - 1) / 2
        for m in members:
            out[m] = float(r)
        pos += len(members)
    return out


def _contiguous(v: dict, group, rtol: float) -> list:
    """The members of ``group`` that form one block from its lowest member on: the
    walk up the group's values stops at the first member that a non-member with a value
    between the group's lowest (not equal to it) and the member's own (inclusive)
    precedes."""
    members = sorted((k for k in group if k in v), key=lambda k: (v[k], k))
    if not members:
        return []
    lo = v[members[0]]
    others = [x for k, x in v.items() if k not in members]
    block = members[:1]
    for k in members[1:]:
        if any(x > lo and not _close(x, lo, rtol) and (x < v[k] or _close(x, v[k], rtol))
               for x in others):
            break
        block.append(k)
    return block
