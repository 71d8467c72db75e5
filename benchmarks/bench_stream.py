"""Wall time of a mixed experiment with trials streamed vs. the stages in sequence.

usage: python benchmarks/bench_stream.py EXPERIMENT.toml --root DATA [--num-gpus 1]
           [--set resources.trial_gpus=0.25 ...] [--out DIR] [--order stream,sequential]

Starts its own local Ray with `--num-cpus` CPUs and `--num-gpus` declared GPUs (declared only:
on a machine without CUDA every scorer and trial still runs on the CPU, since both take their
device from `torch.cuda.is_available()`, but Ray schedules by the fractions asked for). Runs
`metantk-nas run` on the experiment twice, each into a fresh folder under `--out`:
"sequential" (every search, then every trial: `run_experiment(stream=False)`) and "stream"
(each searched cell's trial handed to Tune as its search ends, the default). Prints both wall
times, their ratio, the load average before and after each run (the machine may be shared),
and whether both runs gave the same genotypes and accuracies.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def run_once(path: str, sets: list[str], root: str, out: Path, stream: bool) -> float:
    """Seconds `run_experiment` takes on a fresh results folder (up-front checks excluded)."""
    from harness.config import load_config
    from harness.pipeline import results_folder, run_experiment

    cfg = load_config(path, {"experiment": {"out": str(out)}, "dataset": {"root": root}}, sets)
    with results_folder(cfg, fresh=True, search=True, train=True):
        started = time.perf_counter()
        run_experiment(cfg, progress=False, stream=stream)
        return time.perf_counter() - started


def rows(folder: Path):
    """(genotypes by search id, trial genotypes and accuracies by trial id) of a results folder."""
    from harness import store

    searches = store.read_table(folder, "searches").set_index("search_id").sort_index()["genotype"]
    trials = store.read_table(folder, "trials").set_index("trial_id").sort_index()
    return searches, trials[[c for c in trials.columns if c == "genotype" or c.startswith("acc_")]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--set", dest="sets", action="append", default=[], help="TABLE.KEY=VALUE, as `run --set`")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--num-gpus", type=float, default=1.0, help="GPUs declared to Ray (none need to exist)")
    p.add_argument("--out", default=None, help="results root (default: a temporary folder)")
    p.add_argument("--order", default="sequential,stream", help="which mode runs first")
    args = p.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False,
             log_to_driver=False)
    print(f"Ray: {ray.cluster_resources()}")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-stream-"))
    seconds, folders = {}, {}
    for mode in args.order.split(","):
        load = os.getloadavg()
        seconds[mode] = run_once(args.experiment, args.sets, args.root, out / mode, stream=(mode == "stream"))
        folders[mode] = next(p for p in (out / mode).iterdir() if p.is_dir())
        print(f"{mode:>10}: {seconds[mode]:7.1f} s   load average before {load[0]:.2f}, "
              f"after {os.getloadavg()[0]:.2f}")
    if {"stream", "sequential"} <= set(seconds):
        print(f"{'ratio':>10}: stream / sequential = {seconds['stream'] / seconds['sequential']:.2f}")
        a, b = rows(folders["stream"]), rows(folders["sequential"])
        print(f"same genotypes: {a[0].equals(b[0])}; same trial accuracies: {a[1].equals(b[1])}")
    ray.shutdown()


if __name__ == "__main__":
    main()
