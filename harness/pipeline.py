"""The stages of an experiment, in one place: what `metantk-nas run`, `search`, `train`,
`evaluate` and `report` do once their arguments are parsed (the `cmd_*` modules only parse
arguments and call these).

- `results_folder`: the up-front checks, the folder's lock, `--fresh`, the resumable-state
  check, unreadable files set aside, the resolved config written; then the stages run.
- `search_stage`: every search on a scorer pool (`start_pool`, only when a method scores);
- `streamed_stage`: the searches with each searched cell's trials streamed into Tune as its
  search ends (`harness.trial_stream`): `run`'s default;
- `proxy_stage` / `finish_proxy_study`: the proxy study's init-time scores, then its tables
  and plots once the trials are in;
- `trial_stage`: the Tune trials of the searched (or given) genotypes that are still missing
  (after `streamed_stage`: only those of an interrupted earlier Tune experiment, restored);
- `write_report` / `build_report`: Markdown, CSVs, figures and the HTML page from the Parquet
  tables;
- `run_experiment`: the whole `run`; `train_genotypes`: `train` (the `searches` rows of
  given genotypes, then their trials); `evaluate_model_file`: `evaluate`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd

from harness import report, store
from harness.config import PRUNING_METHODS, ExperimentConfig
from harness.figures import FIGURE_DIR, FigureSet, leaderboard_figures, plot_proxies, write_figures
from harness.html_report import INDEX_FILE, render_index
from harness.leaderboard import leaderboard_section

# ----------------------------------------------------------------------------- the results folder


def write_run_metadata(cfg: ExperimentConfig) -> None:
    """The resolved config (with its history: `harness.config_history`) and the git SHA of
    the code, next to the results."""
    from harness.config import to_toml
    from harness.config_history import record_config
    from harness.provenance import code_version

    record_config(cfg.results_dir, to_toml(cfg))  # a changed config is appended, not overwritten
    sha = code_version() or "unknown (not a git checkout)"
    store.write_text_atomic(cfg.results_dir / "git_sha.txt", sha + "\n")


@contextlib.contextmanager
def results_folder(cfg: ExperimentConfig, *, fresh: bool = False, search: bool, train: bool,
                   resume: bool = True) -> Iterator[None]:
    """Check everything up front, then hold the results folder for the command.

    In order, before anything is written: the up-front checks (`harness.preflight`:
    writable folder, methods, recipe, dataset contents, memory estimates); the folder's lock
    (a second command on it exits 2); `fresh` moves old results aside; a saved search
    state of another config is refused (when resuming), and so is any finished search,
    trial or evaluation whose settings changed (`harness.growth`); unreadable Parquet files
    are set aside so their rows are recomputed; only then the units' settings and the
    resolved config are recorded.
    """
    from harness.growth import check_growth, recorded_identities, record_units
    from harness.preflight import preflight
    from harness.results_guard import folder_lock, move_aside, report_set_aside
    from harness.search import check_resumable

    preflight(cfg, search=search, train=train)
    with folder_lock(cfg.results_dir):
        if fresh:
            moved = move_aside(cfg.results_dir)
            if moved is not None:
                print(f"--fresh: previous results moved to {moved}", file=sys.stderr)
        if search and resume:
            check_resumable(cfg, recorded=recorded_identities(cfg.results_dir))
        # Finished work whose settings changed is refused here, before any write. (`train`
        # trains given genotypes, not the config's searches: its units are not planned.)
        units = check_growth(cfg, search=search, train=train and search)
        report_set_aside(store.set_aside_unreadable(cfg.results_dir))
        record_units(cfg.results_dir, units.values())
        write_run_metadata(cfg)
        yield


def check_cluster_storage(cfg: ExperimentConfig) -> None:
    """Attached to a cluster: Tune's storage suits it and every node sees it
    (`harness.cluster_checks.check_cluster`). Nothing on the embedded local Ray."""
    from harness.ray_session import attached, ensure_ray

    if attached(cfg.resources.address):
        from harness.cluster_checks import check_cluster
        from harness.trials import tune_storage

        ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
        check_cluster(cfg, *tune_storage(cfg))


# ----------------------------------------------------------------------------- stages


def start_pool(cfg: ExperimentConfig) -> Any:
    """The scorer actors of the config's resources (Ray started or attached first), with the
    training split shared through the object store (`share_search_data`)."""
    from harness.ray_session import ensure_ray
    from harness.scorers import ScorerPool

    ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
    return ScorerPool(cfg.resources.workers, cfg.resources.gpus_per_worker, cfg.resources.candidate_batch,
                      shared=share_search_data(cfg))


def share_search_data(cfg: ExperimentConfig) -> Any:
    """The training split, loaded once here and put in the object store for every scorer
    actor (`harness.shared_data`): actors never read the dataset root."""
    import ray

    from harness.scoring import spec_from_config
    from harness.shared_data import load_shared, score_data_key

    return ray.put(load_shared(score_data_key(spec_from_config(cfg, c)) for c in cfg.search.cells))


@contextlib.contextmanager
def search_pool(cfg: ExperimentConfig) -> Iterator[Any]:
    """The scorer pool of the config's searches (`start_pool`), or None when no method scores
    candidates; shut down on the way out (a no-op if it was released earlier)."""
    pool = start_pool(cfg) if any(m in PRUNING_METHODS for m in cfg.search.methods) else None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown()


def search_stage(cfg: ExperimentConfig, *, resume: bool, progress: bool) -> list[dict]:
    """Every search of the config (`harness.search.run_searches`); `searches` rows. A scorer
    pool is started only when a method scores candidates."""
    from harness.search import run_searches

    with search_pool(cfg) as pool:
        return run_searches(cfg, pool, resume=resume, progress=progress)


def streamed_stage(cfg: ExperimentConfig, *, progress: bool) -> list[dict]:
    """Every search of the config, each searched cell's missing trials handed to Tune as soon
    as its search ends (`harness.trials.stream_trials`), the scorer pool shut down
    as soon as the last search ends; `searches` rows. Resumes as `search_stage` does."""
    from harness.search import run_searches
    from harness.trials import stream_trials

    with search_pool(cfg) as pool:
        def search(on_done: Any, stop: Any) -> list[dict]:
            return run_searches(cfg, pool, resume=True, progress=progress, on_done=on_done, stop=stop)

        return stream_trials(cfg, search, verbose=1 if progress else 0,
                             release=None if pool is None else pool.shutdown)


def proxy_stage(cfg: ExperimentConfig, searches: Sequence[Mapping[str, Any]], *, progress: bool,
                pool: Any = None) -> list[dict[str, Any]]:
    """The proxy study's init-time scores of the searched genotypes (`harness.study.score_proxies`);
    without `pool` one is started only if something is left to score."""
    from harness.study import score_proxies

    return score_proxies(cfg, searches, progress=progress, pool=pool, start_pool=lambda: start_pool(cfg))


def finish_proxy_study(cfg: ExperimentConfig) -> Path:
    """The `proxies` and `proxy_scores` tables (`harness.study.write_proxy_tables`), the
    leaderboard figures (with `[study] zero_cost`) and the proxy scatter; returns the scatter's
    path (RESULTS_DIR/plots/proxies_scatter.png)."""
    from harness.study import PLOT_FILE, SCORES_TABLE, write_proxy_tables

    rows = write_proxy_tables(cfg)
    plots = store.results_layout(cfg.results_dir).plots
    if cfg.study.zero_cost:
        leaderboard_figures(pd.DataFrame(rows), store.read_table(cfg.results_dir, SCORES_TABLE), plots,
                            title=f"{cfg.experiment.name}: {len(rows)} genotypes")
    return plot_proxies(pd.DataFrame(rows), plots / PLOT_FILE, n_boot=cfg.study.n_boot,
                        title=f"{cfg.experiment.name}: proxies at initialisation vs accuracy after training "
                              f"({len(rows)} genotypes)")


def trial_stage(cfg: ExperimentConfig, searches: Sequence[Mapping[str, Any]], *, verbose: int) -> list[str]:
    """Train and evaluate every genotype of `searches` as Tune trials (`harness.trials`); the
    trial ids with rows afterwards."""
    from harness.trials import evaluate_added_shots, run_trials, trial_specs

    specs = trial_specs(cfg, list(searches))
    done = run_trials(cfg, specs, verbose=verbose)
    # shot counts added to [evaluate] since a trial ran: from its model file, no retraining
    evaluate_added_shots(cfg, specs)
    return done


def run_experiment(cfg: ExperimentConfig, *, progress: bool, stream: bool = True) -> "ReportFiles":
    """`metantk-nas run`: searches, proxy scores (with `[study] proxies`), trials, the proxy
    study's tables, the report. Call inside `results_folder`. A rerun resumes: finished rounds,
    searches and trials are not redone.

    Trials stream (`streamed_stage`): a searched cell trains as soon as its search ends, while
    the other searches still run. The proxy study scores every searched genotype before any
    trial, so it keeps the stages in sequence, as `stream=False` does (the same rows: a
    trial's result never depends on when it starts; kept for comparison, `benchmarks/bench_stream.py`).
    """
    check_cluster_storage(cfg)  # on a cluster: before the searches, not when the trials start
    if stream and not cfg.study.proxies:
        searches = streamed_stage(cfg, progress=progress)
    else:
        searches = search_stage(cfg, resume=True, progress=progress)
    if cfg.study.proxies:
        proxy_stage(cfg, searches, progress=progress)
    # after streaming: only trials of an interrupted earlier Tune experiment (restored) and the
    # shot counts added since a trial ran; Tune does not start when nothing is missing
    trial_stage(cfg, searches, verbose=1 if progress else 0)
    if cfg.study.proxies:
        finish_proxy_study(cfg)
    return report_stage(cfg)


def genotype_rows(cfg: ExperimentConfig, genotypes: Sequence[tuple[str, Any]]) -> list[dict[str, Any]]:
    """`searches` rows for given genotypes ((text, Genotype) pairs as the user named them): one
    per seed and cell count of the config, method `genotype:<label>`, no search cost."""
    from harness.provenance import code_version
    from harness.search import kernel_columns, network_params

    rows = []
    for i, (text, genotype) in enumerate(genotypes):
        label = text if text.replace("_", "").replace("-", "").isalnum() else f"custom{i}"
        for seed in cfg.search.seeds:
            for cells in cfg.search.cells:
                search_id = f"{cfg.dataset.name}-genotype-{label}-s{seed}-c{cells}"
                rows.append({"experiment": cfg.experiment.name, "dataset": cfg.dataset.name,
                             "method": f"genotype:{label}", "seed": seed, "cells": cells, "search_id": search_id,
                             "genotype": genotype.to_str(), "rounds": 0, "candidates": 0, "wall_seconds": 0.0,
                             "device_seconds": 0.0, "workers": 0, "device_kind": "none",
                             "params": network_params(cfg, genotype, cells), **kernel_columns(cfg, "genotype", cells),
                             "git_sha": code_version()})
    return rows


def train_genotypes(cfg: ExperimentConfig, genotypes: Sequence[tuple[str, Any]], *, progress: bool) -> "ReportFiles":
    """`metantk-nas train`: the `searches` rows of the given genotypes, their trials, the report.
    Call inside `results_folder`."""
    check_cluster_storage(cfg)
    rows = genotype_rows(cfg, genotypes)
    for row in rows:
        store.write_rows(cfg.results_dir, "searches", row["search_id"], [row])
    trial_stage(cfg, rows, verbose=1 if progress else 0)
    return report_stage(cfg)


def report_stage(cfg: ExperimentConfig) -> "ReportFiles":
    """`write_report` of the experiment's results folder (the study's bootstrap settings apply
    to the report's correlation table too)."""
    return write_report(cfg.results_dir, n_boot=cfg.study.n_boot, seed=0)


def evaluate_model_file(path: str | Path, overrides: Any, device: Any, *, progress: bool = False
                        ) -> tuple[Any, dict[int, tuple[float, float]]]:
    """Few-shot accuracy of a model file: (`trials.EvalSettings` used, shots -> (mean, 95% half-width)).
    `overrides`: `trials.EvalOverrides` (the `evaluate` flags).

    With no overrides this is the trial's own evaluation on its stored episode lists (found in
    RESULTS_DIR/episode_lists beside the model's RESULTS_DIR/models, checked by content hash),
    so it reproduces the trial's accuracy exactly. Otherwise episodes are sampled afresh.
    """
    from harness.preflight import check_split_contents
    from harness.trials import (EPISODE_DIR, build_network, evaluate_trained, evaluate_with_settings,
                                read_model_file, resolve_eval_settings)
    from trainers.episodes import sample_episodes
    from trainers.fewshot import mean_confidence_interval
    from trainers.seeds import episode_list_seed

    ckpt = read_model_file(path)
    settings = resolve_eval_settings(ckpt, overrides)
    model = build_network(ckpt["genotype"], ckpt["channels"], ckpt["num_classes"], ckpt["cells"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    split = settings.data().load(settings.split)
    if int(split.images.shape[1]) != ckpt["in_channels"]:
        raise ValueError(f"{settings.dataset} images have {split.images.shape[1]} channels but the model expects "
                         f"{ckpt['in_channels']}; evaluate on a dataset like the one it was trained on")
    if settings.episode_lists:
        places = [Path(path).resolve().parent.parent / EPISODE_DIR]
        return settings, evaluate_trained(model, settings, split, device, places, progress=progress)[0]
    # names the short classes (not an index within the split), before any episode is drawn
    check_split_contents(split, ways=settings.ways, need=max(settings.shots) + settings.queries,
                         what="evaluation episodes", keys="--ways/--shots/--queries")
    summary = {}
    for shots in settings.shots:
        episodes = sample_episodes(split.labels, ways=settings.ways, shots=shots, queries=settings.queries,
                                   count=settings.episodes, seed=episode_list_seed(settings.episode_seed, shots))
        accs = evaluate_with_settings(model, settings, split, episodes, shots, device, progress=progress)
        mean, half = mean_confidence_interval(accs)
        summary[shots] = (float(mean), float(half))
    return settings, summary


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Report:
    """A rendered report: Markdown text, the tables behind it, and the figures found."""

    markdown: str
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # csv stem -> table
    figures: tuple[Path, ...] = ()


class ReportFiles(dict[str, Path]):
    """`write_report`'s result: file name -> written path, plus the Markdown text."""

    def __init__(self, paths: Mapping[str, Path], markdown: str) -> None:
        super().__init__(paths)
        self.markdown = markdown

    def summary(self) -> list[str]:
        """One line per written file, the figures folded into one line (there is one per
        trial and search)."""
        figures = [p for name, p in self.items() if name.startswith("figures/")]
        lines = [str(p) for name, p in self.items() if not name.startswith("figures/")]
        if figures:
            lines.append(f"{figures[0].parent}/ ({len(figures)} figure files, SVG and PNG)")
        return lines


def _figures(layout: store.ResultsLayout) -> tuple[Path, ...]:
    found = sorted(layout.plots.glob("*.png")) + sorted(layout.cells.glob("*.svg"))
    return tuple(found)


def read_results(results_dir: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Every table of `results_dir` (name -> DataFrame). Raises FileNotFoundError for a
    missing folder and ValueError when it holds no Parquet table at all."""
    root = store.results_layout(results_dir).root
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not a results folder; pass the folder `metantk-nas run` "
                                 "writes (results/<experiment>), not a file inside it")
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist; run `metantk-nas run "
                                "EXPERIMENT.toml` first and pass the folder it writes "
                                "(results/<experiment>)")
    if not store.has_parquet(root):
        raise ValueError(f"no Parquet results under {root} (expected {', '.join(store.TABLES)} "
                         "folders); run `metantk-nas run EXPERIMENT.toml` first")
    from harness.report import accuracies_with_added_evaluations

    data = {name: store.read_table(root, name) for name in store.TABLES}
    # shot counts evaluated after a trial's row was written live in `episodes` (`harness.growth`)
    data["trials"] = accuracies_with_added_evaluations(data["trials"], data["episodes"])
    return data


def build_report(results_dir: str | os.PathLike[str], *, n_boot: int = 1000,
                 seed: int = 0, link_base: str | os.PathLike[str] | None = None,
                 data: Mapping[str, pd.DataFrame] | None = None,
                 extra_figures: Sequence[Path] = ()) -> Report:
    """Read the Parquet tables of `results_dir` and render the report (writes nothing).

    link_base: folder the Markdown's figure links are relative to (default: the report
    folder). data: the tables if already read (`read_results`). extra_figures: figures
    written for this report (`harness.figures`), linked after those found in plots/ and
    cells/. Raises as `read_results`.
    """
    layout = store.results_layout(results_dir)
    root = layout.root
    data = dict(data) if data is not None else read_results(root)
    counts = ", ".join(f"{name} {len(frame)}" for name, frame in data.items())
    experiments = sorted(set().union(*(set(f["experiment"]) for f in data.values())))
    parts = [f"# Results: {root.name}", "",
             f"Folder: `{root}`. Experiment(s): {', '.join(experiments) or '–'}. "
             f"Rows: {counts}."]
    tables: dict[str, pd.DataFrame] = {}
    trials, searches = data["trials"], data["searches"]
    if trials.empty:
        parts += ["", "## Table 1", "", "_No `trials` rows: Tables 1 and 2 need trained and "
                  "evaluated architectures (`metantk-nas run` or `metantk-nas train`)._"]
    else:
        tables["table1"] = report.table1(trials, searches)
        tables["table2"] = report.table2(trials)
        parts += ["", "## Table 1: searched cells, few-shot accuracy", "",
                  report.table1_markdown(tables["table1"]),
                  "", "## Table 2: ablation (search method)", "",
                  report.table2_markdown(tables["table2"])]
    if not searches.empty:
        parts += ["", "## Searches", "", report.searches_markdown(searches)]
    if not data["proxies"].empty:
        tables["correlations"] = report.correlation_table(data["proxies"], n_boot=n_boot, seed=seed)
        parts += ["", "## Proxy quality: rank correlation with few-shot accuracy", "",
                  report.correlations_markdown(tables["correlations"])]
        differences = report.proxy_difference_table(data["proxies"], n_boot=n_boot, seed=seed)
        if not differences.empty:
            tables["proxy_differences"] = differences
            parts += ["", "## Proxy comparison: paired difference in Kendall τ", "",
                      report.proxy_differences_markdown(differences)]
    else:
        parts += ["", "_No `proxies` rows: the correlation study "
                  "(experiments/correlation_omniglot.toml) has not been run here._"]
    lines, extra = leaderboard_section(data, n_boot=n_boot, seed=seed)
    parts += lines
    tables |= extra
    figures = _figures(layout) + tuple(extra_figures)
    base = Path(link_base) if link_base is not None else layout.report
    if figures:
        parts += ["", "## Figures", ""]
        parts += [f"- [`{(f.relative_to(root) if f.is_relative_to(root) else f).as_posix()}`]"
                  f"({Path(os.path.relpath(f, base)).as_posix()})" for f in figures]
    return Report(markdown="\n".join(parts) + "\n", tables=tables, figures=figures)


def write_report(results_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                 *, n_boot: int = 1000, seed: int = 0, figures: bool = True) -> ReportFiles:
    """Write report.md, one CSV per table, the figures and index.html, atomically.

    Tables: table1, table2 (with trials), correlations and proxy_differences (with proxies).
    Figures (`harness.figures.write_figures`, SVG and PNG in `<out>/figures/`) and
    `<out>/index.html` (`harness.html_report`) unless `figures=False`.

    out_dir defaults to `results_dir/report/`. Returns file name -> path, with the Markdown
    text in `.markdown`.
    """
    layout = store.results_layout(results_dir)
    out = Path(out_dir) if out_dir is not None else layout.report
    data = read_results(results_dir)
    figure_set = (write_figures(results_dir, out / FIGURE_DIR, data=data, n_boot=n_boot, seed=seed)
                  if figures else FigureSet())
    built = build_report(results_dir, n_boot=n_boot, seed=seed, link_base=out, data=data,
                          extra_figures=[p for p in figure_set.paths() if p.suffix == ".svg"])
    paths = {"report.md": store.write_text_atomic(out / "report.md", built.markdown)}
    for stem, frame in built.tables.items():
        paths[f"{stem}.csv"] = store.write_text_atomic(out / f"{stem}.csv",
                                                       frame.to_csv(index=False))
    if figures:
        for path in figure_set.paths():
            paths[path.relative_to(out).as_posix()] = path
        # The page shows the tables but not the figure list (the figures are on the page).
        # and not the title (the page has its own).
        tables_md = built.markdown.split("\n## Figures\n")[0].split("\n", 1)[1]
        paths[INDEX_FILE] = store.write_text_atomic(
            out / INDEX_FILE, render_index(tables_md, figure_set, data["searches"], layout, out))
    return ReportFiles(paths, built.markdown)
