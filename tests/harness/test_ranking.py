"""Ranking is a pure function: dense ranks, rank sums, ties, infinite condition numbers."""
from __future__ import annotations

import math

import pytest

from harness.ranking import (Candidate, choose_prunes, dense_rank, keep_edges, mean_delta, rank_candidates,
                             relative_delta)


def test_dense_rank_shares_ranks_and_skips_nothing():
    assert dense_rank([3.0, 1.0, 3.0, 2.0], descending=True) == [1, 3, 1, 2]
    assert dense_rank([3.0, 1.0, 3.0, 2.0], descending=False) == [3, 1, 3, 2]
    assert dense_rank([-math.inf, 0.5, 0.5], descending=True) == [2, 1, 1]


@pytest.mark.parametrize("origin,pruned,expected", [
    (10.0, 5.0, 0.5), (10.0, 20.0, -1.0), (math.inf, math.inf, 0.0), (math.inf, 3.0, 1.0), (4.0, math.inf, -math.inf),
])
def test_relative_delta(origin, pruned, expected):
    assert relative_delta(origin, pruned) == expected


def test_relative_delta_rejects_nan_and_zero():
    with pytest.raises(ValueError, match="NaN"):
        relative_delta(math.nan, 1.0)
    with pytest.raises(ValueError, match="origin score is 0"):
        relative_delta(0.0, 1.0)


def test_mean_delta_is_minus_inf_with_an_infinite_repeat():
    assert mean_delta([0.5, -math.inf, 0.1]) == -math.inf
    assert mean_delta([0.5, 0.1]) == pytest.approx(0.3)


def test_rank_sum_and_prune_choice():
    # Edge 0 of the normal cell with three ops: op 2 has the biggest CN drop and loses fewest regions.
    cands = [Candidate(0, 0, 0, 0.1, 0.5), Candidate(0, 0, 1, 0.2, 0.4), Candidate(0, 0, 2, 0.3, 0.1)]
    ranked = rank_candidates(cands)
    assert [c.rank_cn for c in ranked] == [3, 2, 1]
    assert [c.rank_rn for c in ranked] == [3, 2, 1]
    assert [c.importance for c in ranked] == [6, 4, 2]
    assert choose_prunes(ranked)[(0, 0)].op == 2


def test_ties_break_on_cn_rank_then_op_order():
    # Same importance (3) for ops 0 and 1; op 1 has the better (smaller) CN rank.
    cands = [Candidate(0, 1, 0, 0.1, 0.1), Candidate(0, 1, 1, 0.2, 0.2)]
    ranked = rank_candidates(cands)
    assert ranked[0].importance == ranked[1].importance == 3
    assert choose_prunes(ranked)[(0, 1)].op == 1
    # Full tie: the lower op index is pruned.
    tie = rank_candidates([Candidate(1, 3, 4, 0.2, 0.2), Candidate(1, 3, 2, 0.2, 0.2)])
    assert choose_prunes(tie)[(1, 3)].op == 2


def test_infinite_cn_ranks_worst_for_pruning():
    cands = [Candidate(0, 0, 0, -math.inf, 0.0), Candidate(0, 0, 1, 0.0, 0.0)]
    ranked = rank_candidates(cands)
    assert ranked[0].rank_cn == 2 and ranked[1].rank_cn == 1
    assert choose_prunes(ranked)[(0, 0)].op == 1  # pruning op 0 would make the kernel singular


def test_one_measure_methods_rank_only_that_measure():
    ranked = rank_candidates([Candidate(0, 0, 0, None, 0.3), Candidate(0, 0, 1, None, 0.1)])
    assert [c.rank_cn for c in ranked] == [0, 0]
    assert [c.importance for c in ranked] == [2, 1]
    with pytest.raises(ValueError, match="missing for some"):
        rank_candidates([Candidate(0, 0, 0, None, 0.3), Candidate(0, 0, 1, 0.2, 0.1)])


def test_exact_mode_does_not_round():
    cands = [Candidate(0, 0, 0, 0.12341, None), Candidate(0, 0, 1, 0.12339, None)]
    assert [c.rank_cn for c in rank_candidates(cands)] == [1, 2]


def test_keep_edges_keeps_the_two_most_important_of_a_group():
    # node 2 (edges 5..8): CN drops 2, 9, 4, 7 when removed; a big drop = rank 1 = unimportant.
    ranked = rank_candidates([Candidate(0, e, -1, float(d), None) for e, d in zip(range(5, 9), [2, 9, 4, 7])])
    assert keep_edges(ranked) == (5, 7)
    # Exact-mode tie: the lower edge index is kept.
    tie = rank_candidates([Candidate(1, e, -1, 0.5, None) for e in (2, 3, 4)])
    assert keep_edges(tie) == (2, 3)


def test_keep_edges_refuses_a_mixed_or_short_group():
    with pytest.raises(ValueError, match="both cell types"):
        keep_edges(rank_candidates([Candidate(0, 2, -1, 0.1, None), Candidate(1, 3, -1, 0.2, None)]))
    with pytest.raises(ValueError, match="cannot keep 2"):
        keep_edges(rank_candidates([Candidate(0, 2, -1, 0.1, None)]))
