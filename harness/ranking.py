"""Ranking of pruning candidates (paper Algorithm 1, TE-NAS ranking), as pure functions.

A candidate is one active op on one edge of one cell type (or, in the final stage, a whole
edge). Its scores are relative deltas against the current supernet, averaged over repeats:

    dCN = (CN_orig - CN_pruned) / CN_orig      ranked descending (big drop = prunable)
    dRN = (RN_orig - RN_pruned) / RN_orig      ranked ascending  (few regions lost = prunable)

with dense ranks (equal values share a rank, the next distinct value gets +1), importance =
sum of the ranks of the measures the method uses, and on each edge the op with the smallest
importance is pruned. Infinite condition numbers are values like any other: a pruned net
whose kernel is singular gets dCN = -inf (the worst), never a sentinel.

Two ranking modes (`RANKING_MODES`, config key `search.ranking`):

- "exact" (the default): the repeats' exact mean delta, dense ranks over exact values;
  ties in the importance break on the smaller CN rank, then the op order of
  `search_spaces.ops.PRIMITIVES` (max_pool, avg_pool, skip, conv_1x5_5x1, conv_3x3,
  sep_conv, dil_conv) for ops and the lower edge index kept for edges.
- "reference": the paper's code (`prune_metantknas.py`, `prune_func_rank`, `--precision 3`):
  each repeat's delta rounded to 3 decimals, then averaged; candidates listed in the
  reference's scan order (cell type, edge, op in the reference space order
  `REFERENCE_OP_ORDER`), stably sorted by the average rounded to 3 significant figures
  (`round_significant`), and dense-ranked by comparing each average with its neighbour's
  for equality; the rank-sum list is a stable sort of the CN-sorted list. So ties fall
  back to the CN order, then the scan order: skip_connect first.

Either way a ranking gives every candidate its `order` in the prune order (0 is pruned
first): per edge the op with the smallest order is pruned, per node group the `keep`
edges with the largest order are kept.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import numpy as np

MEASURES: tuple[str, ...] = ("cn", "rn")


def relative_delta(origin: float, pruned: float) -> float:
    """`(origin - pruned) / origin`, with the limits for infinite values made explicit.

    inf -> inf is no change (0); inf -> finite is the largest possible drop (1);
    finite -> inf is the worst possible change (-inf). NaN inputs are errors: the kernels
    never return NaN (non-finite kernels give CN = inf).
    """
    if math.isnan(origin) or math.isnan(pruned):
        raise ValueError(f"relative_delta got NaN (origin={origin}, pruned={pruned}); scores must be finite or inf")
    if math.isinf(origin):
        return 0.0 if math.isinf(pruned) else 1.0
    if math.isinf(pruned):
        return -math.inf
    if origin == 0:
        raise ValueError("relative_delta: origin score is 0; condition numbers and region counts are >= 1")
    return (origin - pruned) / origin


def oriented_delta(origin: float, pruned: float, higher_is_better: bool) -> float:
    """Change of a proxy when an op is pruned, oriented for the CN slot of the ranking
    (ranked descending: the largest value is the most prunable candidate).

    With the proxy's "goodness" ``g = value`` (higher is better) or ``-value`` (lower is
    better): ``(g_pruned - g_origin) / |g_origin|`` (``|g_origin| = 0``: the plain difference),
    i.e. removing the op that costs the least goodness, or gains the most, goes first. For a
    condition number this is exactly `relative_delta`. Infinite values follow its limits:
    worst -> finite is +1, finite -> worst is -inf, equal infinities are 0, finite -> best
    (+inf goodness) is +inf and best -> finite -1. NaN is an error.
    """
    if math.isnan(origin) or math.isnan(pruned):
        raise ValueError(f"oriented_delta got NaN (origin={origin}, pruned={pruned}); a proxy used for "
                         f"pruning must be a number or +-inf on every candidate")
    g_o, g_p = (origin, pruned) if higher_is_better else (-origin, -pruned)
    if math.isinf(g_o):
        if g_p == g_o:
            return 0.0
        return 1.0 if g_o < 0 else -1.0
    if math.isinf(g_p):
        return g_p  # +inf (best) or -inf (worst)
    return (g_p - g_o) / (abs(g_o) or 1.0)


def mean_delta(deltas: Sequence[float]) -> float:
    """Average of per-repeat deltas; any -inf repeat makes the mean -inf (never NaN)."""
    if not deltas:
        raise ValueError("mean_delta of no repeats")
    if any(math.isinf(d) and d < 0 for d in deltas):
        return -math.inf
    return math.fsum(deltas) / len(deltas)


def dense_rank(values: Sequence[float], *, descending: bool) -> list[int]:
    """Dense ranks starting at 1: equal values share a rank; the next distinct value +1.

    `dense_rank([3, 1, 3, 2], descending=True) == [1, 3, 1, 2]`.
    """
    distinct = sorted(set(values), reverse=descending)
    rank_of = {v: i + 1 for i, v in enumerate(distinct)}
    return [rank_of[v] for v in values]


@dataclass(frozen=True)
class Candidate:
    """One scored candidate. `op` is the op index in PRIMITIVES (-1: a whole edge)."""

    cell_type: int          # 0 normal, 1 reduce
    edge: int               # 0..8
    op: int
    delta_cn: float | None  # None when the method does not measure CN
    delta_rn: float | None
    rank_cn: int = 0
    rank_rn: int = 0
    importance: int = 0
    order: int = 0          # position in the prune order of its ranking (0 = pruned first)


def _ranked_measures(cands: Sequence[Candidate]) -> dict[str, list[float] | None]:
    """The delta values per measure; None for a measure no candidate has (not ranked).

    Mixing None and values for one measure is an error.
    """
    out: dict[str, list[float] | None] = {}
    for name in MEASURES:
        vals = [getattr(c, f"delta_{name}") for c in cands]
        present = [v is not None for v in vals]
        if any(present) and not all(present):
            raise ValueError(f"delta_{name} is missing for some candidates of the round")
        out[name] = vals if vals and all(present) else None  # type: ignore[assignment]
    return out


def _exact_prune_key(c: Candidate) -> tuple[int, int, int, int, int]:
    # Ops of one edge: smaller importance, then smaller CN rank, then PRIMITIVES order.
    # Edges of one group: the larger (importance, CN rank) is kept, then the lower edge.
    return (c.importance, c.rank_cn, c.op, -c.edge, c.cell_type)


def rank_exact(cands: Sequence[Candidate]) -> list[Candidate]:
    """Dense-rank dCN descending and dRN ascending over exact values (input order kept).

    Measures that are None for every candidate are not ranked (rank 0) and add nothing to the
    importance.
    """
    vals = _ranked_measures(cands)
    ranks = {name: dense_rank(v, descending=name == "cn") if v is not None else [0] * len(cands)
             for name, v in vals.items()}
    ranked = [replace(c, rank_cn=rc, rank_rn=rr, importance=rc + rr)
              for c, rc, rr in zip(cands, ranks["cn"], ranks["rn"])]
    prune_order = sorted(range(len(ranked)), key=lambda i: _exact_prune_key(ranked[i]))
    position = {i: p for p, i in enumerate(prune_order)}
    return [replace(c, order=position[i]) for i, c in enumerate(ranked)]


# The reference implementation's precision (`--precision 3`) and op order of its search space
# (`DARTS_FEWSHOT` without `none`, which is never a candidate): its scan order.
REFERENCE_PRECISION = 3
REFERENCE_OP_ORDER: tuple[str, ...] = ("skip_connect", "sep_conv_3x3", "dil_conv_3x3", "avg_pool_3x3",
                                       "max_pool_3x3", "conv_1x5_5x1", "conv_3x3")


@functools.lru_cache(maxsize=None)
def _reference_positions() -> dict[int, int]:
    from search_spaces.ops import PRIMITIVES

    return {PRIMITIVES.index(name): i for i, name in enumerate(REFERENCE_OP_ORDER)}


def reference_op_position(op: int) -> int:
    """Position of PRIMITIVES index `op` in `REFERENCE_OP_ORDER` (-1 for a whole edge)."""
    return -1 if op < 0 else _reference_positions()[op]


def round_significant(x: float, digits: int = REFERENCE_PRECISION, eps: float = 1e-8) -> float:
    """The reference's `round_to`: `x` to `digits` significant figures, computed as it does
    (|x| + eps, the power from `math.log(., 10)`), so sort keys tie exactly where its do.

    0 and +-inf are returned unchanged (the reference never sees inf; its formula fails on it).
    `round_significant(0.12345) == 0.123`, `round_significant(-0.0012345) == -0.00123`.
    """
    if x == 0 or math.isinf(x):
        return x
    sign = 1.0 if x > 0 else -1.0
    magnitude = abs(x) + eps
    power = math.floor(math.log(magnitude, 10)) + 1
    return sign * round(magnitude * 10 ** (-power), digits) * 10 ** power


def reference_mean_delta(deltas: Sequence[float]) -> float:
    """The reference's per-candidate value: each repeat's delta rounded to 3 decimals, then
    the NumPy mean. Any -inf repeat makes it -inf, as `mean_delta`."""
    if not deltas:
        raise ValueError("reference_mean_delta of no repeats")
    return float(np.mean([round(d, REFERENCE_PRECISION) for d in deltas]))


def _reference_dense(scan: list[int], vals: Sequence[float], *, descending: bool) -> tuple[list[int], dict[int, int]]:
    """The reference's ranking of one measure: `scan` (candidate indices in scan order)
    stably sorted by the value rounded to 3 significant figures; a candidate shares its
    predecessor's rank when their (unrounded) values are equal, else gets the next one.
    Returns (sorted indices, rank per index starting at 1)."""
    seq = sorted(scan, key=lambda i: round_significant(vals[i]), reverse=descending)  # stable, also reversed
    ranks: dict[int, int] = {}
    for pos, i in enumerate(seq):
        prev = seq[pos - 1] if pos else None
        ranks[i] = 1 if prev is None else ranks[prev] + (vals[i] != vals[prev])
    return seq, ranks


def rank_reference(cands: Sequence[Candidate]) -> list[Candidate]:
    """The reference's ranking (see the module doc); input order kept, `order` set.

    Ranks start at 1 (the reference counts from 0: the same order). A measure the method does
    not use is rank 0 everywhere, as the reference's constant 1.0 stand-in gives all one rank.
    """
    vals = _ranked_measures(cands)
    scan = sorted(range(len(cands)), key=lambda i: (cands[i].cell_type, cands[i].edge,
                                                   reference_op_position(cands[i].op)))
    cn_seq, rank_cn = _reference_dense(scan, vals["cn"], descending=True) if vals["cn"] is not None else (
        scan, {i: 0 for i in scan})
    _, rank_rn = _reference_dense(scan, vals["rn"], descending=False) if vals["rn"] is not None else (
        scan, {i: 0 for i in scan})
    # The rank-sum list: a stable sort of the CN-sorted list by the sum of ranks.
    prune_order = sorted(cn_seq, key=lambda i: rank_cn[i] + rank_rn[i])
    position = {i: p for p, i in enumerate(prune_order)}
    return [replace(c, rank_cn=rank_cn[i], rank_rn=rank_rn[i], importance=rank_cn[i] + rank_rn[i],
                    order=position[i]) for i, c in enumerate(cands)]


@dataclass(frozen=True)
class RankingMode:
    """How per-repeat deltas become one value per candidate, and how candidates are ranked."""

    aggregate: Callable[[Sequence[float]], float]
    rank: Callable[[Sequence[Candidate]], list[Candidate]]


RANKING_MODES: dict[str, RankingMode] = {
    "exact": RankingMode(aggregate=mean_delta, rank=rank_exact),
    "reference": RankingMode(aggregate=reference_mean_delta, rank=rank_reference),
}


def ranking_mode(name: str) -> RankingMode:
    if name not in RANKING_MODES:
        raise KeyError(f"unknown ranking mode {name!r}; valid: {', '.join(RANKING_MODES)}")
    return RANKING_MODES[name]


def rank_candidates(cands: Sequence[Candidate], *, mode: str = "exact") -> list[Candidate]:
    """Rank the candidates of one round (input order kept, ranks, importance, `order` set)."""
    return ranking_mode(mode).rank(cands)


def choose_prunes(ranked: Iterable[Candidate]) -> dict[tuple[int, int], Candidate]:
    """Per (cell_type, edge): the candidate to prune, the one first in the prune order."""
    best: dict[tuple[int, int], Candidate] = {}
    for c in ranked:
        key = (c.cell_type, c.edge)
        if key not in best or c.order < best[key].order:
            best[key] = c
    return best



def keep_edges(ranked: Sequence[Candidate], keep: int = 2) -> tuple[int, ...]:
    """The `keep` edges of one node group to keep: those last in the prune order (highest
    importance). `ranked` holds the removal candidates of that group's edges, ranked
    together (the reference ranks within the group). Returns the sorted kept edges."""
    if len({c.cell_type for c in ranked}) > 1:
        raise ValueError("keep_edges: the candidates span both cell types; rank one node group at a time")
    if len(ranked) < keep:
        raise ValueError(f"keep_edges: {len(ranked)} edges scored, cannot keep {keep}")
    last = sorted(ranked, key=lambda c: c.order)[len(ranked) - keep:]
    return tuple(sorted(c.edge for c in last))
