"""Lost nodes on a multi-node Ray cluster on one machine (issue 11; run by tests/harness/test_cluster.py).

usage: python lost_nodes.py OUT_DIR

A head node (1 CPU, no GPU) and two worker nodes (1 CPU and 1 declared GPU each, so every
scorer and trial runs on a worker node). The same tiny experiment runs twice on it, each time
as a user runs it on a cluster: `metantk-nas run FILE --address HEAD --storage FOLDER` in its
own process (shared storage, code shipped with `runtime_env`, per-node probe), trials
streamed as their searches end (the command's default). Once undisturbed
(OUT/ref), once (OUT/lost) while this script removes a scorer's node after the search's first
round and a running trial's node after the first training checkpoint, each time adding a
fresh worker node.
Writes OUT/events.json (what happened and when) and OUT/<name>.log (each command's output).
The test then compares the two results folders.

The command runs in a process of its own, as on a real cluster: its searches stream trials
from a driver thread, Tune needs the driver's main thread, and Ray adds nodes only from the
main thread of the process that owns the cluster (this one).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# A throwaway cluster needs no auth token (Ray 2.60 creates one otherwise).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray.cluster_utils import Cluster  # noqa: E402

from harness.config import parse_config, to_toml  # noqa: E402

OBJECT_STORE = 80 * 1024 * 1024
WORKER = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": OBJECT_STORE}


def config(out: Path, name: str):
    return parse_config({
        "experiment": {"name": name, "seed": 3, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 5, "val_classes": 3, "test_classes": 4, "images_per_class": 8}},
        "search": {"methods": ["regions", "random"], "seeds": [0], "cells": [2], "init_channels": 4, "tasks": 2,
                   "ways": 3, "kernel_image_size": 8, "repeats": 1, "region_inputs": 10, "region_batches": 1,
                   "candidates_per_job": 8},
        "train": {"recipe": "synthetic", "epochs": 6, "batch_size": 20},  # a trial outlives its first checkpoint
        "evaluate": {"ways": 3, "shots": [1], "queries": 3, "episodes": 4},
        "resources": {"max_failures": 3},  # the cluster's address and storage: command-line flags
    }, source=name)


class Command:
    """`metantk-nas run FILE --address ADDRESS --storage STORAGE` of `cfg` in a process of its
    own, its output in OUT/<name>.log; each run its own storage (the saboteur watches for the
    checkpoints of its run only)."""

    def __init__(self, cfg, address: str) -> None:
        out = Path(cfg.experiment.out)
        self.name = cfg.experiment.name
        self.log = out / f"{self.name}.log"
        self.storage = out / f"{self.name}-storage"
        toml = out / f"{self.name}.toml"
        toml.write_text(to_toml(cfg))
        argv = [sys.executable, "-m", "harness.cli", "run", str(toml), "--address", address,
                "--storage", str(self.storage), "--no-progress"]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[3])

    def check(self) -> None:
        """Raise if the command has ended with an error."""
        if self.proc.poll() not in (None, 0):
            raise RuntimeError(f"metantk-nas run ({self.name}) exited with {self.proc.returncode}:\n"
                               + self.log.read_text()[-3000:])

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)
            raise TimeoutError(f"metantk-nas run ({self.name}) did not finish within {timeout:.0f} s:\n"
                               + self.log.read_text()[-3000:]) from None
        self.check()


def wait_for(predicate, what: str, command: Command, timeout: float = 120.0):
    """The first true value of `predicate()`, polled while `command` runs."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        command.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"never saw {what}")
        time.sleep(0.05)
    return value


def training_node(cluster: Cluster):
    """The worker node of a running trial: where a Tune placement group (each trial has one,
    scorer actors none) holds its bundle."""
    import ray

    nodes = {n.node_id: n for n in cluster.worker_nodes}
    for group in ray.util.placement_group_table().values():
        if group["state"] == "CREATED":
            for node_id in group["bundles_to_node_id"].values():
                if node_id in nodes:
                    return nodes[node_id]
    return None


def saboteur(cluster: Cluster, workers: list, command: Command, results: Path, storage: Path,
             events: list) -> None:
    """Remove a scorer's node after the first search round (both worker nodes hold a scorer,
    so no trial can have started), then a running trial's node after the first training
    checkpoint; add a fresh worker node each time (main thread only: Ray's node startup sets
    signal handlers)."""
    started = time.monotonic()

    def note(what: str) -> None:
        events.append({"t": round(time.monotonic() - started, 2), "event": what})

    wait_for(lambda: any((results / "candidates").glob("*.parquet")), "a finished search round", command)
    cluster.remove_node(workers[0], allow_graceful=False)
    note("removed a scorer's node mid-search")
    cluster.add_node(**WORKER)
    note("added a worker node")
    wait_for(lambda: any(storage.glob("*/*/checkpoint_*")), "a training checkpoint", command)
    cluster.remove_node(wait_for(lambda: training_node(cluster), "a running trial's node", command),
                        allow_graceful=False)
    note("removed a trial's node mid-training")
    cluster.add_node(**WORKER)
    note("added a worker node")


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
    ray.init(address=cluster.address)  # to see where trials run (`training_node`); runs nothing
    events: list = []
    try:
        t0 = time.monotonic()
        Command(config(out, "ref"), cluster.address).wait(timeout=150)
        events.append({"t": round(time.monotonic() - t0, 2), "event": "reference run finished"})
        lost = config(out, "lost")
        t0 = time.monotonic()
        command = Command(lost, cluster.address)
        saboteur(cluster, workers, command, lost.results_dir, command.storage, events)
        command.wait(timeout=240)
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
