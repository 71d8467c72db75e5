"""`trainers.stats` against scipy and against the formulas it documents."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from trainers import stats


def test_vectorised_bootstrap_statistics_match_scipy() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, size=(5, 15)).astype(float)  # many ties
    y = rng.normal(size=(5, 15)).round(1)
    taus = stats.tau_b_rows(x, y)
    rhos = stats.spearman_rows(x, y)
    for i in range(5):
        assert taus[i] == pytest.approx(sps.kendalltau(x[i], y[i]).statistic)
        assert rhos[i] == pytest.approx(sps.spearmanr(x[i], y[i]).statistic)


def test_row_statistics_are_nan_for_a_constant_row() -> None:
    x = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    y = np.array([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    assert math.isnan(stats.tau_b_rows(x, y)[0]) and stats.tau_b_rows(x, y)[1] == 1.0
    assert math.isnan(stats.spearman_rows(x, y)[0]) and stats.spearman_rows(x, y)[1] == pytest.approx(1.0)


@pytest.mark.parametrize("values", [[0.6, 0.62, 0.64], [0.1, 0.9], list(np.linspace(0, 1, 37) ** 2)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_t_intervals_match_scipy(values: list[float], confidence: float) -> None:
    n = len(values)
    want = sps.t.interval(confidence, n - 1, loc=np.mean(values), scale=sps.sem(values))
    half = (want[1] - want[0]) / 2
    assert stats.t_halfwidth(values, confidence) == pytest.approx(half, rel=1e-12)
    mean, torch_half = stats.mean_confidence_interval(torch.tensor(values, dtype=torch.float64), confidence)
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert torch_half == pytest.approx(half, rel=1e-12)


def test_t_intervals_undefined_cases() -> None:
    assert math.isnan(stats.t_halfwidth([0.6]))
    assert math.isnan(stats.t_halfwidth([]))
    assert math.isnan(stats.student_t_halfwidth(0.1, 1))
    assert math.isnan(stats.mean_confidence_interval([0.8])[1])
    with pytest.raises(ValueError, match="no accuracies"):
        stats.mean_confidence_interval([])


def test_fewshot_interval_is_the_stats_one() -> None:
    from trainers import fewshot

    assert fewshot.mean_confidence_interval is stats.mean_confidence_interval


def test_kendall_and_spearman_match_scipy_and_are_nan_when_undefined() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert stats.kendall_tau(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, rel=1e-12)
    assert stats.spearman_rho(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, rel=1e-12)
    assert math.isnan(stats.kendall_tau(np.ones(5), y[:5]))
    assert math.isnan(stats.spearman_rho(x[:1], y[:1]))


def test_oriented_ranks_put_infinite_condition_numbers_last() -> None:
    ranks = stats.oriented_ranks([3.0, math.inf, 1.0, 3.0], higher_is_better=False)
    np.testing.assert_array_equal(ranks, [2.5, 1.0, 4.0, 2.5])


def test_rank_correlation_point_estimates_match_scipy_and_interval_covers_them() -> None:
    rng = np.random.default_rng(5)
    score = rng.normal(size=30)
    y = -score + 0.5 * rng.normal(size=30)
    score[3] = math.nan
    out = stats.rank_correlation(score, y, False, 200, np.random.default_rng(1))
    keep = ~np.isnan(score)
    assert out["n"] == 29 and out["n_inf"] == 0
    assert out["kendall_tau"] == pytest.approx(sps.kendalltau(-score[keep], y[keep]).statistic)
    assert out["spearman_rho"] == pytest.approx(sps.spearmanr(-score[keep], y[keep]).statistic)
    assert out["kendall_lo"] < out["kendall_tau"] < out["kendall_hi"]
    assert out["spearman_lo"] < out["spearman_rho"] < out["spearman_hi"]
    none = stats.rank_correlation(score, y, False, 0, np.random.default_rng(1))
    assert math.isnan(none["kendall_lo"]) and none["kendall_tau"] == out["kendall_tau"]


def test_paired_tau_difference_of_a_score_with_itself_is_zero() -> None:
    rng = np.random.default_rng(2)
    a, y = rng.normal(size=20), rng.normal(size=20)
    out = stats.paired_tau_difference(a, a.copy(), y, True, True, 100, np.random.default_rng(0))
    assert out["tau_diff"] == 0 and out["diff_lo"] == 0 and out["diff_hi"] == 0
    assert out["frac_positive"] == 0
    assert out["tau_a"] == pytest.approx(sps.kendalltau(a, y).statistic)


def test_partial_spearman_matches_the_residual_formula() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=40)
    x, y = z + rng.normal(size=40), z + rng.normal(size=40)
    r = sps.spearmanr(np.column_stack([x, y, z])).statistic
    want = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert stats.partial_spearman(x, y, z) == pytest.approx(want, rel=1e-12)
    assert math.isnan(stats.partial_spearman(x[:2], y[:2], z[:2]))


def test_icc_of_identical_ratings_is_one() -> None:
    x = np.repeat(np.arange(5.0)[:, None], 3, axis=1)
    assert stats.icc_oneway(x) == (1.0, 1.0)
    assert all(math.isnan(v) for v in stats.icc_oneway(np.ones((4, 2))))  # MSB = 0
