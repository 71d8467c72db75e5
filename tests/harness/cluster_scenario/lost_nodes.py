"""Lost nodes on a multi-node Ray cluster on one machine (issue 11; run by tests/harness/test_cluster.py).

usage: python lost_nodes.py OUT_DIR

A head node (1 CPU, no GPU) and two worker nodes (1 CPU and 1 declared GPU each, so every
scorer and trial runs on a worker node). The same tiny experiment runs twice on it, through
the harness's cluster path (`--address`, explicit shared storage, code shipped with
`runtime_env`, per-node probe): once undisturbed (OUT/ref), once (OUT/lost) while a thread
removes a worker node after the search's first round and another one after the first
training epoch, each time adding a fresh worker node. Writes OUT/events.json (what happened
and when). The test then compares the two results folders.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

# A throwaway cluster needs no auth token (Ray 2.60 creates one otherwise).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray.cluster_utils import Cluster  # noqa: E402

from harness.config import parse_config  # noqa: E402

OBJECT_STORE = 80 * 1024 * 1024
WORKER = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": OBJECT_STORE}


def config(out: Path, name: str, address: str):
    return parse_config({
        "experiment": {"name": name, "seed": 3, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 5, "val_classes": 3, "test_classes": 4, "images_per_class": 8}},
        "search": {"methods": ["regions", "random"], "seeds": [0], "cells": [2], "init_channels": 4, "tasks": 2,
                   "ways": 3, "kernel_image_size": 8, "repeats": 1, "region_inputs": 10, "region_batches": 1,
                   "candidates_per_job": 8},
        "train": {"recipe": "synthetic", "epochs": 2, "batch_size": 20},
        "evaluate": {"ways": 3, "shots": [1], "queries": 3, "episodes": 4},
        # each run its own storage: the saboteur watches for the checkpoints of its run only
        "resources": {"address": address, "storage": str(out / f"{name}-storage"), "max_failures": 3},
    }, source=name)


def run(cfg) -> None:
    from harness.pipeline import check_cluster_storage, search_stage
    from harness.trials import run_trials, trial_specs

    check_cluster_storage(cfg)
    searches = search_stage(cfg, resume=True, progress=False)
    print(f"{time.strftime('%T')} {cfg.experiment.name}: searches done", flush=True)
    run_trials(cfg, trial_specs(cfg, searches), verbose=0)
    print(f"{time.strftime('%T')} {cfg.experiment.name}: trials done", flush=True)


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never saw {what}")
        time.sleep(0.05)


def saboteur(cluster: Cluster, workers: list, results: Path, storage: Path, events: list) -> None:
    """Remove a worker node after the first search round, another after the first epoch;
    add a fresh worker node each time (main thread only: Ray's node startup sets signal handlers)."""
    started = time.monotonic()

    def note(what: str) -> None:
        events.append({"t": round(time.monotonic() - started, 2), "event": what})

    wait_for(lambda: any((results / "candidates").glob("*.parquet")), "a finished search round")
    cluster.remove_node(workers[0], allow_graceful=False)
    note("removed worker node 1 mid-search")
    cluster.add_node(**WORKER)
    note("added worker node 3")
    wait_for(lambda: any(storage.glob("*/*/checkpoint_*")), "a training checkpoint")
    cluster.remove_node(workers[1], allow_graceful=False)
    note("removed worker node 2 mid-training")
    cluster.add_node(**WORKER)
    note("added worker node 4")


def main(out: Path) -> None:
    import ray

    # A removed node is declared dead after ~1.5 s of missed health checks (default: ~15 s).
    fast_detection = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                      "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                             "object_store_memory": OBJECT_STORE,
                                                             "_system_config": fast_detection})
    workers = [cluster.add_node(**WORKER) for _ in range(2)]
    cluster.wait_for_nodes()
    events: list = []
    try:
        t0 = time.monotonic()
        run(config(out, "ref", cluster.address))
        events.append({"t": round(time.monotonic() - t0, 2), "event": "reference run finished"})
        # The harness drives this run from a thread: Ray adds nodes only from the main thread.
        lost = config(out, "lost", cluster.address)
        failure: list = []

        def drive() -> None:
            try:
                run(lost)
            except BaseException as exc:  # reported by the main thread below
                failure.append(exc)

        t0 = time.monotonic()
        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        saboteur(cluster, workers, lost.results_dir, out / "lost-storage", events)
        thread.join(timeout=240)
        if failure:
            raise failure[0]
        if thread.is_alive():
            raise TimeoutError("the run with lost nodes did not finish within 240 s")
        events.append({"t": round(time.monotonic() - t0, 2), "event": "run with lost nodes finished"})
    finally:
        (out / "events.json").write_text(json.dumps(events, indent=1))
        ray.shutdown()
        cluster.shutdown()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # the test's timeout sends SIGTERM: leave through `finally`, so the cluster's nodes stop too
    raise SystemExit(f"terminated (signal {signum})")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main(Path(sys.argv[1]))
