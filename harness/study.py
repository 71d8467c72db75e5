"""Proxy-quality study (issue 6): do training-free scores at initialisation predict accuracy?

For every genotype of an experiment (in `experiments/correlation_omniglot.toml` each seed of
the `random` method is one uniformly sampled genotype) four proxies are measured on the
network at initialisation, before any training:

- `cn_metantk_maml`: condition number of the MetaNTK Φ with the MAML inner kernel (Θ),
  `t = search.inner_time`, `c = search.reg` (paper eq. 10-11, the MetaNTK-NAS score);
- `cn_metantk_anil`: the same with the ANIL inner kernel (head NNGP),
  `t = study.anil_inner_time`, `c = study.anil_reg`;
- `cn_ntk`: condition number of the plain NTK Θ (the TE-NAS score);
- `regions`: number of linear regions of the thin supernet (TE-NAS).

The network scored is the search supernet restricted to the genotype (`genotype_masks`:
the genotype's op on its 2 edges per node, every other edge removed), i.e. exactly what the
search scores, with the same `ScoreSpec` (kernel batch, image size, norm, parameters). The
Tune trials then train and evaluate each genotype; `finish_proxy_study` joins both and
writes the `proxies` table and scatter plots; `harness.report` computes the correlations.

Randomness (design section 2): the scores of repeat `r` use the key
`(experiment seed, "proxy", r)` for every genotype, i.e. common random numbers: within a
repeat all genotypes are sub-networks of ONE supernet weight draw and see the same kernel
task batch and the same region inputs, so differences between genotypes come from the
architecture, not from a lucky draw (the same reason the search shares weights between
the origin and its candidates). Consequently a genotype gets the same scores whatever its
search id, worker, order or retry. The MAML and ANIL kernels of one repeat are computed on
the same weights and batch too (same key, same network shape).

Aggregation over `study.repeats` repeats: condition numbers by the geometric mean
(mean of log CN; they span orders of magnitude and an arithmetic mean is dominated by one
ill-conditioned draw), with `inf` if any repeat is `inf` (a singular kernel is not averaged
away) and NaN if any is NaN; regions by the arithmetic mean.

Init-time scores are checkpointed per (genotype, kernel, repeat) in
`RESULTS_DIR/state/proxies_init.json` (atomic), tagged with a digest of the score specs, so a
rerun of `metantk-nas run` only scores what is missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from harness import store
from harness.errors import UserError
from harness.scoring import Score, ScoreSpec, masks_array, spec_from_config

INIT_FILE = "state/proxies_init.json"
INIT_FORMAT = 1
PLOT_FILE = "proxies_scatter.png"
PROXIES_KEY = "proxies"
KEY_TAG = "proxy"

# Proxy column of the `proxies` table -> (kernel spec name, measure of harness.scoring).
PROXY_SOURCES: dict[str, tuple[str, str]] = {
    "cn_metantk_maml": ("maml", "cn_meta"),
    "cn_metantk_anil": ("anil", "cn_meta"),
    "cn_ntk": ("maml", "cn_ntk"),
    "regions": ("maml", "rn"),
}
PROXY_COLUMNS: tuple[str, ...] = tuple(PROXY_SOURCES)
CN_COLUMNS: tuple[str, ...] = ("cn_metantk_maml", "cn_metantk_anil", "cn_ntk")
# Measures computed per kernel spec (the NTK and regions do not depend on the inner loop,
# so they are measured once, with the MAML spec).
KERNEL_MEASURES: dict[str, tuple[str, ...]] = {"maml": ("cn_meta", "cn_ntk", "rn"), "anil": ("cn_meta",)}
PROXY_LABELS: dict[str, str] = {
    "cn_metantk_maml": "CN MetaNTK (MAML)",
    "cn_metantk_anil": "CN MetaNTK (ANIL)",
    "cn_ntk": "CN NTK (TE-NAS)",
    "regions": "linear regions",
}
TARGET_LABELS: dict[str, str] = {"acc_1shot": "5-way 1-shot accuracy", "acc_5shot": "5-way 5-shot accuracy"}


# ----------------------------------------------------------------------------- pure helpers


def proxy_specs(cfg: Any, cells: int) -> dict[str, ScoreSpec]:
    """The two kernel specs of one cell count: {"maml": ..., "anil": ...}.

    Both share every network/data setting of `spec_from_config(cfg, cells)` (hence weights
    and batches under one key); only the inner loop differs.
    """
    base = spec_from_config(cfg, cells)
    return {
        "maml": dataclasses.replace(base, algorithm="maml", inner_time=cfg.search.inner_time, reg=cfg.search.reg),
        "anil": dataclasses.replace(base, algorithm="anil", inner_time=cfg.study.anil_inner_time,
                                    reg=cfg.study.anil_reg),
    }


def proxy_key(experiment_seed: int, repeat: int) -> tuple:
    """Key of repeat `repeat`: the same for every genotype (common random numbers, module doc)."""
    return (experiment_seed, KEY_TAG, repeat)


def spec_digest(spec: ScoreSpec) -> str:
    """Digest of what fixes a kernel's per-repeat scores of a genotype (spec and key scheme)."""
    text = repr((INIT_FORMAT, KEY_TAG, dataclasses.astuple(spec)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def aggregate(per_repeat: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, float]:
    """Proxy columns from per-repeat scores {kernel: [{measure: value} per repeat]}."""
    out = {}
    for column, (kernel, measure) in PROXY_SOURCES.items():
        values = [r[measure] for r in per_repeat[kernel]]
        out[column] = geometric_mean_cn(values) if column in CN_COLUMNS else mean_or_nan(values)
    return out


def _enc(x: float) -> float | str:
    """A float for JSON: non-finite values as the strings 'inf', '-inf', 'nan'."""
    return float(x) if math.isfinite(x) else str(float(x))


def _dec(x: float | str) -> float:
    return float(x)


# ----------------------------------------------------------------------------- init checkpoint


def load_init(results_dir: Path) -> dict[str, Any]:
    """The init-score checkpoint {search_id: entry}; {} when absent."""
    path = Path(results_dir) / INIT_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != INIT_FORMAT:
        raise UserError(f"{path} has format {data.get('format')!r}, this code reads {INIT_FORMAT}; "
                        f"delete it to rescore the proxies")
    return data["entries"]


def _save_init(results_dir: Path, entries: Mapping[str, Any]) -> None:
    store.write_json_atomic(Path(results_dir) / INIT_FILE, {"format": INIT_FORMAT, "entries": entries})


def _entry_complete(entry: Mapping[str, Any], repeats: int) -> bool:
    return all(str(r) in entry["repeats"].get(kernel, {}) for kernel in KERNEL_MEASURES for r in range(repeats))


def _current_entry(old: Mapping[str, Any] | None, row: Mapping[str, Any], digests: Mapping[str, str]
                   ) -> dict[str, Any]:
    """The checkpoint entry of `row`, keeping the old scores that are still valid.

    A kernel's stored repeats are kept only if its spec digest is unchanged and the genotype
    is the same (changing `study.anil_reg` rescores only the ANIL kernel).
    """
    keep = old is not None and old["genotype"] == row["genotype"] and int(old["cells"]) == int(row["cells"])
    repeats = {k: dict(old["repeats"].get(k, {})) if keep and old["digests"].get(k) == digests[k] else {}
               for k in KERNEL_MEASURES}
    return {"search_id": row["search_id"], "method": row["method"], "seed": int(row["seed"]),
            "cells": int(row["cells"]), "genotype": row["genotype"], "digests": dict(digests),
            "repeats": repeats}


def _result_row(entry: Mapping[str, Any], repeats: int) -> dict[str, Any]:
    per_repeat = {k: [{m: _dec(v) for m, v in entry["repeats"][k][str(r)].items()} for r in range(repeats)]
                  for k in KERNEL_MEASURES}
    seconds = sum(r["seconds"] for k in per_repeat for r in per_repeat[k])
    return {"search_id": entry["search_id"], "method": entry["method"], "seed": entry["seed"],
            "cells": entry["cells"], "genotype": entry["genotype"], **aggregate(per_repeat),
            "seconds": float(seconds)}


# ----------------------------------------------------------------------------- scoring


def score_proxies(cfg: Any, searches: Sequence[Mapping[str, Any]], *, progress: bool = True,
                  pool: Any = None) -> list[dict[str, Any]]:
    """Score every genotype of `searches` (rows of the `searches` table) at initialisation.

    Returns one dict per row, in order: search_id, method, seed, cells, genotype, the four
    proxy columns (PROXY_COLUMNS, repeat-aggregated, see module doc) and seconds (scoring
    time summed over repeats and kernels). `pool`: a `harness.scorers.ScorerPool`, a
    `harness.scoring.InlinePool` or any object with `.run(jobs, on_result)`; None starts one (`harness.cmd_search.start_pool`)
    and shuts it down afterwards, and only if something is left to score.
    """
    from tqdm.auto import tqdm

    from harness.scoring import Job
    from search_spaces.genotypes import Genotype
    from search_spaces.supernet import genotype_masks

    results_dir = cfg.results_dir
    repeats = cfg.study.repeats
    ids = [row["search_id"] for row in searches]
    if len(set(ids)) != len(ids):
        raise ValueError(f"searches lists a search_id twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    specs = {c: proxy_specs(cfg, c) for c in sorted({int(row["cells"]) for row in searches})}
    digests = {c: {k: spec_digest(spec) for k, spec in s.items()} for c, s in specs.items()}
    saved = load_init(results_dir)
    entries = {row["search_id"]: _current_entry(saved.get(row["search_id"]), row, digests[int(row["cells"])])
               for row in searches}
    # Keep entries of other rows (e.g. a later run with fewer seeds) untouched in the file.
    merged = {**saved, **entries}

    # Jobs grouped by (cells, kernel, repeat): one key per group, so an actor redraws the
    # weights and batches once per group, not per genotype.
    jobs = []
    for cells, by_kernel in specs.items():
        for kernel, spec in by_kernel.items():
            for r in range(repeats):
                todo = [(sid, e) for sid, e in entries.items()
                        if e["cells"] == cells and str(r) not in e["repeats"][kernel]]
                items = [((sid, kernel, r), masks_array(genotype_masks(Genotype.from_str(e["genotype"]))))
                         for sid, e in todo]
                per_job = cfg.search.candidates_per_job
                for i in range(0, len(items), per_job):
                    jobs.append(Job(spec, proxy_key(cfg.experiment.seed, r), KERNEL_MEASURES[kernel],
                                    tuple(items[i:i + per_job])))
    total = sum(len(j.items) for j in jobs)
    if total:
        own_pool = pool is None
        if own_pool:
            from harness.cmd_search import start_pool

            pool = start_pool(cfg)
        bar = tqdm(total=total, desc="proxies", unit="score", disable=not progress, dynamic_ncols=True)
        started = time.perf_counter()
        last_save = [started]

        def on_result(job: Any, label: str, results: list[tuple[Hashable, Score]]) -> None:
            for (sid, kernel, r), score in results:
                entries[sid]["repeats"][kernel][str(r)] = {
                    **{m: _enc(getattr(score, m)) for m in KERNEL_MEASURES[kernel]}, "seconds": score.seconds}
            bar.update(len(results))
            # Checkpoint at most every 10 s (atomic rewrite of one small JSON file).
            if time.perf_counter() - last_save[0] > 10:
                _save_init(results_dir, merged)
                last_save[0] = time.perf_counter()

        try:
            pool.run(jobs, on_result)
        finally:
            _save_init(results_dir, merged)
            bar.close()
            if own_pool:
                pool.shutdown()
    else:
        _save_init(results_dir, merged)
    missing = [sid for sid, e in entries.items() if not _entry_complete(e, repeats)]
    if missing:  # pool.run returns only when every job finished; this is a programming error
        raise RuntimeError(f"proxy scores missing for {missing} after scoring")
    return [_result_row(entries[row["search_id"]], repeats) for row in searches]


# ----------------------------------------------------------------------------- join, table, plots


def proxy_rows(cfg: Any, init: Mapping[str, Any], trials: Any) -> list[dict[str, Any]]:
    """`proxies` table rows: each trial of `cfg`'s experiment joined with its init scores.

    init: {search_id: entry} (`load_init`); trials: the `trials` DataFrame. A trial of the
    experiment without init scores, or whose genotype differs from the scored one, is an
    error (the study would silently lose or mismatch rows otherwise).
    """
    repeats = cfg.study.repeats
    frame = trials[trials["experiment"] == cfg.experiment.name]
    rows = []
    problems = []
    for t in frame.sort_values("trial_id").itertuples():
        entry = init.get(t.search_id)
        if entry is None or not _entry_complete(entry, repeats):
            problems.append(f"{t.search_id}: no complete init scores")
            continue
        if entry["genotype"] != t.genotype:
            problems.append(f"{t.search_id}: scored genotype {entry['genotype']} != trained {t.genotype}")
            continue
        scores = _result_row(entry, repeats)
        rows.append({
            "experiment": cfg.experiment.name, "dataset": t.dataset, "genotype_id": t.search_id,
            "genotype": t.genotype, "seed": int(t.seed), "cells": int(t.cells),
            **{c: float(scores[c]) for c in PROXY_COLUMNS}, "params": int(t.params),
            "acc_1shot": float(t.acc_1shot), "ci_1shot": float(t.ci_1shot),
            "acc_5shot": float(t.acc_5shot), "ci_5shot": float(t.ci_5shot),
            "train_seconds": float(t.train_seconds),
        })
    if problems:
        raise UserError(f"{cfg.results_dir}: cannot join {len(problems)} trial(s) with their proxy scores "
                        f"({'; '.join(problems[:3])}); rerun `metantk-nas run` on the same experiment file "
                        f"so the missing proxies are scored")
    return rows


def finish_proxy_study(cfg: Any) -> Path:
    """Join init scores with the trials, write the `proxies` table and the scatter plots.

    Returns the path of the plot (RESULTS_DIR/plots/proxies_scatter.png).
    """
    import pandas as pd

    results_dir = cfg.results_dir
    if not store.table_files(results_dir, "trials"):
        raise UserError(f"{results_dir}: no `trials` rows to join the proxies with; run `metantk-nas run` first")
    init = load_init(results_dir)
    if not init:
        raise UserError(f"{results_dir / INIT_FILE} not found: the proxies were not scored; set "
                        f"[study] proxies = true and rerun `metantk-nas run`")
    rows = proxy_rows(cfg, init, store.read_table(results_dir, "trials"))
    store.write_rows(results_dir, "proxies", PROXIES_KEY, rows)
    layout = store.results_layout(results_dir)
    return plot_proxies(pd.DataFrame(rows), layout.plots / PLOT_FILE, n_boot=cfg.study.n_boot,
                        title=f"{cfg.experiment.name}: proxies at initialisation vs accuracy after training "
                              f"({len(rows)} genotypes)")


def plot_proxies(frame: Any, path: Path, *, n_boot: int = 1000, seed: int = 0, title: str = "") -> Path:
    """One grid PNG: rows = targets (1-shot, 5-shot), columns = proxies present in `frame`.

    Condition numbers as log10 (they span decades); infinite ones drawn as red crosses at
    the right edge.
    Each panel's title gives Kendall tau with its 95% bootstrap interval, computed by
    `harness.report.correlation_table` (proxy oriented so that positive = predictive).
    Written atomically; returns `path`.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report import TARGETS, correlation_table

    columns = [c for c in PROXY_COLUMNS if c in frame.columns]
    if frame.empty or not columns:
        raise ValueError(f"no proxy rows to plot (columns {list(frame.columns)}); expected {list(PROXY_COLUMNS)}")
    frame = frame.assign(dataset=frame["dataset"] if "dataset" in frame.columns else "data")
    corr = correlation_table(frame[["dataset", *columns, *TARGETS]], n_boot=n_boot, seed=seed)
    fig, axes = plt.subplots(len(TARGETS), len(columns), figsize=(3.2 * len(columns), 2.9 * len(TARGETS)),
                             squeeze=False)
    for j, column in enumerate(columns):
        x = frame[column].to_numpy(dtype=np.float64)
        if column in CN_COLUMNS:
            with np.errstate(divide="ignore"):
                x = np.log10(x)
        finite = np.isfinite(x)
        for i, target in enumerate(TARGETS):
            ax = axes[i, j]
            y = 100 * frame[target].to_numpy(dtype=np.float64)
            ax.scatter(x[finite], y[finite], s=14, alpha=0.8)
            if (~finite & ~np.isnan(x)).any():
                right = np.nanmax(x[finite]) + 0.1 * max(np.ptp(x[finite]), 1.0) if finite.any() else 1.0
                ax.scatter(np.full((~finite).sum(), right), y[~finite], marker="x", color="red", s=20,
                           label="inf")
                ax.legend(loc="best", fontsize=7)
            r = corr[(corr["proxy"] == column) & (corr["target"] == target)].iloc[0]
            tau = "n/a" if not math.isfinite(r.kendall_tau) else f"{r.kendall_tau:+.2f}"
            ci = f" [{r.kendall_lo:+.2f}, {r.kendall_hi:+.2f}]" if math.isfinite(r.kendall_lo) else ""
            ax.set_title((PROXY_LABELS[column] + "\n" if i == 0 else "") + f"Kendall τ = {tau}{ci}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(TARGETS) - 1:
                ax.set_xlabel("log10 condition number (lower = better)" if column in CN_COLUMNS
                              else "regions (higher = better)", fontsize=8)
            if j == 0:
                ax.set_ylabel(TARGET_LABELS[target] + " (%)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    store.write_bytes_atomic(path, buffer.getvalue())
    return path


