"""`metantk-nas search EXPERIMENT.toml`: run every search of an experiment on a scorer pool."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Iterator


def add_common_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment TOML file (see experiments/)")
    p.add_argument("--workers", type=int, default=None, help="scorer actors (default: one per GPU, else per CPU)")
    p.add_argument("--address", default=None,
                   help="Ray address: 'auto' attaches to a running cluster (default: start a local Ray; "
                        "RAY_ADDRESS is honoured)")
    p.add_argument("--storage", default=None,
                   help="Tune's storage for trial checkpoints (default: RESULTS_DIR/tune; on a multi-node cluster "
                        "a folder every node mounts, or a URI such as s3://bucket/path)")
    p.add_argument("--out", default=None, help="results root (default: [experiment] out, usually results/)")
    p.add_argument("--root", default=None, help="dataset root folder (overrides [dataset] root)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one key of the experiment file, typed and validated like the file "
                        "(repeatable; applied last; recorded in RESULTS_DIR/config.toml), e.g. "
                        "--set search.init_channels=8 --set evaluate.episodes=20")
    p.add_argument("--fresh", action="store_true",
                   help="start over: move the folder's old results and state into RESULTS_DIR/previous/<time>/ "
                        "(nothing is deleted)")


def load_experiment(args: argparse.Namespace) -> Any:
    from harness.config import load_config

    overrides = {
        "experiment": {"out": args.out},
        "dataset": {"root": args.root},
        "resources": {"workers": args.workers, "address": args.address, "num_cpus": args.num_cpus,
                      "storage": args.storage},
    }
    return load_config(args.experiment, overrides, sets=args.sets)


def write_run_metadata(cfg: Any) -> None:
    """The resolved config (with its history) and the git SHA of the code, next to the results."""
    from harness import store
    from harness.config import to_toml
    from harness.provenance import code_version

    from harness.config_history import record_config

    record_config(cfg.results_dir, to_toml(cfg))  # growth: a changed config is appended, not overwritten
    sha = code_version() or "unknown (not a git checkout)"
    store.write_text_atomic(cfg.results_dir / "git_sha.txt", sha + "\n")


@contextlib.contextmanager
def results_folder(cfg: Any, args: argparse.Namespace, *, search: bool, train: bool,
                   resume: bool = True) -> Iterator[None]:
    """Check everything up front, then hold the results folder for the command.

    In order, before anything is written: the up-front checks (`harness.preflight`:
    writable folder, methods, recipe, dataset contents, memory estimates); the folder's lock
    (a second command on it exits 2); `--fresh` moves old results aside; a saved search
    state of another config is refused (when resuming), and so is any finished search,
    trial or evaluation whose settings changed (`harness.growth`); unreadable Parquet files
    are set aside so their rows are recomputed; only then the units' settings and the
    resolved config are recorded.
    """
    from harness import store
    from harness.growth import check_growth, record_units
    from harness.preflight import preflight
    from harness.results_guard import folder_lock, move_aside, report_set_aside
    from harness.search import check_resumable

    preflight(cfg, search=search, train=train)
    with folder_lock(cfg.results_dir):
        if getattr(args, "fresh", False):
            moved = move_aside(cfg.results_dir)
            if moved is not None:
                print(f"--fresh: previous results moved to {moved}", file=sys.stderr)
        if search and resume:
            check_resumable(cfg)
        # Growth: finished work whose settings changed is refused here, before any write.
        # (`train` trains given genotypes, not the config's searches: its units are not planned.)
        units = check_growth(cfg, search=search, train=train and search)
        report_set_aside(store.set_aside_unreadable(cfg.results_dir))
        record_units(cfg.results_dir, units.values())
        write_run_metadata(cfg)
        yield


def start_pool(cfg: Any) -> Any:
    from harness.ray_session import attached, ensure_ray
    from harness.scorers import ScorerPool

    ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
    if attached(cfg.resources.address):  # every node sees the dataset before a scorer starts
        from harness.cluster_checks import check_cluster

        check_cluster(cfg)
    return ScorerPool(cfg.resources.workers, cfg.resources.gpus_per_worker, cfg.resources.candidate_batch,
                      shared=share_search_data(cfg))


def share_search_data(cfg: Any) -> Any:
    """The training split, loaded once here and put in the object store for every scorer
    actor (`harness.shared_data`)."""
    import ray

    from harness.scoring import spec_from_config
    from harness.shared_data import load_shared, score_data_key

    return ray.put(load_shared(score_data_key(spec_from_config(cfg, c)) for c in cfg.search.cells))


def run_search_stage(cfg: Any, *, resume: bool, progress: bool) -> list[dict]:
    from harness.config import PRUNING_METHODS
    from harness.search import run_searches

    pool = start_pool(cfg) if any(m in PRUNING_METHODS for m in cfg.search.methods) else None
    try:
        return run_searches(cfg, pool, resume=resume, progress=progress)
    finally:
        if pool is not None:
            pool.shutdown()


def cmd_search(args: argparse.Namespace) -> int:
    cfg = load_experiment(args)
    with results_folder(cfg, args, search=True, train=False, resume=args.resume):
        rows = run_search_stage(cfg, resume=args.resume, progress=not args.no_progress)
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
