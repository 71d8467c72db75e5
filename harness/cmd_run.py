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
    for name, path in files.items():
        print(f"  {name}: {path}")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.trials import run_trials, trial_specs

    cfg = load_experiment(args)
    with results_folder(cfg, args, search=True, train=True):
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
    from search_spaces.genotypes import resolve_genotype

    cfg = load_experiment(args)
    genotypes = [resolve_genotype(text) for text in args.genotype]  # a malformed one: before any write
    with results_folder(cfg, args, search=False, train=True):
        _train_genotypes(cfg, args, genotypes)
    return 0


def _train_genotypes(cfg: Any, args: argparse.Namespace, genotypes: list[Any]) -> None:
    from harness import store
    from harness.search import network_params
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
                       "device_kind": "none", "params": network_params(cfg, genotype, cells)}
                store.write_rows(cfg.results_dir, "searches", search_id, [row])
                rows.append(row)
    run_trials(cfg, trial_specs(cfg, rows), verbose=0 if args.no_progress else 1)
    _report(cfg)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Few-shot accuracy of a trained model (a `models/*.pt` file) on any dataset's split."""
    import torch

    from harness.preflight import check_memory, check_split_contents, episode_bytes, machine_memory_bytes
    from harness.trials import build_network, read_model_file
    from trainers.data import NORMALIZATION, load_split
    from trainers.episodes import sample_episodes
    from trainers.fewshot import evaluate_model, mean_confidence_interval

    check_memory({"the episode arrays (--episodes, --ways, --shots, --queries)": episode_bytes(
        args.episodes, args.ways, args.shots, args.queries)}, machine_memory_bytes())
    # Read as data (weights_only): a model file never runs code.
    ckpt = read_model_file(args.checkpoint)
    model = build_network(ckpt["genotype"], ckpt["channels"], ckpt["num_classes"], ckpt["cells"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    split = load_split(args.dataset, args.root, args.split, image_size=args.image_size, seed=args.data_seed)
    if int(split.images.shape[1]) != ckpt["in_channels"]:
        raise ValueError(f"{args.dataset} images have {split.images.shape[1]} channels but the model expects "
                         f"{ckpt['in_channels']}; evaluate on a dataset like the one it was trained on")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_split_contents(split, ways=args.ways, need=args.shots + args.queries, what="evaluation episodes",
                         keys="--ways/--shots/--queries")  # names the short classes, not an index
    episodes = sample_episodes(split.labels, ways=args.ways, shots=args.shots, queries=args.queries,
                               count=args.episodes, seed=args.seed)
    accs = evaluate_model(model, split, episodes, device=device, normalization=NORMALIZATION[args.dataset],
                          progress=not args.no_progress)
    mean, half = mean_confidence_interval(accs)
    print(f"{args.dataset}/{args.split} {args.ways}-way {args.shots}-shot, {args.episodes} episodes: "
          f"{100 * mean:.2f} ± {100 * half:.2f} % (95% CI)")
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
                                   "logistic-regression episodes on a dataset split.")
    p.add_argument("--checkpoint", required=True, help="model file written by run/train (RESULTS_DIR/models/*.pt)")
    p.add_argument("--dataset", required=True, help="dataset name (see `metantk-nas data list`)")
    p.add_argument("--root", default=None, help="dataset root folder")
    p.add_argument("--split", default="test", help="split with the evaluation classes (default: test)")
    p.add_argument("--image-size", type=int, default=None, help="resize images (default: dataset native)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="episode sampling seed")
    p.add_argument("--data-seed", type=int, default=0, help="class split seed (omniglot)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)
