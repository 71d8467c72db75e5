"""`metantk-nas search EXPERIMENT.toml`: run every search of an experiment on a scorer pool."""
from __future__ import annotations

import argparse
from typing import Any

from harness.cli import add_common_experiment_args, load_experiment


def cmd_search(args: argparse.Namespace) -> int:
    from harness.pipeline import results_folder, search_stage

    cfg = load_experiment(args)
    with results_folder(cfg, fresh=args.fresh, search=True, train=False, resume=args.resume):
        rows = search_stage(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"\n{len(rows)} searches -> {cfg.results_dir}")
    for row in rows:
        print(f"  {row['search_id']:<40} {row['rounds']} rounds  {row['device_seconds']:8.1f} device-s  "
              f"{row['genotype']}")
    print(f"cells rendered in {cfg.results_dir / 'cells'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("search", help="run the architecture searches of an experiment",
                       description="Run Algorithm 1 (MetaNTK-NAS pruning) for every (method, seed, cells) of "
                                   "the experiment on a pool of Ray scorer actors; writes Parquet tables "
                                   "candidates/ and searches/, and renders the cells.")
    add_common_experiment_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last finished round")
    p.set_defaults(func=cmd_search)
