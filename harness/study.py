"""Proxy-quality study: do training-free scores at initialisation predict accuracy?

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
Tune trials then train and evaluate each genotype; `write_proxy_tables` joins both and
writes the `proxies` table (`harness.pipeline.finish_proxy_study` adds the scatter plots);
`harness.report` computes the correlations.

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

Zero-cost proxies add two things. `[study] zero_cost` names further proxies of `kernels.proxies`
(synflow, snip, ..., see `kernels.proxy_names`), measured as "proxy:<name>" with the MAML
spec: the same weights, batch, region inputs and repeats as the four columns, each with its
own seconds. Every proxy value per (genotype, proxy, repeat) goes to the long
`proxy_scores` table (the four columns too, with NaN seconds where a registry proxy of the
same name was not timed), read by `harness.leaderboard`. `[study] train_seeds` trains each
genotype once per seed (`harness.trials.training_runs`); the `proxies` table then holds the
mean accuracy over the trainings (the interval: a t-interval across them), and the per-seed
accuracies stay in the `trials` table for the target's retest reliability.

Init-time scores are checkpointed per (genotype, kernel, repeat) in
`RESULTS_DIR/state/proxies_init.json` (atomic), tagged with a digest of the score specs, so a
rerun of `metantk-nas run` only scores what is missing.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

from harness import store
from harness.errors import UserError
from harness.methods import PROXY_MEASURE_PREFIX
from harness.report import CN_COLUMNS
from harness.scoring import Score, ScoreSpec, masks_array, spec_from_config
from trainers.stats import geometric_mean_cn, mean_or_nan, summarize_seeds  # noqa: F401  (re-exported)

INIT_FILE = "state/proxies_init.json"
INIT_FORMAT = 1
PLOT_FILE = "proxies_scatter.png"
PROXIES_KEY = "proxies"
SCORES_TABLE = "proxy_scores"
KEY_TAG = "proxy"

# Proxy column of the `proxies` table -> (kernel spec name, measure of harness.scoring).
PROXY_SOURCES: dict[str, tuple[str, str]] = {
    "cn_metantk_maml": ("maml", "cn_meta"),
    "cn_metantk_anil": ("anil", "cn_meta"),
    "cn_ntk": ("maml", "cn_ntk"),
    "regions": ("maml", "rn"),
}
PROXY_COLUMNS: tuple[str, ...] = tuple(PROXY_SOURCES)
# Measures computed per kernel spec (the NTK and regions do not depend on the inner loop,
# so they are measured once, with the MAML spec).
KERNEL_MEASURES: dict[str, tuple[str, ...]] = {"maml": ("cn_meta", "cn_ntk", "rn"), "anil": ("cn_meta",)}


# ----------------------------------------------------------------------------- pure helpers


def proxy_specs(cfg: Any, cells: int) -> dict[str, ScoreSpec]:
    """The two kernel specs of one cell count: {"maml": ..., "anil": ...}.

    Both share every network/data setting of `spec_from_config(cfg, cells)` (hence weights
    and batches under one key); only the inner loop differs.
    """
    base = spec_from_config(cfg, cells)
    # Proxy settings matter only where registry proxies are measured (the MAML spec, with
    # `study.zero_cost`): elsewhere they are left out so that they change no digest.
    options = base.kernel.proxy_options if cfg.study.zero_cost else ()
    return {
        "maml": base.with_kernel(algorithm="maml", inner_time=cfg.search.inner_time, reg=cfg.search.reg,
                                 proxy_options=options),
        "anil": base.with_kernel(algorithm="anil", inner_time=cfg.study.anil_inner_time,
                                 reg=cfg.study.anil_reg, proxy_options=()),
    }


def kernel_measures(cfg: Any) -> dict[str, tuple[str, ...]]:
    """Measures per kernel spec: KERNEL_MEASURES plus "proxy:<name>" of `study.zero_cost` (MAML)."""
    extra = tuple(f"{PROXY_MEASURE_PREFIX}{n}" for n in cfg.study.zero_cost)
    return {"maml": KERNEL_MEASURES["maml"] + extra, "anil": KERNEL_MEASURES["anil"]}


def proxy_key(experiment_seed: int, repeat: int) -> tuple:
    """Key of repeat `repeat`: the same for every genotype (common random numbers, module doc)."""
    return (experiment_seed, KEY_TAG, repeat)


# Registry proxies whose definition changed after checkpoints were written, with a tag of the
# change: a checkpoint that measured one under its old definition no longer matches its digest
# and is rescored. `proxy:cn_ntk` ran on the MetaNTK's task batch and `ways` head until it ran
# on TE-NAS's plain batch and base-class head (`kernels.proxies.NETWORKS`, "ntk"), so that it
# equals the `cn_ntk` column.
REDEFINED_MEASURES: dict[str, str] = {f"{PROXY_MEASURE_PREFIX}cn_ntk": "ntk-network"}


def spec_digest(spec: ScoreSpec, extra_measures: tuple[str, ...] = ()) -> str:
    """Digest of what fixes a kernel's per-repeat scores of a genotype (spec, key scheme and
    the registry proxies measured). Without proxies it is the digest of the spec before
    `proxy_options` existed, so older checkpoints stay valid."""
    fields = spec.flat_fields()
    if not spec.kernel.proxy_options:
        # Digests written before `proxy_options` existed dropped the last flat field (then
        # `ntk_batch`): kept, so those checkpoints stay valid.
        fields = fields[:-1]
    parts: tuple = (INIT_FORMAT, KEY_TAG, fields)
    if extra_measures:
        parts += (tuple(f"{m}@{REDEFINED_MEASURES[m]}" if m in REDEFINED_MEASURES else m for m in extra_measures),)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _digests(cfg: Any, specs: Mapping[str, ScoreSpec]) -> dict[str, str]:
    measures = kernel_measures(cfg)
    return {k: spec_digest(spec, measures[k][len(KERNEL_MEASURES[k]):]) for k, spec in specs.items()}


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
    per_repeat = {k: [{m: _dec(v) for m, v in entry["repeats"][k][str(r)].items() if m != "proxy_seconds"}
                      for r in range(repeats)] for k in KERNEL_MEASURES}
    seconds = sum(r["seconds"] for k in per_repeat for r in per_repeat[k])
    return {"search_id": entry["search_id"], "method": entry["method"], "seed": entry["seed"],
            "cells": entry["cells"], "genotype": entry["genotype"], **aggregate(per_repeat),
            "seconds": float(seconds)}


# ----------------------------------------------------------------------------- scoring


def score_proxies(cfg: Any, searches: Sequence[Mapping[str, Any]], *, progress: bool = True,
                  pool: Any = None, start_pool: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Score every genotype of `searches` (rows of the `searches` table) at initialisation.

    Returns one dict per row, in order: search_id, method, seed, cells, genotype, the four
    proxy columns (PROXY_COLUMNS, repeat-aggregated, see module doc) and seconds (scoring
    time summed over repeats and kernels). `pool`: a `harness.scorers.ScorerPool`, a
    `harness.scoring.InlinePool` or any object with `.run(jobs, on_result)`; None: `start_pool()`
    makes one (`harness.pipeline.start_pool`), only if something is left to score, and it is
    shut down afterwards.
    """
    from trainers.progress import progress_bar

    from harness.scoring import Job
    from search_spaces.genotypes import Genotype
    from search_spaces.supernet import genotype_masks

    results_dir = cfg.results_dir
    repeats = cfg.study.repeats
    ids = [row["search_id"] for row in searches]
    if len(set(ids)) != len(ids):
        raise ValueError(f"searches lists a search_id twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    specs = {c: proxy_specs(cfg, c) for c in sorted({int(row["cells"]) for row in searches})}
    digests = {c: _digests(cfg, s) for c, s in specs.items()}
    measures_of = kernel_measures(cfg)
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
                    jobs.append(Job(spec, proxy_key(cfg.experiment.seed, r), measures_of[kernel],
                                    tuple(items[i:i + per_job])))
    total = sum(len(j.items) for j in jobs)
    if total:
        own_pool = pool is None
        if own_pool:
            if start_pool is None:
                raise ValueError("score_proxies needs a pool or start_pool to score the missing proxies")
            pool = start_pool()
        bar = progress_bar(total, "proxies", "score", enabled=progress, dynamic_ncols=True)
        started = time.perf_counter()
        last_save = [started]

        def on_result(job: Any, label: str, results: list[tuple[Hashable, Score]]) -> None:
            for (sid, kernel, r), score in results:
                entries[sid]["repeats"][kernel][str(r)] = {
                    **{m: _enc(score.value(m)) for m in measures_of[kernel]}, "seconds": score.seconds,
                    "proxy_seconds": dict(score.proxy_seconds)}
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
    trainings = max(1, len(cfg.study.train_seeds))
    shots = store.normalized_shots(cfg.evaluate.shots)
    rows = []
    problems = []
    for search_id, group in frame.sort_values("trial_id").groupby("search_id", sort=True):
        t = next(group.itertuples())
        entry = init.get(search_id)
        if entry is None or not _entry_complete(entry, repeats):
            problems.append(f"{search_id}: no complete init scores")
            continue
        if set(group["genotype"]) != {entry["genotype"]}:
            problems.append(f"{search_id}: scored genotype {entry['genotype']} != trained {t.genotype}")
            continue
        if len(group) != trainings:
            problems.append(f"{search_id}: {len(group)} of {trainings} trainings (study.train_seeds)")
            continue
        scores = _result_row(entry, repeats)
        # Mean over the trainings; with >= 2 a t-interval across them, else the episode interval.
        acc = {k: summarize_seeds(group[store.accuracy_column(k)].to_numpy(),
                                  group[store.interval_column(k)].to_numpy()) for k in shots}
        rows.append({
            "experiment": cfg.experiment.name, "dataset": t.dataset, "genotype_id": search_id,
            "genotype": t.genotype, "seed": int(t.seed), "cells": int(t.cells),
            **{c: float(scores[c]) for c in PROXY_COLUMNS}, "params": int(t.params),
            **{c: v for k in shots for c, v in ((store.accuracy_column(k), acc[k].mean),
                                                (store.interval_column(k), acc[k].ci))},
            "train_seconds": float(group["train_seconds"].sum()),
        })
    if problems:
        raise UserError(f"{cfg.results_dir}: cannot join {len(problems)} trial(s) with their proxy scores "
                        f"({'; '.join(problems[:3])}); rerun `metantk-nas run` on the same experiment file "
                        f"so the missing proxies are scored")
    return rows


def proxy_score_rows(cfg: Any, init: Mapping[str, Any], genotype_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Long `proxy_scores` rows: one per (genotype, proxy, repeat) with the value and seconds.

    The four columns come from their measures (seconds NaN: they share one timed job); a
    proxy of `study.zero_cost` from its registry measure with its own seconds (so listing
    e.g. "cn_ntk" there times it, with the same value).
    """
    rows = []
    for gid in genotype_ids:
        entry = init[gid]
        for r in range(cfg.study.repeats):
            values: dict[str, tuple[float, float]] = {}
            for column, (kernel, measure) in PROXY_SOURCES.items():
                values[column] = (_dec(entry["repeats"][kernel][str(r)][measure]), math.nan)
            maml = entry["repeats"]["maml"][str(r)]
            for name in cfg.study.zero_cost:
                m = f"{PROXY_MEASURE_PREFIX}{name}"
                values[name] = (_dec(maml[m]), float(maml["proxy_seconds"][m]))
            rows += [{"experiment": cfg.experiment.name, "dataset": cfg.dataset.name, "genotype_id": gid,
                      "genotype": entry["genotype"], "cells": int(entry["cells"]), "proxy": name, "repeat": r,
                      "value": v, "seconds": sec} for name, (v, sec) in values.items()]
    return rows


def write_proxy_tables(cfg: Any) -> list[dict[str, Any]]:
    """Join init scores with the trials and write the `proxies` and `proxy_scores` tables;
    returns the `proxies` rows (`harness.pipeline.finish_proxy_study` also draws the plots)."""
    results_dir = cfg.results_dir
    if not store.table_files(results_dir, "trials"):
        raise UserError(f"{results_dir}: no `trials` rows to join the proxies with; run `metantk-nas run` first")
    init = load_init(results_dir)
    if not init:
        raise UserError(f"{results_dir / INIT_FILE} not found: the proxies were not scored; set "
                        f"[study] proxies = true and rerun `metantk-nas run`")
    from harness.report import accuracies_with_added_evaluations

    # with the accuracies of shot counts evaluated after a trial ran (`harness.growth`)
    trials = accuracies_with_added_evaluations(store.read_table(results_dir, "trials"),
                                               store.read_table(results_dir, "episodes"))
    rows = proxy_rows(cfg, init, trials)
    store.write_rows(results_dir, "proxies", PROXIES_KEY, rows)
    store.write_rows(results_dir, SCORES_TABLE, PROXIES_KEY,
                     proxy_score_rows(cfg, init, [r["genotype_id"] for r in rows]))
    return rows
