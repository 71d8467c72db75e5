"""Ranking of pruning candidates (paper Algorithm 1, TE-NAS ranking), as pure functions.

A candidate is one active op on one edge of one cell type (or, in the final stage, a whole
edge). Its scores are relative deltas against the current supernet, averaged over repeats:

    dCN = (CN_orig - CN_pruned) / CN_orig      ranked descending (big drop = prunable)
    dRN = (RN_orig - RN_pruned) / RN_orig      ranked ascending  (few regions lost = prunable)

with dense ranks (equal values share a rank, the next distinct value gets +1), importance =
sum of the ranks of the measures the method uses, and on each edge the op with the smallest
importance is pruned (ties: the smaller CN rank, then the op order of `PRIMITIVES`).
Infinite condition numbers are values like any other: a pruned net whose kernel is singular
gets dCN = -inf (the worst), never a sentinel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

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
    (ranked descending: the largest value is the most prunable candidate). Issue 14.

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
    """One scored candidate. `op` is the op index in PRIMITIVES (-1: not applicable)."""

    cell_type: int          # 0 normal, 1 reduce
    edge: int               # 0..8
    op: int
    delta_cn: float | None  # None when the method does not measure CN
    delta_rn: float | None
    rank_cn: int = 0
    rank_rn: int = 0
    importance: int = 0


def round_delta(value: float | None, decimals: int | None) -> float | None:
    """The reference rounds deltas to 3 decimals (creating ties); optional here."""
    if value is None or decimals is None or math.isinf(value):
        return value
    return round(value, decimals)


def rank_candidates(cands: Sequence[Candidate], *, decimals: int | None = None) -> list[Candidate]:
    """Dense-rank dCN descending and dRN ascending over all candidates of a round.

    Measures that are None for every candidate are not ranked (rank 0) and add nothing to the
    importance. Mixing None and values for one measure is an error.
    """
    cands = [replace(c, delta_cn=round_delta(c.delta_cn, decimals), delta_rn=round_delta(c.delta_rn, decimals))
             for c in cands]
    ranks: dict[str, list[int]] = {}
    for name, descending in (("cn", True), ("rn", False)):
        vals = [getattr(c, f"delta_{name}") for c in cands]
        present = [v is not None for v in vals]
        if any(present) and not all(present):
            raise ValueError(f"delta_{name} is missing for some candidates of the round")
        ranks[name] = dense_rank(vals, descending=descending) if all(present) and vals else [0] * len(vals)
    return [
        replace(c, rank_cn=rc, rank_rn=rr, importance=rc + rr)
        for c, rc, rr in zip(cands, ranks["cn"], ranks["rn"])
    ]


def _prune_order(c: Candidate) -> tuple[int, int, int]:
    return (c.importance, c.rank_cn, c.op)


def choose_prunes(ranked: Iterable[Candidate]) -> dict[tuple[int, int], Candidate]:
    """Per (cell_type, edge): the candidate to prune, i.e. the smallest importance.

    Ties: the smaller CN rank (the larger CN drop), then the lower op index.
    """
    best: dict[tuple[int, int], Candidate] = {}
    for c in ranked:
        key = (c.cell_type, c.edge)
        if key not in best or _prune_order(c) < _prune_order(best[key]):
            best[key] = c
    return best


# Edges feeding each intermediate node: node 0 <- edges 0,1; node 1 <- 2..4; node 2 <- 5..8.
EDGE_GROUPS: tuple[tuple[int, int], ...] = ((0, 2), (2, 5), (5, 9))


def choose_edges(ranked: Iterable[Candidate], keep: int = 2) -> dict[int, tuple[int, ...]]:
    """Per cell type, the edges to keep: per node the `keep` edges of highest importance.

    `ranked` holds edge-removal candidates (edge pruned whole); nodes whose group has no more
    than `keep` edges keep all of theirs. Ties: the larger CN rank (removing it hurts CN
    more), then the lower edge index. Returns {cell_type: sorted kept edges}.
    """
    by_cell: dict[int, dict[int, Candidate]] = {}
    for c in ranked:
        by_cell.setdefault(c.cell_type, {})[c.edge] = c
    kept: dict[int, tuple[int, ...]] = {}
    for cell_type in (0, 1):
        cands = by_cell.get(cell_type, {})
        edges: list[int] = []
        for lo, hi in EDGE_GROUPS:
            group = list(range(lo, hi))
            if len(group) <= keep:
                edges.extend(group)
                continue
            missing = [e for e in group if e not in cands]
            if missing:
                raise ValueError(f"edge selection: cell type {cell_type} edges {missing} were not scored")
            order = sorted(group, key=lambda e: (-cands[e].importance, -cands[e].rank_cn, e))
            edges.extend(sorted(order[:keep]))
        kept[cell_type] = tuple(edges)
    return kept
