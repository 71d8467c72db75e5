"""`metantk-nas run | train | evaluate`: the whole pipeline, training given cells, evaluating a model."""
from __future__ import annotations

import argparse
from typing import Any

from harness.cmd_search import add_common_experiment_args, load_experiment, results_folder, run_search_stage


def _report(cfg: Any) -> None:
    from harness.report import write_report

    # The study's bootstrap settings apply to the report's correlation table too.
    files = write_report(cfg.results_dir, n_boot=cfg.study.n_boot, seed=0)
    print(files.markdown)
    print("report files:")
    for line in files.summary():
        print(f"  {line}")


def check_cluster_storage(cfg: Any) -> None:
    """Attached to a cluster: its nodes see the dataset and Tune's storage suits it
    (`harness.cluster_checks.check_cluster`). Nothing on the embedded local Ray."""
    from harness.ray_session import attached, ensure_ray

    if attached(cfg.resources.address):
        from harness.cluster_checks import check_cluster
        from harness.trials import tune_storage

        ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
        check_cluster(cfg, *tune_storage(cfg))


def cmd_run(args: argparse.Namespace) -> int:
    from harness.trials import run_trials, trial_specs

    cfg = load_experiment(args)
    with results_folder(cfg, args, search=True, train=True):
        check_cluster_storage(cfg)  # on a cluster: before the searches, not when the trials start
        # A rerun always resumes: finished rounds, searches and trials are not redone.
        searches = run_search_stage(cfg, resume=True, progress=not args.no_progress)
        if cfg.study.proxies:
            from harness.study import score_proxies

            score_proxies(cfg, searches, progress=not args.no_progress)
        run_trials(cfg, trial_specs(cfg, searches), verbose=0 if args.no_progress else 1)
        if cfg.study.proxies:
            from harness.study import finish_proxy_study

            finish_proxy_study(cfg)
        _report(cfg)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train and evaluate given genotypes (no search) as Tune trials of the experiment."""
    from harness import store
    from harness.search import kernel_columns, network_params
    from harness.trials import run_trials, trial_specs
    from search_spaces.genotypes import resolve_genotype

    cfg = load_experiment(args)
    genotypes = [resolve_genotype(text) for text in args.genotype]  # a malformed one: before any write
    with results_folder(cfg, args, search=False, train=True):
        _train_genotypes(cfg, args, genotypes)
    return 0


def _train_genotypes(cfg: Any, args: argparse.Namespace, genotypes: list[Any]) -> None:
    from harness import store
    from harness.provenance import code_version
    from harness.search import kernel_columns, network_params
    from harness.trials import run_trials, trial_specs

    rows = []
    for i, (text, genotype) in enumerate(zip(args.genotype, genotypes)):
        label = text if text.replace("_", "").replace("-", "").isalnum() else f"custom{i}"
        for seed in cfg.search.seeds:
            for cells in cfg.search.cells:
                search_id = f"{cfg.dataset.name}-genotype-{label}-s{seed}-c{cells}"
                row = {"experiment": cfg.experiment.name, "dataset": cfg.dataset.name, "method": f"genotype:{label}",
                       "seed": seed, "cells": cells, "search_id": search_id, "genotype": genotype.to_str(),
                       "rounds": 0, "candidates": 0, "wall_seconds": 0.0, "device_seconds": 0.0, "workers": 0,
                       "device_kind": "none", "params": network_params(cfg, genotype, cells),
                       **kernel_columns(cfg, "genotype", cells), "git_sha": code_version()}
                store.write_rows(cfg.results_dir, "searches", search_id, [row])
                rows.append(row)
    run_trials(cfg, trial_specs(cfg, rows), verbose=0 if args.no_progress else 1)
    _report(cfg)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Few-shot accuracy of a trained model file: by default exactly its trial's evaluation."""
    import torch

    from harness.preflight import check_memory, episode_bytes, machine_memory_bytes
    from harness.trials import EvalOverrides, evaluate_model_file

    overrides = EvalOverrides(dataset=args.dataset, root=args.root, split=args.split, image_size=args.image_size,
                              data_seed=args.data_seed, ways=args.ways, shots=args.shots, queries=args.queries,
                              episodes=args.episodes, seed=args.seed, C=args.C, support_augment=args.support_augment)
    if overrides.new_episodes():  # new episodes are sampled: refuse arrays that cannot fit, up front
        check_memory({"the episode arrays (--episodes, --ways, --shots, --queries)": episode_bytes(
            args.episodes or 1, args.ways or 1, args.shots or 1, args.queries or 1)}, machine_memory_bytes())
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The file is read as data (weights_only): a model file never runs code.
    settings, summary = evaluate_model_file(args.checkpoint, overrides, device, progress=not args.no_progress)
    source = "the trial's stored episode lists" if settings.episode_lists else "newly sampled episodes"
    for shots, (mean, half) in summary.items():
        print(f"{settings.dataset}/{settings.split} {settings.ways}-way {shots}-shot, {settings.episodes} episodes "
              f"({source}): {100 * mean:.2f} ± {100 * half:.2f} % (95% CI)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="search, train, evaluate and report an experiment in one command",
                       description="Run every search of the experiment, train and evaluate each searched cell as a "
                                   "Ray Tune trial, write the Parquet tables and print the report. Rerunning the "
                                   "same command resumes and redoes nothing that finished.")
    add_common_experiment_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train and evaluate given genotypes (no search)",
                       description="Train and evaluate GENOTYPEs (registry names, genotype strings or JSON files) "
                                   "for every seed and cell count of the experiment, as Tune trials.")
    add_common_experiment_args(p)
    p.add_argument("--genotype", action="append", required=True, help="genotype to train (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="few-shot accuracy of a trained model on a dataset",
                       description="Evaluate a trained model file (RESULTS_DIR/models/*.pt) with N-way K-shot "
                                   "logistic-regression episodes. With no other flag this is exactly the trial's "
                                   "evaluation (dataset and options, image size, normalisation, C, support "
                                   "augmentation, the stored episode lists), so it reproduces the trial's accuracy; "
                                   "flags override settings, and any data or episode flag samples new episodes.")
    p.add_argument("--checkpoint", required=True, help="model file written by run/train (RESULTS_DIR/models/*.pt)")
    keep = " (default: the trial's)"
    p.add_argument("--dataset", default=None, help="dataset name (see `metantk-nas data list`)" + keep)
    p.add_argument("--root", default=None, help="dataset root folder" + keep)
    p.add_argument("--split", default=None, help="split with the evaluation classes" + keep)
    p.add_argument("--image-size", type=int, default=None, help="resize images" + keep)
    p.add_argument("--ways", type=int, default=None, help="classes per episode" + keep)
    p.add_argument("--shots", type=int, default=None, help="support images per class (default: each of the trial's)")
    p.add_argument("--queries", type=int, default=None, help="query images per class" + keep)
    p.add_argument("--episodes", type=int, default=None, help="number of episodes" + keep)
    p.add_argument("--seed", type=int, default=None,
                   help="sample new episodes as an experiment with this seed would (default: the trial's lists)")
    p.add_argument("--data-seed", type=int, default=None, help="class split / generation seed" + keep)
    p.add_argument("--C", type=float, default=None, help="inverse L2 penalty of the logistic regression" + keep)
    p.add_argument("--support-augment", type=int, default=None,
                   help="augmented copies of each support image (0 = none)" + keep)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)
