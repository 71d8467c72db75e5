"""Result tables from the Parquet store: Table 1, the Table-2 ablation, proxy correlations
and the paired comparison of proxies.

The table functions are pure (DataFrames in, DataFrames out) so they can be tested on
hand-made rows; `harness.pipeline.build_report` / `write_report` read a results folder
through `harness.store` and render Markdown, CSV, figures and the HTML page.

Aggregation over seeds (paper Table 1 reports mean ± std over 3 runs; we report a 95%
interval instead, which is what the number means to a reader): each seed's accuracy is the
mean over that trial's episodes; the table shows the mean of the per-seed means and, with
>= 2 seeds, the 95% Student-t half-width across seeds, t_{0.975, n-1} * s / sqrt(n).
With one seed the only uncertainty we have is the trial's own 95% episode interval, which
is shown instead and marked (column `ci_*_kind` = "episodes", a dagger in Markdown).
Accuracies are fractions in [0, 1] in DataFrames and CSVs and percent in Markdown.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from harness import store
from harness.markdown import format_seconds, markdown_table  # noqa: F401  (format_seconds re-exported)
from harness.methods import METHOD_ORDER, method_sort_key  # noqa: F401  (METHOD_ORDER re-exported)
from harness.store import accuracy_targets, shots_in
from trainers.stats import (CI_EPISODES, CI_NONE, CI_SEEDS, SeedSummary, paired_tau_difference,  # noqa: F401
                            rank_correlation, summarize_seeds, t_halfwidth)

BASELINE_METHOD = "random"

# Proxy column -> whether a larger raw value predicts a better architecture. Condition
# numbers: lower is better (paper Sec. 5), so they are negated (inf = worst); linear regions:
# more is better (TE-NAS).
PROXIES: dict[str, bool] = {
    "cn_metantk_maml": False,
    "cn_metantk_anil": False,
    "cn_ntk": False,
    "regions": True,
}
PROXY_COLUMNS: tuple[str, ...] = tuple(PROXIES)  # the `proxies` table's proxy columns
CN_COLUMNS: tuple[str, ...] = tuple(c for c, higher in PROXIES.items() if c.startswith("cn_"))
PROXY_LABELS: dict[str, str] = {
    "cn_metantk_maml": "CN MetaNTK (MAML)",
    "cn_metantk_anil": "CN MetaNTK (ANIL)",
    "cn_ntk": "CN NTK (TE-NAS)",
    "regions": "linear regions",
}
# Naive baselines a training-free proxy should beat, same convention: a larger model is
# predicted to be better. Reported beside PROXIES when the column is present.
BASELINES: dict[str, bool] = {"params": True}
# Pairs (a, b) compared by `proxy_difference_table`: the study's question is whether the
# MetaNTK condition number ranks architectures better than the plain NTK one and than the
# parameter count.
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("cn_metantk_maml", "cn_ntk"),
    ("cn_metantk_anil", "cn_ntk"),
    ("cn_metantk_maml", "cn_metantk_anil"),
    ("cn_metantk_maml", "params"),
    ("cn_ntk", "params"),
)
# Accuracy targets of the default evaluation (shots 1 and 5); a table's own come from its
# columns (`shots_in`, `accuracy_targets`).
TARGETS: tuple[str, ...] = tuple(store.accuracy_column(k) for k in store.DEFAULT_SHOTS)


_TRIAL_KEYS = ("dataset", "method", "cells", "seed")


# ----------------------------------------------------------------------------- helpers


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; pass the DataFrame from "
                         f"harness.store.read_table (columns: {list(frame.columns)})")


def target_label(target: str) -> str:
    """Axis label of an accuracy column: 'acc_1shot' -> '5-way 1-shot accuracy' (the study's
    episodes are 5-way)."""
    (shots,) = store.shots_of([target])
    return f"5-way {shots}-shot accuracy"


def shot_label(shots: int) -> str:
    """Display name of a shot count: '1-shot'."""
    return f"{shots}-shot"


def _trial_columns(trials: pd.DataFrame) -> tuple[str, ...]:
    return _TRIAL_KEYS + tuple(store.accuracy_columns(shots_in(trials)))


def _per_seed(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per (keys..., seed): several trials of one seed are averaged first."""
    cols = store.accuracy_columns(shots_in(trials))
    extra = ["params"] if "params" in trials.columns else []
    return (trials.groupby(keys + ["seed"], sort=False)[cols + extra]
            .mean().reset_index())


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows sorted by `keys`, methods in METHOD_ORDER (deterministic for equal inputs)."""

    def sort_key(i: int) -> tuple:
        row = frame.iloc[i]
        return tuple(method_sort_key(row[k]) if k == "method" else row[k] for k in keys)

    order = sorted(range(len(frame)), key=sort_key)
    return frame.iloc[order].reset_index(drop=True)


# ----------------------------------------------------------------------------- Table 1


def table1(trials: pd.DataFrame, searches: pd.DataFrame) -> pd.DataFrame:
    """Table-1-style summary, one row per (dataset, method, cells).

    Columns: dataset, method, cells, seeds, params_m (mean parameters / 1e6),
    search_device_seconds (mean over seeds of the searches' device seconds, joined on
    experiment + search_id; NaN when no search row matches, e.g. fixed genotypes),
    and per shot count K of the trials' accuracy columns acc_Kshot, ci_Kshot, ci_Kshot_kind
    (acc_1shot, ci_1shot, ci_1shot_kind, acc_5shot, ... by default).
    """
    _require(trials, _trial_columns(trials) + ("params", "search_id"), "trials table")
    shots = shots_in(trials)
    trials = trials.copy()
    trials["search_device_seconds"] = _search_seconds(trials, searches)
    keys = ["dataset", "method", "cells"]
    rows = []
    for group, frame in trials.groupby(keys, sort=False):
        seeds = _per_seed(frame, keys)
        search = frame.groupby("seed")["search_device_seconds"].mean()
        row = dict(zip(keys, group))
        row["seeds"] = int(frame["seed"].nunique())
        row["params_m"] = float(frame["params"].mean()) / 1e6
        row["search_device_seconds"] = (float(search.mean()) if search.notna().any()
                                        else math.nan)
        for k in shots:
            row |= _accuracy_summary(seeds, k)
        rows.append(row)
    columns = keys + ["seeds", "params_m", "search_device_seconds"] + [
        c for k in shots for c in _summary_columns(k)]
    return _sorted(pd.DataFrame(rows, columns=columns), ["dataset", "cells", "method"])


def _summary_columns(shots: int) -> tuple[str, str, str]:
    """(acc_Kshot, ci_Kshot, ci_Kshot_kind) of shot count K."""
    ci = store.interval_column(shots)
    return store.accuracy_column(shots), ci, f"{ci}_kind"


def _accuracy_summary(seeds: pd.DataFrame, shots: int) -> dict[str, float | str]:
    """`summarize_seeds` of the per-seed rows' accuracy of `shots` as the table's three columns."""
    acc, ci, kind = _summary_columns(shots)
    s = summarize_seeds(seeds[acc].to_numpy(), seeds[ci].to_numpy())
    return {acc: s.mean, ci: s.ci, kind: s.kind}


def _search_seconds(trials: pd.DataFrame, searches: pd.DataFrame) -> pd.Series:
    """Device seconds of each trial's search (NaN when its search_id has no row)."""
    if searches is None or searches.empty:
        return pd.Series(math.nan, index=trials.index, dtype="float64")
    _require(searches, ("search_id", "device_seconds"), "searches table")
    shared = set(trials.columns) & set(searches.columns)
    on = ["experiment", "search_id"] if "experiment" in shared else ["search_id"]
    # One row per search (a rewritten search replaces its file, but be robust to repeats).
    cost = searches.groupby(on, sort=False)["device_seconds"].mean().reset_index()
    joined = trials[on].merge(cost, on=on, how="left")  # left merge keeps the trials' order
    return pd.Series(joined["device_seconds"].to_numpy(dtype=np.float64), index=trials.index)


# ----------------------------------------------------------------------------- Table 2


def table2(trials: pd.DataFrame) -> pd.DataFrame:
    """Ablation per (dataset, cells): one row per method with mean ± CI and Δ vs `random`.

    Columns: dataset, cells, method, seeds, then per shot count K of the trials (1 and 5 by
    default) acc_Kshot, ci_Kshot, ci_Kshot_kind, delta_Kshot, delta_Kshot_ci. delta = method mean - random mean
    (NaN without a `random` row); delta_ci = 95% t half-width of the paired per-seed
    differences over the seeds both methods share (same seed = same episodes), NaN with
    fewer than 2 shared seeds.
    """
    _require(trials, _trial_columns(trials), "trials table")
    shots = shots_in(trials)
    keys = ["dataset", "cells"]
    rows = []
    for group, frame in trials.groupby(keys, sort=False):
        seeds = _per_seed(frame, keys + ["method"])
        by_method = {m: f.set_index("seed") for m, f in seeds.groupby("method", sort=False)}
        base = by_method.get(BASELINE_METHOD)
        for method, f in by_method.items():
            row = dict(zip(keys, group)) | {"method": method, "seeds": int(len(f))}
            for k in shots:
                row |= _accuracy_summary(f, k)
                row |= _delta(f, base, k)
            rows.append(row)
    columns = keys + ["method", "seeds"] + [
        c for k in shots for c in (*_summary_columns(k), *_delta_columns(k))]
    return _sorted(pd.DataFrame(rows, columns=columns), ["dataset", "cells", "method"])


def _delta_columns(shots: int) -> tuple[str, str]:
    """(delta_Kshot, delta_Kshot_ci) of shot count K."""
    return f"delta_{shots}shot", f"delta_{shots}shot_ci"


def _delta(method: pd.DataFrame, base: pd.DataFrame | None, shots: int) -> dict[str, float]:
    """Difference to the baseline's mean, with a paired t-interval over shared seeds."""
    col = store.accuracy_column(shots)
    name, name_ci = _delta_columns(shots)
    if base is None:
        return {name: math.nan, name_ci: math.nan}
    a = method[col][np.isfinite(method[col])]
    b = base[col][np.isfinite(base[col])]
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    shared = a.index.intersection(b.index)
    diffs = (a.loc[shared] - b.loc[shared]).to_numpy()
    return {name: delta, name_ci: t_halfwidth(diffs)}


# ----------------------------------------------------------------------------- correlations


def _higher_is_better(column: str) -> bool:
    """Orientation of a proxy or baseline column (PROXIES, BASELINES)."""
    oriented = PROXIES | BASELINES
    if column not in oriented:
        raise ValueError(f"unknown proxy {column!r}; known: {list(oriented)}")
    return oriented[column]


def _orientation(column: str) -> str:
    """The `orientation` text of the correlation table."""
    text = "higher is better" if _higher_is_better(column) else "lower is better (negated)"
    return text + (" (baseline)" if column in BASELINES else "")


def _proxy_label(column: str) -> str:
    """Display name in Markdown: baselines are marked as such."""
    return f"{column} (baseline)" if column in BASELINES else column


def correlation_table(proxies: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Rank correlation of each training-free proxy with few-shot accuracy, per dataset.

    For every proxy column present (PROXIES) and target (`accuracy_targets`: acc_1shot, acc_5shot
    by default): Kendall tau-b
    and Spearman rho (`trainers.stats.rank_correlation`) between the oriented proxy (ranks, an
    infinite condition number worst) and the accuracy, with 95% percentile-bootstrap intervals from `n_boot` row resamples drawn by
    `numpy.random.default_rng(seed)`. Rows with a NaN proxy or accuracy are left out (`n`
    counts the rest; `n_inf` the infinite proxy values kept as worst).

    Baseline columns present (BASELINES: `params`, higher is better) follow each dataset's
    proxies, their `orientation` ending in "(baseline)". They resample with their own
    generator, `default_rng([seed, 1])`, so the proxies' intervals are the same with or
    without a baseline column.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    targets = accuracy_targets(proxies)
    _require(proxies, ("dataset",) + targets, "proxies table")
    present = [p for p in PROXIES if p in proxies.columns]
    if not present:
        raise ValueError(f"proxies table has none of the proxy columns {list(PROXIES)}")
    baselines = [b for b in BASELINES if b in proxies.columns]
    rng = np.random.default_rng(seed)
    baseline_rng = np.random.default_rng([seed, 1])  # own stream: proxies' numbers unchanged
    rows = []
    for dataset, frame in proxies.groupby("dataset", sort=True):
        for proxy in present + baselines:
            for target in targets:
                rows.append({"dataset": dataset, "proxy": proxy, "target": target,
                             "orientation": _orientation(proxy)}
                            | rank_correlation(frame[proxy].to_numpy(dtype=np.float64),
                                               frame[target].to_numpy(dtype=np.float64),
                                               _higher_is_better(proxy), n_boot,
                                               baseline_rng if proxy in BASELINES else rng))
    columns = ["dataset", "proxy", "target", "orientation", "n", "n_inf", "kendall_tau",
               "kendall_lo", "kendall_hi", "spearman_rho", "spearman_lo", "spearman_hi"]
    return pd.DataFrame(rows, columns=columns)


def proxy_difference_table(proxies: pd.DataFrame, *,
                           pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
                           n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired comparison of proxies: does proxy a rank architectures better than proxy b?

    For every dataset, pair (a, b) in `pairs` whose two columns are present (pairs with a
    missing column are skipped; a name outside PROXIES and BASELINES is a ValueError) and
    target (`accuracy_targets`): tau_a and tau_b, the Kendall tau-b of each oriented proxy
    (as in `correlation_table`: `oriented_ranks`, an infinite condition number ranks worst)
    with the accuracy, and tau_diff = tau_a - tau_b. Both are computed on the same rows:
    those where a, b and the target are all non-NaN (`n`), so tau_a can differ from the
    correlation table's when the other proxy has NaNs. The 95% interval [diff_lo, diff_hi]
    is a paired percentile bootstrap: each of the `n_boot` resamples (drawn by
    `numpy.random.default_rng(seed)`, in row order of the result) draws n rows with
    replacement and computes both taus on those same rows. frac_positive is the share of
    resamples with tau_a - tau_b > 0; resamples where either tau is undefined (a constant
    column) are left out of the interval and the share. NaN where undefined (n < 2, a
    constant proxy or accuracy, n_boot = 0 for the bootstrap columns).

    Returns one row per (dataset, pair, target), datasets sorted, pairs in the given order;
    columns: dataset, proxy_a, proxy_b, target, n, tau_a, tau_b, tau_diff, diff_lo, diff_hi,
    frac_positive. No pair present: an empty frame with these columns.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    targets = accuracy_targets(proxies)
    _require(proxies, ("dataset",) + targets, "proxies table")
    for name in {name for pair in pairs for name in pair}:
        _higher_is_better(name)  # a typo is an error even when its column is absent
    present = [(a, b) for a, b in pairs if a in proxies.columns and b in proxies.columns]
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, frame in proxies.groupby("dataset", sort=True):
        for a, b in present:
            for target in targets:
                rows.append({"dataset": dataset, "proxy_a": a, "proxy_b": b, "target": target}
                            | paired_tau_difference(frame[a].to_numpy(dtype=np.float64),
                                                    frame[b].to_numpy(dtype=np.float64),
                                                    frame[target].to_numpy(dtype=np.float64),
                                                    _higher_is_better(a), _higher_is_better(b),
                                                    n_boot, rng))
    columns = ["dataset", "proxy_a", "proxy_b", "target", "n", "tau_a", "tau_b", "tau_diff",
               "diff_lo", "diff_hi", "frac_positive"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- Markdown


def format_acc(mean: float, ci: float, kind: str = CI_SEEDS) -> str:
    """'62.00 ± 4.97' in percent; a dagger marks an episode interval (one seed)."""
    if not math.isfinite(mean):
        return "–"
    text = f"{100 * mean:.2f}" + (f" ± {100 * ci:.2f}" if math.isfinite(ci) else "")
    return text + (" †" if kind == CI_EPISODES else "")


def format_delta(delta: float, ci: float) -> str:
    """'+1.33 ± 0.80' percentage points; '–' when undefined."""
    if not math.isfinite(delta):
        return "–"
    return f"{100 * delta:+.2f}" + (f" ± {100 * ci:.2f}" if math.isfinite(ci) else "")


def _fmt_corr(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else "")


_DAGGER_NOTE = ("± is the 95% t-interval across seeds of the per-seed episode means; † marks "
                "a single seed, where ± is that trial's own 95% interval over episodes.")


def _format_summary(row: Mapping[str, object], shots: int) -> str:
    """`format_acc` of a table row's accuracy of `shots` (`_summary_columns`)."""
    acc, ci, kind = _summary_columns(shots)
    return format_acc(row[acc], row[ci], row[kind])


def table1_markdown(t1: pd.DataFrame) -> str:
    """Markdown of `table1` (accuracies in percent), one column per shot count."""
    shots = shots_in(t1)
    rows = [(r["dataset"], r["method"], r["cells"], r["seeds"], f"{r['params_m']:.2f}",
             format_seconds(r["search_device_seconds"]), *(_format_summary(r, k) for k in shots))
            for r in t1.to_dict("records")]
    return markdown_table(["dataset", "method", "cells", "seeds", "params (M)", "search (device time)",
                           *(f"{shot_label(k)} (%)" for k in shots)], rows,
                          "llrrrr" + "r" * len(shots)) + "\n\n" + _DAGGER_NOTE


def table2_markdown(t2: pd.DataFrame) -> str:
    """Markdown of `table2` (percent; Δ in percentage points vs `random`)."""
    shots = shots_in(t2)

    def delta(r: Mapping[str, object], k: int) -> str:
        if r["method"] == BASELINE_METHOD:
            return "(baseline)"
        name, name_ci = _delta_columns(k)
        return format_delta(r[name], r[name_ci])

    rows = [(r["dataset"], r["cells"], r["method"], r["seeds"],
             *(text for k in shots for text in (_format_summary(r, k), delta(r, k))))
            for r in t2.to_dict("records")]
    headers = [h for k in shots for h in (f"{shot_label(k)} (%)", f"Δ {shot_label(k)} vs {BASELINE_METHOD}")]
    return markdown_table(["dataset", "cells", "method", "seeds", *headers], rows,
                          "lrlr" + "rr" * len(shots)) + (
        "\n\n" + _DAGGER_NOTE + f" Δ: difference of means to `{BASELINE_METHOD}` in "
        "percentage points, ± a paired 95% t-interval over shared seeds (same seed = same "
        "episodes) when there are at least two.")


def correlations_markdown(corr: pd.DataFrame) -> str:
    """Markdown of `correlation_table`."""
    rows = [(r.dataset, _proxy_label(r.proxy), r.orientation, r.target, r.n, r.n_inf,
             _fmt_corr(r.kendall_tau, r.kendall_lo, r.kendall_hi),
             _fmt_corr(r.spearman_rho, r.spearman_lo, r.spearman_hi))
            for r in corr.itertuples()]
    baselines = [b for b in BASELINES if b in set(corr["proxy"])]
    return markdown_table(["dataset", "proxy", "orientation", "target", "n", "inf",
                           "Kendall τ [95% CI]", "Spearman ρ [95% CI]"], rows,
                          "llllrrrr") + (
        "\n\nProxies are oriented so that a positive correlation means the proxy ranks "
        "better-performing architectures higher (condition numbers negated; an infinite "
        "condition number ranks worst). Intervals: percentile bootstrap over architectures."
        + (" `params (baseline)` is the parameter count (larger = predicted better), the "
           "naive baseline a training-free proxy should beat." if baselines else ""))


def _fmt_share(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "–"


def proxy_differences_markdown(diff: pd.DataFrame) -> str:
    """Markdown of `proxy_difference_table`."""
    rows = [(r.dataset, r.target, _proxy_label(r.proxy_a), _proxy_label(r.proxy_b), r.n,
             _fmt_corr(r.tau_a, math.nan, math.nan), _fmt_corr(r.tau_b, math.nan, math.nan),
             _fmt_corr(r.tau_diff, r.diff_lo, r.diff_hi), _fmt_share(r.frac_positive))
            for r in diff.itertuples()]
    return markdown_table(["dataset", "target", "a", "b", "n", "τ(a)", "τ(b)",
                           "τ(a) − τ(b) [95% CI]", "P(τ(a) > τ(b))"], rows,
                          "llllrrrrr") + (
        "\n\nAn interval that excludes 0 means one proxy ranks architectures reliably "
        "better (a when above 0, b when below). Both τ are on the rows where a, b and the "
        "accuracy are known; the interval and P (share of resamples with τ(a) > τ(b)) come "
        "from a paired bootstrap: both τ on the same resampled architectures.")


def searches_markdown(searches: pd.DataFrame) -> str:
    """Markdown list of finished searches (cost per search)."""
    frame = _sorted(searches, ["dataset", "cells", "method", "seed"])
    rows = [(r.dataset, r.method, r.seed, r.cells, r.rounds, r.candidates, r.workers,
             r.device_kind or "–", format_seconds(r.device_seconds),
             format_seconds(r.wall_seconds)) for r in frame.itertuples()]
    return markdown_table(["dataset", "method", "seed", "cells", "rounds", "candidates",
                           "workers", "device", "device time", "wall time"], rows,
                          "llrrrrrlrr")


def accuracies_with_added_evaluations(trials: Any, episodes: Any) -> Any:
    """`trials` with each missing (NaN) `acc_<K>shot` / `ci_<K>shot` filled from the trial's
    `episodes` rows of K shots (mean, 95% t half-width): the shot counts evaluated after the
    trial's row was written. The rows on disk are not changed."""
    import math

    from trainers.stats import mean_confidence_interval

    if trials.empty or episodes.empty:
        return trials
    out = trials.copy()
    index = {t: i for i, t in zip(out.index, out["trial_id"])}
    for (trial_id, shots), group in episodes.groupby(["trial_id", "shots"]):
        acc, ci = f"acc_{int(shots)}shot", f"ci_{int(shots)}shot"
        i = index.get(trial_id)
        if i is None or acc not in out.columns or not math.isnan(out.at[i, acc]):
            continue
        mean, half = mean_confidence_interval(group["accuracy"].tolist())
        out.at[i, acc], out.at[i, ci] = float(mean), float(half)
    return out
