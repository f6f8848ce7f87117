"""The learning-rate search (optimlab.lab.search) on synthetic score functions, and the
search rounds of sweep.compare on the fake quadratic of test_runner.py."""

from __future__ import annotations

import math

import pytest

from optimlab.lab import search as S

INF = float("inf")


def bowl(center: float, diverge_above: float = INF):
    """Val loss (log10 lr - log10 center)^2 + 1; inf above ``diverge_above``."""
    return lambda lr: INF if lr > diverge_above else (math.log10(lr) - math.log10(center)) ** 2 + 1


def run_search(fn, **kw):
    """Drive the search to the end like sweep.compare does: run whatever is pending."""
    scores, rounds = {}, 0
    while True:
        st = S.search(scores, **kw)
        if st.done:
            return st, scores, rounds
        rounds += 1
        assert rounds < 50
        for lr in st.pending:
            assert lr not in scores   # nothing is ever asked twice
            scores[lr] = fn(lr)


def per_decade_around(visited, best) -> int:
    """Points of ``visited`` in the decade centred on ``best`` (log10 within ±0.5)."""
    return sum(1 for lr in visited if abs(math.log10(lr / best)) <= 0.5 + 0.01)   # 3-digit rounding


def test_starts_from_the_shared_coarse_grid():
    st = S.search({})
    assert st.visited == st.pending == (1e-4, 1e-3, 1e-2, 0.1, 1.0)
    # A fixed grid (--lrs) is only the grid: no extension, no refinement.
    fixed = S.search({lr: bowl(1e-5)(lr) for lr in (0.01, 0.1)}, coarse=(0.01, 0.1),
                     adaptive=False)
    assert fixed.done and fixed.visited == (0.01, 0.1)


def test_interior_optimum_is_refined_to_quarter_decades():
    st, scores, _ = run_search(bowl(0.02))
    best = min(scores, key=scores.get)
    assert best == pytest.approx(0.0178)   # 10**-1.75, the lattice point nearest 0.02
    # The edges were never extended (the coarse grid brackets 0.02) ...
    assert min(st.visited) == 1e-4 and max(st.visited) == 1.0
    # ... and the decade around the best has 4 points per decade (5 incl. both ends).
    assert per_decade_around(st.visited, best) >= 5
    for d in (-2, -1, 1, 2):
        assert S.lattice(S.index(best) + d) in st.visited


def test_extends_past_the_low_edge_then_refines():
    st, scores, _ = run_search(bowl(3e-6))
    assert min(st.visited) == 1e-6                   # 1e-5 then 1e-6 were added
    best = min(scores, key=scores.get)
    assert best == pytest.approx(3.16e-6)            # found between the new points
    assert not S.at_bound(best)
    assert per_decade_around(st.visited, best) >= 5


def test_extends_past_the_high_edge_and_flags_the_hard_bound():
    st, scores, _ = run_search(bowl(1e3))            # wants a huge lr: stops at 10
    assert max(st.visited) == 10.0 and 100.0 not in st.visited
    best = min(scores, key=scores.get)
    assert best == 10.0 and S.at_bound(best)
    # Refined below the bound only.
    assert {5.62, 3.16} <= set(st.visited) and all(lr <= 10.0 for lr in st.visited)


def test_all_diverged_extends_down_and_stops_at_the_bound():
    st, scores, _ = run_search(lambda lr: INF)
    assert st.visited == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
    assert all(v == INF for v in scores.values())


def test_divergence_on_the_right_is_not_an_edge():
    st, scores, _ = run_search(bowl(1.0, diverge_above=0.5))
    best = min(scores, key=scores.get)
    assert best == 0.316 and max(st.visited) == 1.0   # 1.0 diverged: no extension to 10


def test_search_is_a_pure_replay_and_ignores_foreign_lrs():
    fn = bowl(0.02)
    st, scores, rounds = run_search(fn)
    assert rounds >= 2
    # Extra lrs from other comparisons in the same store change nothing.
    noisy = {**scores, 0.05: 0.0, 0.2: -1.0}
    assert S.search(noisy) == st
    # A partial store (killed mid-round) asks for exactly the missing lrs.
    some = dict(list(scores.items())[:6])
    part = S.search(some)
    assert set(part.pending) and not set(part.pending) & set(some)
    assert set(part.visited) <= set(st.visited)


def test_lattice_points_are_canonical():
    assert [S.lattice(q) for q in range(-4, 1)] == [0.1, 0.178, 0.316, 0.562, 1.0]
    assert S.index(0.316) == -2 and S.index(1e-6) == -24 and S.lattice(4) == 10.0
