"""The "reference" ranking mode reproduces the paper's code (prune_metantknas.py, --precision 3)
on hand-made numbers: per-repeat rounding, the 3-significant-figure sort, dense ranks by
neighbour equality, its scan order (skip_connect first) as the final tie-break."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from harness.ranking import (REFERENCE_OP_ORDER, Candidate, choose_prunes, keep_edges, rank_candidates,
                             reference_mean_delta, reference_op_position, round_significant)
from search_spaces.ops import PRIMITIVES

OP = {name: PRIMITIVES.index(name) for name in PRIMITIVES}


@pytest.mark.parametrize("x,expected", [
    (0.12345, 0.123), (-0.0012345, -0.00123), (123.456, 123.0), (0.9996, 1.0), (0.0, 0.0),
    (-math.inf, -math.inf), (0.1005, 0.101),  # eps: 0.1005 + 1e-8 rounds up, as the reference's
])
def test_round_significant(x, expected):
    assert round_significant(x) == pytest.approx(expected, rel=1e-12) or round_significant(x) == expected


def test_each_repeat_is_rounded_to_3_decimals_before_the_mean():
    assert reference_mean_delta([0.12345, 0.12351, 0.1229]) == float(np.mean([0.123, 0.124, 0.123]))
    # Two candidates 3e-4 apart are tied by the rounding (exact mode keeps them apart).
    a, b = reference_mean_delta([0.1004]), reference_mean_delta([0.1001])
    assert a == b == 0.1
    assert reference_mean_delta([0.5, -math.inf]) == -math.inf


def test_rounding_creates_ties_that_share_a_rank():
    cands = [Candidate(0, 0, OP["skip_connect"], reference_mean_delta([0.1004]), reference_mean_delta([0.2])),
             Candidate(0, 0, OP["sep_conv_3x3"], reference_mean_delta([0.1001]), reference_mean_delta([0.3]))]
    ref = rank_candidates(cands, mode="reference")
    assert [c.rank_cn for c in ref] == [1, 1]
    exact = rank_candidates([Candidate(0, 0, c.op, d, r) for c, d, r in
                             zip(cands, (0.1004, 0.1001), (0.2, 0.3))], mode="exact")
    assert [c.rank_cn for c in exact] == [1, 2]


def test_same_sort_key_but_unequal_values_rank_in_scan_order_not_by_value():
    # 0.123 and 0.12333.. (means of 3-decimal repeats) both sort as 0.123: the stable sort keeps
    # the scan order (skip before sep before dil), and each value unequal to its neighbour
    # takes the next rank -- even the larger drop gets the worse CN rank, and 0.123 twice
    # gets two ranks when something unequal sits between them.
    third = reference_mean_delta([0.123, 0.123, 0.124])
    assert third != 0.123 and round_significant(third) == round_significant(0.123)
    cands = [Candidate(0, 4, OP["dil_conv_3x3"], 0.123, None), Candidate(0, 4, OP["skip_connect"], 0.123, None),
             Candidate(0, 4, OP["sep_conv_3x3"], third, None)]
    ref = rank_candidates(cands, mode="reference")
    assert {PRIMITIVES[c.op]: c.rank_cn for c in ref} == {"skip_connect": 1, "sep_conv_3x3": 2, "dil_conv_3x3": 3}
    exact = rank_candidates(cands, mode="exact")
    assert {PRIMITIVES[c.op]: c.rank_cn for c in exact} == {"skip_connect": 2, "sep_conv_3x3": 1, "dil_conv_3x3": 2}


def test_full_ties_prune_in_the_reference_op_order():
    # All 7 ops of an edge tie: the reference prunes the first of its scan order (skip_connect);
    # exact mode the first of PRIMITIVES (max_pool_3x3), its documented default.
    cands = [Candidate(1, 6, OP[name], 0.2, 0.1) for name in PRIMITIVES]
    assert PRIMITIVES[choose_prunes(rank_candidates(cands, mode="reference"))[(1, 6)].op] == "skip_connect"
    assert PRIMITIVES[choose_prunes(rank_candidates(cands, mode="exact"))[(1, 6)].op] == PRIMITIVES[0]
    # Without skip_connect the next in the reference order goes: sep_conv_3x3.
    rest = [c for c in cands if PRIMITIVES[c.op] != "skip_connect"]
    assert PRIMITIVES[choose_prunes(rank_candidates(rest, mode="reference"))[(1, 6)].op] == "sep_conv_3x3"
    assert [reference_op_position(OP[n]) for n in REFERENCE_OP_ORDER] == list(range(7))


def test_equal_rank_sums_fall_back_to_the_cn_order():
    # op a: CN rank 1, RN rank 2; op b: CN rank 2, RN rank 1 -> both sum to 3; a comes first in the
    # CN-sorted list, so a is pruned, whatever the scan order.
    cands = [Candidate(0, 2, OP["skip_connect"], 0.1, 0.1), Candidate(0, 2, OP["conv_3x3"], 0.3, 0.2)]
    ranked = rank_candidates(cands, mode="reference")
    assert [c.importance for c in ranked] == [3, 3]
    assert PRIMITIVES[choose_prunes(ranked)[(0, 2)].op] == "conv_3x3"


def test_regions_only_method_keeps_the_scan_order_for_ties():
    cands = [Candidate(0, 0, OP["conv_3x3"], None, 0.1), Candidate(0, 0, OP["avg_pool_3x3"], None, 0.1)]
    ranked = rank_candidates(cands, mode="reference")
    assert [c.rank_cn for c in ranked] == [0, 0] and [c.importance for c in ranked] == [1, 1]
    assert PRIMITIVES[choose_prunes(ranked)[(0, 0)].op] == "avg_pool_3x3"


def test_edge_ties_keep_the_last_edges_of_the_scan_in_reference_mode():
    ranked = rank_candidates([Candidate(0, e, -1, 0.5, 0.1) for e in (5, 6, 7, 8)], mode="reference")
    assert keep_edges(ranked) == (7, 8)  # the reference keeps the last 2 of its rank-sum list
    assert keep_edges(rank_candidates([Candidate(0, e, -1, 0.5, 0.1) for e in (5, 6, 7, 8)])) == (5, 6)


def _oracle(values: list[tuple[float, float]]) -> list[int]:
    """The reference procedure, restated step by step over (cn, rn) pairs already in scan
    order: returns the indices in rank-sum order."""
    cn = sorted(enumerate(values), key=lambda t: round_significant(t[1][0]), reverse=True)
    ranks: dict[int, list[int]] = {}
    for pos, (i, (v, _)) in enumerate(cn):
        ranks[i] = [0 if pos == 0 else ranks[cn[pos - 1][0]][0] + (v != cn[pos - 1][1][0])]
    rn = sorted(enumerate(values), key=lambda t: round_significant(t[1][1]))
    for pos, (i, (_, v)) in enumerate(rn):
        ranks[i].append(0 if pos == 0 else ranks[rn[pos - 1][0]][1] + (v != rn[pos - 1][1][1]))
    return [i for i, _ in sorted(ranks.items(), key=lambda kv: sum(kv[1]))]


def test_prune_order_matches_the_restated_reference_on_many_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 14)
        # 3 repeats of deltas on a coarse grid: plenty of exact and near ties.
        values = [(reference_mean_delta([rng.choice([0.1, 0.1004, 0.1231, 0.1234, -0.05]) for _ in range(3)]),
                   reference_mean_delta([rng.choice([0.0, 0.01, 0.0101, 0.2]) for _ in range(3)])) for _ in range(n)]
        cands = [Candidate(0, i // 7, OP[REFERENCE_OP_ORDER[i % 7]], cn, rn) for i, (cn, rn) in enumerate(values)]
        ranked = rank_candidates(cands, mode="reference")
        assert sorted(range(n), key=lambda i: ranked[i].order) == _oracle(values)
