"""Statistics shared by the trainers and the reports: Student-t intervals, rank
correlations (Kendall tau-b, Spearman rho, partial Spearman) with percentile-bootstrap
intervals, and the one-way intraclass correlation.

What it is for: one implementation of each statistic, so a trial's episode interval, the
report's interval across seeds and the leaderboard's correlations are computed the same
way. Pure functions of arrays; randomness only through a `numpy.random.Generator` passed
in. scipy and torch are imported inside the functions that need them, so importing this
module stays cheap and torch-free (the config and the report modules import it).

- `mean_confidence_interval` (torch float64 reductions, input validated) and
  `t_halfwidth` (numpy, permissive: NaN when undefined) share `student_t_halfwidth`,
  ``t_{(1+c)/2, n-1} * std(ddof=1) / sqrt(n)``. The two reductions are kept as they were
  (torch and numpy sums differ in the last bit), so no stored number moves.
- `kendall_tau`, `spearman_rho`: scipy's tau-b and rho, NaN for n < 2 or a constant input
  (scipy warns there); `tau_b_rows`, `spearman_rows`: the same statistics per row of a
  (B, n) batch of bootstrap resamples; `percentile_interval`: the 95 % percentile interval
  of the finite resampled values.
- `oriented_ranks`, `rank_correlation`, `paired_tau_difference`: a score oriented so that a
  higher rank predicts a better outcome, its rank correlation with a target, and the
  paired bootstrap of the difference between two scores' Kendall taus.
- `summarize_seeds`: per-seed accuracies -> mean and interval (across seeds with >= 2, else
  the one trial's episode interval); `geometric_mean_cn`, `mean_or_nan`: aggregation of a
  proxy over repeats.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: the config and reports stay torch-free
    from torch import Tensor

__all__ = [
    "student_t_halfwidth",
    "t_halfwidth",
    "mean_confidence_interval",
    "correlation_undefined",
    "kendall_tau",
    "spearman_rho",
    "tau_b_rows",
    "spearman_rows",
    "percentile_interval",
    "oriented_ranks",
    "rank_correlation",
    "paired_tau_difference",
    "partial_spearman",
    "icc_oneway",
]


# ----------------------------------------------------------------------------- t-intervals


def student_t_halfwidth(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width ``t_{(1+confidence)/2, n-1} * std / sqrt(n)`` of the interval of a mean of
    `n` values with sample standard deviation `std` (ddof=1); NaN for n < 2."""
    from scipy.stats import t as student_t

    if n < 2:
        return math.nan
    return float(student_t.ppf((1 + confidence) / 2, n - 1)) * float(std) / math.sqrt(n)


def t_halfwidth(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the Student-t interval of the mean of `values` (n >= 2), else NaN.

    values: (n,) floats (a NaN gives NaN). numpy float64 reductions.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return math.nan
    return student_t_halfwidth(float(x.std(ddof=1)), int(x.size), confidence)


def mean_confidence_interval(accs: Sequence[float] | "Tensor", confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t half width: ``t_{(1+c)/2, n-1} * std(ddof=1) / sqrt(n)``.

    accs: (n,) accuracies (any shape, flattened); torch float64 reductions. With a single
    value the interval is undefined and the half width is ``nan`` (an explicit "unknown",
    never 0). Raises ``ValueError`` for no values or non-finite ones.
    """
    import torch

    values = torch.as_tensor(accs, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("mean_confidence_interval: no accuracies given; evaluate some episodes")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("mean_confidence_interval: accuracies contain NaN or inf")
    if not 0 < confidence < 1:
        raise ValueError(f"mean_confidence_interval: confidence={confidence} must be in (0, 1)")
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan
    return mean, student_t_halfwidth(float(values.std(correction=1)), n, confidence)


# ----------------------------------------------------------------------------- rank correlations


def correlation_undefined(x: np.ndarray, y: np.ndarray) -> bool:
    """Rank correlation of two (n,) arrays undefined: n < 2 or a constant one.

    scipy warns and returns NaN on constant input; callers say NaN directly instead.
    """
    return x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b (scipy) of two (n,) arrays; NaN when `correlation_undefined`."""
    from scipy import stats

    return math.nan if correlation_undefined(x, y) else float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho (scipy) of two (n,) arrays; NaN when `correlation_undefined`."""
    from scipy import stats

    return math.nan if correlation_undefined(x, y) else float(stats.spearmanr(x, y).statistic)


def tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b per row. x, y: (B, n) -> (B,), NaN for a constant row.

    tau_b = sum_ij sign(dx) sign(dy) / sqrt(sum_ij sign(dx)^2 * sum_ij sign(dy)^2), the
    tie-corrected form scipy.stats.kendalltau uses (pairs counted twice in every sum).
    """
    b, n = x.shape
    out = np.empty(b, dtype=np.float64)
    chunk = max(1, 2_000_000 // max(1, n * n))  # bound the (chunk, n, n) temporaries
    for lo in range(0, b, chunk):
        sx = np.sign(x[lo:lo + chunk, :, None] - x[lo:lo + chunk, None, :])
        sy = np.sign(y[lo:lo + chunk, :, None] - y[lo:lo + chunk, None, :])
        num = (sx * sy).sum(axis=(1, 2))
        den = np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho per row (Pearson of average ranks). x, y: (B, n) -> (B,), NaN if constant."""
    from scipy import stats

    rx = stats.rankdata(x, axis=1)
    ry = stats.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    num = (rx * ry).sum(axis=1)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the finite bootstrap values (NaN if none)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def oriented_ranks(values: np.ndarray | Sequence[float], higher_is_better: bool) -> np.ndarray:
    """Ranks of a score, oriented so that a higher rank predicts a better outcome.

    values: (n,) finite or +-inf (an infinite condition number ranks worst). Ties get the
    average rank. Rank correlations are invariant to this monotone map, and ranks, unlike
    -inf, can be subtracted in the bootstrap.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    return stats.rankdata(v if higher_is_better else -v)


def rank_correlation(score: np.ndarray, target: np.ndarray, higher_is_better: bool, n_boot: int,
                     rng: np.random.Generator) -> dict[str, float | int]:
    """Kendall tau-b and Spearman rho of an oriented score with a target, with 95 % percentile
    bootstrap intervals from `n_boot` row resamples drawn by `rng`.

    score, target: (n,) float64; rows where either is NaN are left out (`n` counts the rest,
    `n_inf` the infinite scores kept as worst). Keys: n, n_inf, kendall_tau, kendall_lo,
    kendall_hi, spearman_rho, spearman_lo, spearman_hi (NaN where undefined).
    """
    keep = ~np.isnan(score) & ~np.isnan(target)
    ranks = oriented_ranks(score[keep], higher_is_better)
    y = target[keep]
    n = int(keep.sum())
    out: dict[str, float | int] = {"n": n, "n_inf": int(np.isinf(score[keep]).sum())}
    out["kendall_tau"] = kendall_tau(ranks, y)
    out["spearman_rho"] = spearman_rho(ranks, y)
    if n >= 2 and n_boot > 0:
        idx = rng.integers(0, n, size=(n_boot, n))
        out["kendall_lo"], out["kendall_hi"] = percentile_interval(tau_b_rows(ranks[idx], y[idx]))
        out["spearman_lo"], out["spearman_hi"] = percentile_interval(spearman_rows(ranks[idx], y[idx]))
    else:
        out |= {"kendall_lo": math.nan, "kendall_hi": math.nan,
                "spearman_lo": math.nan, "spearman_hi": math.nan}
    return out


def paired_tau_difference(a: np.ndarray, b: np.ndarray, target: np.ndarray, a_higher: bool,
                          b_higher: bool, n_boot: int, rng: np.random.Generator) -> dict[str, float | int]:
    """tau(a) - tau(b) with a paired percentile-bootstrap interval.

    a, b, target: (n,) float64; both taus use the rows where all three are non-NaN, and each
    of the `n_boot` resamples draws one set of rows for both taus. Keys: n, tau_a, tau_b,
    tau_diff, diff_lo, diff_hi, frac_positive (share of resamples with tau_a > tau_b;
    resamples with an undefined tau left out).
    """
    keep = ~np.isnan(a) & ~np.isnan(b) & ~np.isnan(target)
    sa, sb = oriented_ranks(a[keep], a_higher), oriented_ranks(b[keep], b_higher)
    y = target[keep]
    n = int(keep.sum())
    tau_a, tau_b = kendall_tau(sa, y), kendall_tau(sb, y)
    out: dict[str, float | int] = {"n": n, "tau_a": tau_a, "tau_b": tau_b,
                                   "tau_diff": tau_a - tau_b}
    if n >= 2 and n_boot > 0:
        idx = rng.integers(0, n, size=(n_boot, n))  # one draw, used by both taus
        diffs = tau_b_rows(sa[idx], y[idx]) - tau_b_rows(sb[idx], y[idx])
        out["diff_lo"], out["diff_hi"] = percentile_interval(diffs)
        finite = diffs[np.isfinite(diffs)]
        out["frac_positive"] = float((finite > 0).mean()) if finite.size else math.nan
    else:
        out |= {"diff_lo": math.nan, "diff_hi": math.nan, "frac_positive": math.nan}
    return out


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of x and y given z (rows with NaN left out; NaN if undefined).

    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` on Spearman correlations;
    x, y, z: (n,) float64 (finite where not NaN).
    """
    from scipy import stats

    keep = ~np.isnan(x) & ~np.isnan(y) & ~np.isnan(z)
    if keep.sum() < 3 or min(np.ptp(v[keep]) for v in (x, y, z)) == 0:
        return math.nan
    r = stats.spearmanr(np.column_stack([x[keep], y[keep], z[keep]])).statistic
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    den = math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    return float((rxy - rxz * ryz) / den) if den > 0 else math.nan


def icc_oneway(x: np.ndarray) -> tuple[float, float]:
    """One-way random-effects intraclass correlations of x (n targets, k ratings).

    MSB = k * sum_i (mean_i - mean)^2 / (n - 1), MSW = sum_ij (x_ij - mean_i)^2 / (n (k - 1));
    ICC(1) = (MSB - MSW) / (MSB + (k - 1) MSW) (one rating), ICC(k) = (MSB - MSW) / MSB
    (the mean of k ratings; Shrout & Fleiss 1979). NaN for n < 2, k < 2 or MSB = 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return math.nan, math.nan
    n, k = x.shape
    row = x.mean(axis=1)
    msb = k * ((row - x.mean()) ** 2).sum() / (n - 1)
    msw = ((x - row[:, None]) ** 2).sum() / (n * (k - 1))
    if msb <= 0:
        return math.nan, math.nan
    return float((msb - msw) / (msb + (k - 1) * msw)), float((msb - msw) / msb)


# ----------------------------------------------------------------------------- aggregation over seeds and repeats

CI_SEEDS = "seeds"        # 95% t-interval across seeds
CI_EPISODES = "episodes"  # one seed: the trial's own 95% episode interval
CI_NONE = "none"          # no finite value


@dataclass(frozen=True)
class SeedSummary:
    """Mean over seeds with its interval; `kind` says which interval `ci` is."""

    n: int
    mean: float
    ci: float
    kind: str


def summarize_seeds(means: np.ndarray, episode_cis: np.ndarray) -> SeedSummary:
    """Aggregate per-seed accuracies.

    means, episode_cis: (n_seeds,). Non-finite means (an evaluation that did not run) are
    left out. >= 2 seeds: t-interval across seeds; one seed: its episode interval.
    """
    means = np.asarray(means, dtype=np.float64)
    cis = np.asarray(episode_cis, dtype=np.float64)
    ok = np.isfinite(means)
    n = int(ok.sum())
    if n == 0:
        return SeedSummary(0, math.nan, math.nan, CI_NONE)
    if n == 1:
        return SeedSummary(1, float(means[ok][0]), float(cis[ok][0]), CI_EPISODES)
    return SeedSummary(n, float(means[ok].mean()), t_halfwidth(means[ok]), CI_SEEDS)


def geometric_mean_cn(values: Sequence[float]) -> float:
    """Geometric mean of condition numbers. values: (repeats,) in [1, inf] or NaN.

    Any NaN -> NaN; any inf -> inf (a singular kernel stays singular); empty -> NaN.
    Non-positive values cannot be condition numbers: ValueError.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.isnan(v).any():
        return math.nan
    if (v <= 0).any():
        raise ValueError(f"condition numbers must be > 0, got {v.tolist()}")
    if np.isinf(v).any():
        return math.inf
    return float(np.exp(np.log(v).mean()))


def mean_or_nan(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty list or any NaN."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()) if v.size else math.nan
