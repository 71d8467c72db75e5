"""`metantk-nas run | train | evaluate`: the whole pipeline, training given cells, evaluating a model."""
from __future__ import annotations

import argparse
from typing import Any

from harness.cli import add_common_experiment_args, load_experiment


def _print_report(files: Any) -> None:
    print(files.markdown)
    print("report files:")
    for line in files.summary():
        print(f"  {line}")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.pipeline import results_folder, run_experiment

    cfg = load_experiment(args)
    with results_folder(cfg, fresh=args.fresh, search=True, train=True):
        _print_report(run_experiment(cfg, progress=not args.no_progress, stream=not args.in_sequence))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train and evaluate given genotypes (no search) as Tune trials of the experiment."""
    from harness.pipeline import results_folder, train_genotypes
    from search_spaces.genotypes import resolve_genotype

    cfg = load_experiment(args)
    genotypes = [(text, resolve_genotype(text)) for text in args.genotype]  # a malformed one: before any write
    with results_folder(cfg, fresh=args.fresh, search=False, train=True):
        _print_report(train_genotypes(cfg, genotypes, progress=not args.no_progress))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Few-shot accuracy of a trained model file: by default exactly its trial's evaluation."""
    import torch

    from harness.pipeline import evaluate_model_file
    from harness.preflight import check_memory, episode_bytes, machine_memory_bytes
    from harness.trials import EvalOverrides

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
    p.add_argument("--in-sequence", action="store_true",
                   help="start the trainings only after every search has ended (default: each searched cell "
                        "trains as soon as its own search ends)")
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
