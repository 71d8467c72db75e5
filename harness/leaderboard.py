"""The proxy leaderboard: which training-free score predicts few-shot accuracy,
and by how much better than the parameter count?

Input: the study's tables (`harness.study`): `proxy_scores` (one value per genotype, proxy
and weight/batch redraw, with its seconds), `proxies` (per genotype the mean accuracy over
its trainings and the evaluation network's parameter count) and `trials` (one row per
training, for the target's own retest reliability). Pure functions of DataFrames; only
the figures (`harness.figures.leaderboard_figures`) write files. The statistics come from `trainers.stats`, shared with
`harness.report` (Kendall tau-b and Spearman rho with percentile-bootstrap intervals:
`rank_correlation`; paired bootstrap of a difference in tau: `paired_tau_difference`).

Per proxy and target (1-shot, 5-shot accuracy), `leaderboard_table` gives:

- Kendall tau and Spearman rho of the oriented proxy (`kernels.proxy_names`: a condition
  number is negated) with the accuracy, 95 % bootstrap intervals;
- the partial Spearman correlation given the parameter count,
  ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` on Spearman correlations: what
  the proxy knows beyond the size of the network;
- the paired tau difference against the MetaNTK (`cn_metantk_maml`) and against `params`
  (the trained network's parameter count), 95 % paired-bootstrap intervals;
- the redraw reliability: mean Kendall tau between the values of two redraws (weights,
  batch) over the genotypes, averaged over pairs of redraws;
- the cost: mean seconds per architecture and redraw (NaN where not timed on its own).

`target_reliability` gives the ceiling: Kendall tau between two trainings of the same
genotypes (averaged over pairs of training seeds) and the one-way intraclass correlations
ICC(1) (one training) and ICC(k) (the mean of k trainings, the quantity correlated).

Repeat aggregation follows the study: geometric mean for condition numbers, arithmetic mean
otherwise (`trainers.stats.geometric_mean_cn`, `mean_or_nan`).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from harness.markdown import format_seconds, markdown_table
from harness.store import accuracy_targets
from kernels.proxy_names import PROXY_DIRECTIONS, PROXY_NAMES
from trainers.stats import (geometric_mean_cn, icc_oneway, kendall_tau, mean_or_nan, oriented_ranks,
                            paired_tau_difference, partial_spearman, rank_correlation)

REFERENCE = "cn_metantk_maml"     # the paper's score
BASELINE = "params"               # column of the `proxies` table (evaluation network)


def _ordered(names: Sequence[str]) -> list[str]:
    """Proxy names in leaderboard order (`kernels.proxy_names`), unknown names refused."""
    unknown = sorted(set(names) - set(PROXY_NAMES))
    if unknown:
        raise ValueError(f"unknown proxies {unknown} in proxy_scores; known: {', '.join(PROXY_NAMES)}")
    return [p for p in PROXY_NAMES if p in set(names)]


def is_condition_number(proxy: str) -> bool:
    return proxy.startswith("cn_")


def proxy_matrix(scores: pd.DataFrame) -> pd.DataFrame:
    """Repeat-aggregated values: index genotype_id, one column per proxy (leaderboard order).

    scores: `proxy_scores` rows (genotype_id, proxy, repeat, value).
    """

    out: dict[str, dict[str, float]] = {}
    for (gid, proxy), group in scores.groupby(["genotype_id", "proxy"], sort=True):
        values = group["value"].to_numpy(dtype=np.float64)
        out.setdefault(proxy, {})[gid] = (geometric_mean_cn(values) if is_condition_number(proxy)
                                          else mean_or_nan(values))
    frame = pd.DataFrame(out)
    frame.index.name = "genotype_id"
    return frame[_ordered(list(frame.columns))]


def proxy_cost(scores: pd.DataFrame) -> pd.Series:
    """Mean seconds per architecture and redraw of each proxy (NaN: not timed on its own)."""
    return scores.groupby("proxy")["seconds"].mean()


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b on the rows where both are non-NaN (infinities rank last/first)."""
    keep = ~np.isnan(a) & ~np.isnan(b)
    return kendall_tau(oriented_ranks(a[keep], True), oriented_ranks(b[keep], True))


def redraw_reliability(scores: pd.DataFrame) -> pd.Series:
    """Per proxy: mean Kendall tau between two redraws' values over the genotypes (NaN with
    fewer than 2 redraws)."""
    out = {}
    for proxy, group in scores.groupby("proxy"):
        wide = group.pivot(index="genotype_id", columns="repeat", values="value")
        taus = [_tau(wide[a].to_numpy(np.float64), wide[b].to_numpy(np.float64))
                for a, b in itertools.combinations(wide.columns, 2)]
        taus = [t for t in taus if math.isfinite(t)]
        out[proxy] = float(np.mean(taus)) if taus else math.nan
    return pd.Series(out, dtype=np.float64)


def target_reliability(trials: pd.DataFrame) -> pd.DataFrame:
    """Retest reliability of the accuracy: per target, over genotypes trained k >= 2 times.

    trials: `trials` rows (search_id, trial_id, acc_*). The j-th training of a genotype is its
    j-th trial in trial-id order (the same training seeds for every genotype). Genotypes with
    fewer trainings than the most common count are left out. Columns: target, n, trainings,
    retest_tau (mean over pairs of trainings), icc1, icck.
    """
    rows = []
    counts = trials.groupby("search_id").size()
    k = int(counts.mode().iloc[0]) if len(counts) else 0
    full = trials[trials["search_id"].isin(counts[counts == k].index)].sort_values(["search_id", "trial_id"])
    full = full.assign(training=full.groupby("search_id").cumcount())
    for target in accuracy_targets(trials):
        wide = full.pivot(index="search_id", columns="training", values=target) if k >= 2 else pd.DataFrame()
        taus = [_tau(wide[a].to_numpy(np.float64), wide[b].to_numpy(np.float64))
                for a, b in itertools.combinations(wide.columns, 2)]
        icc1, icck = icc_oneway(wide.to_numpy(np.float64)) if k >= 2 else (math.nan, math.nan)
        rows.append({"target": target, "n": int(len(wide)), "trainings": k,
                     "retest_tau": float(np.nanmean(taus)) if taus else math.nan, "icc1": icc1, "icck": icck})
    return pd.DataFrame(rows, columns=["target", "n", "trainings", "retest_tau", "icc1", "icck"])


def joined_frame(proxies: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per genotype: dataset, params, accuracies and every proxy's aggregated value."""
    matrix = proxy_matrix(scores)
    base = proxies[["genotype_id", "dataset", BASELINE, *accuracy_targets(proxies)]].rename(columns={BASELINE: "params_eval"})
    return base.merge(matrix.reset_index(), on="genotype_id", how="inner")


def leaderboard_table(proxies: pd.DataFrame, scores: pd.DataFrame, *, n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, proxy, target); see the module doc for the columns' meaning."""
    frame = joined_frame(proxies, scores)
    names = _ordered([c for c in frame.columns if c in PROXY_DIRECTIONS])
    cost, redraw = proxy_cost(scores), redraw_reliability(scores)
    rng = np.random.default_rng(seed)
    pair_rng = np.random.default_rng([seed, 2])  # own stream: the correlations' draws are unchanged
    rows = []
    for dataset, part in frame.groupby("dataset", sort=True):
        size = part["params_eval"].to_numpy(np.float64)
        for proxy in names:
            x = part[proxy].to_numpy(np.float64)
            higher = PROXY_DIRECTIONS[proxy]
            oriented = np.where(np.isnan(x), np.nan, x if higher else -x)
            for target in accuracy_targets(frame):
                y = part[target].to_numpy(np.float64)
                row: dict[str, Any] = {"dataset": dataset, "proxy": proxy, "target": target}
                row |= rank_correlation(x, y, higher, n_boot, rng)
                finite = np.where(np.isinf(oriented), np.sign(oriented) * np.finfo(np.float64).max, oriented)
                row["partial_rho_params"] = partial_spearman(finite, y, size)
                for label, other, other_higher in (("metantk", part.get(REFERENCE), False),
                                                   ("params", size, True)):
                    if other is None or (label == "metantk" and proxy == REFERENCE):
                        row |= {f"dtau_{label}": math.nan, f"dtau_{label}_lo": math.nan,
                                f"dtau_{label}_hi": math.nan}
                        continue
                    d = paired_tau_difference(x, np.asarray(other, np.float64), y, higher, other_higher,
                                              n_boot, pair_rng)
                    row |= {f"dtau_{label}": d["tau_diff"], f"dtau_{label}_lo": d["diff_lo"],
                            f"dtau_{label}_hi": d["diff_hi"]}
                row["redraw_tau"] = float(redraw.get(proxy, math.nan))
                row["seconds"] = float(cost.get(proxy, math.nan))
                rows.append(row)
    columns = ["dataset", "proxy", "target", "n", "n_inf", "kendall_tau", "kendall_lo", "kendall_hi",
               "spearman_rho", "spearman_lo", "spearman_hi", "partial_rho_params", "dtau_metantk",
               "dtau_metantk_lo", "dtau_metantk_hi", "dtau_params", "dtau_params_lo", "dtau_params_hi",
               "redraw_tau", "seconds"]
    return pd.DataFrame(rows, columns=columns)


def proxy_correlations(frame: pd.DataFrame) -> pd.DataFrame:
    """Kendall tau between every two oriented proxies over the genotypes (P x P)."""
    names = _ordered([c for c in frame.columns if c in PROXY_DIRECTIONS])
    oriented = {p: frame[p].to_numpy(np.float64) * (1 if PROXY_DIRECTIONS[p] else -1) for p in names}
    return pd.DataFrame([[_tau(oriented[a], oriented[b]) for b in names] for a in names], index=names, columns=names)


# ----------------------------------------------------------------------------- Markdown


def _ci(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else f"{value:+.2f}"


def _num(value: float, fmt: str = "{:+.2f}") -> str:
    return fmt.format(value) if math.isfinite(value) else "–"


def leaderboard_markdown(table: pd.DataFrame, reliability: pd.DataFrame) -> str:
    """Per target a table sorted by Kendall tau (best first), then the target's ceiling."""
    parts = []
    for target, part in table.groupby("target", sort=False):
        part = part.sort_values("kendall_tau", ascending=False, na_position="last")
        rows = [[r.proxy, r.n, _ci(r.kendall_tau, r.kendall_lo, r.kendall_hi),
                 _ci(r.spearman_rho, r.spearman_lo, r.spearman_hi), _num(r.partial_rho_params),
                 _ci(r.dtau_metantk, r.dtau_metantk_lo, r.dtau_metantk_hi),
                 _ci(r.dtau_params, r.dtau_params_lo, r.dtau_params_hi), _num(r.redraw_tau),
                 format_seconds(r.seconds)] for r in part.itertuples()]
        parts += [f"**{target}**", "",
                  markdown_table(["proxy", "n", "Kendall τ [95% CI]", "Spearman ρ [95% CI]", "partial ρ | params",
                                  "Δτ vs MetaNTK", "Δτ vs params", "redraw τ", "s / arch"], rows), ""]
    for r in reliability.itertuples():
        if r.trainings < 2:  # one training per genotype: the target's retest reliability is unknown
            parts.append(f"- Ceiling for {r.target}: unknown with one training per genotype (set "
                         f"[study] train_seeds to two or more seeds to measure it).")
            continue
        parts.append(f"- Ceiling for {r.target}: retest τ between {r.trainings} trainings = {_num(r.retest_tau)}, "
                     f"ICC(1) = {_num(r.icc1)}, ICC({r.trainings}) = {_num(r.icck)} over {r.n} genotypes.")
    return "\n".join(parts).rstrip() + "\n"


def leaderboard_section(data: Mapping[str, pd.DataFrame], *, n_boot: int = 1000, seed: int = 0
                        ) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Markdown lines and CSV tables for `harness.report.build_report` (empty without scores)."""
    scores, proxies = data.get("proxy_scores"), data.get("proxies")
    if scores is None or scores.empty or proxies is None or proxies.empty:
        return [], {}
    table = leaderboard_table(proxies, scores, n_boot=n_boot, seed=seed)
    reliability = target_reliability(data["trials"]) if "trials" in data else target_reliability(pd.DataFrame(
        columns=["search_id", "trial_id", *accuracy_targets(proxies)]))
    lines = ["", "## Proxy leaderboard", "",
             "Oriented so that positive = predictive; Δτ: paired bootstrap of the difference in Kendall τ; "
             "redraw τ: agreement of two weight/batch redraws; s / arch: seconds per architecture and redraw.",
             "", leaderboard_markdown(table, reliability)]
    return lines, {"leaderboard": table, "target_reliability": reliability}
