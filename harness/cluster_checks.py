"""Checks that a multi-node Ray cluster can run the experiment, before any work starts.

On one machine the preflight (`harness.preflight`) has already loaded the dataset. On a
cluster every node reads it again, at the same path: a probe task pinned to each alive node
(`NodeAffinitySchedulingStrategy`, no CPU taken) checks that the dataset root and its split
files, and a storage folder given as a path, are there. A node that lacks one is named in one
line, instead of trials failing on that node an hour later.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from harness.config import ExperimentConfig, absolute_root
from harness.errors import UserError

# Seconds the probes of all nodes may take (a node's first worker process starts in ~1-3 s).
PROBE_TIMEOUT_S = 120.0
_PROBE_PREFIX = ".metantk-probe-"


def dataset_paths(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The dataset root and the files of its standard splits, absolute ("" root: none, e.g.
    the generated `synthetic` data)."""
    from trainers.data import DATASETS

    spec = DATASETS[cfg.dataset.name]
    root = absolute_root(cfg.dataset.root)
    if not spec.needs_root or not root:
        return ()
    files = [str(f) for split in spec.splits for f in spec.files(Path(root), split, **cfg.dataset.options)]
    return (root, *dict.fromkeys(files))


def missing_paths(paths: Sequence[str]) -> list[str]:
    """The entries of `paths` that do not exist on this machine (run on each node)."""
    return [p for p in paths if not os.path.exists(p)]


def describe_node(node: dict[str, Any]) -> str:
    """`10.0.0.5 (node 1a2b3c4d)`: a node's address and the start of its id, as `ray status` shows."""
    return f"{node.get('NodeManagerAddress', '?')} (node {str(node.get('NodeID', '?'))[:8]})"


def node_problems(nodes: Sequence[dict[str, Any]], missing: Sequence[list[str]]) -> str | None:
    """One line naming the first node that misses a path (and how many more do), or None."""
    bad = [(node, miss) for node, miss in zip(nodes, missing) if miss]
    if not bad:
        return None
    node, miss = bad[0]
    more = f" ({len(miss) - 1} more path(s))" if len(miss) > 1 else ""
    others = f"; {len(bad) - 1} other node(s) too" if len(bad) > 1 else ""
    return (f"Ray node {describe_node(node)} cannot see {miss[0]}{more}{others}: every node needs the dataset "
            "(and a storage folder given as a path) at the same path; mount or copy it there, or use a URI "
            "for [resources] storage")


def probe_nodes(paths: Sequence[str], nodes: Sequence[dict[str, Any]] | None = None,
                timeout: float = PROBE_TIMEOUT_S) -> None:
    """Run `missing_paths(paths)` on every alive node (or `nodes`); UserError naming a node
    that misses one (`node_problems`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from harness.ray_session import alive_nodes

    nodes = list(alive_nodes() if nodes is None else nodes)
    probe = ray.remote(num_cpus=0, max_retries=0)(missing_paths)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                          ).remote(list(paths)) for node in nodes]
    try:
        missing = ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"the probe of {len(nodes)} Ray node(s) did not answer within {timeout:.0f}s; check "
                        "`ray status` (a node may be starting or unreachable)") from None
    problem = node_problems(nodes, missing)
    if problem:
        raise UserError(problem)


# (dataset paths + storage, node ids) already probed by this process: `run` checks before its searches and
# before its trials; a node that joined since is probed again.
_PROBED: set[tuple[tuple[str, ...], frozenset[str]]] = set()


def check_cluster(cfg: ExperimentConfig, storage: str | None = None, explicit_storage: bool = False) -> None:
    """On an attached cluster: every node sees the dataset (`probe_nodes`); with `storage`
    (Tune's storage_path, `harness.trials.tune_storage`) also that it suits the number of
    nodes (`check_storage_for_cluster`) and, given as a path, that every node sees it (a
    marker file the driver writes there and removes)."""
    from harness.ray_session import alive_nodes, check_storage_for_cluster, is_uri

    nodes = alive_nodes()
    key = (dataset_paths(cfg) + (storage or "",), frozenset(n["NodeID"] for n in nodes))
    if key in _PROBED:
        return
    paths = list(dataset_paths(cfg))
    marker = None
    if storage is not None:
        check_storage_for_cluster(storage, explicit_storage, len(nodes))
        if len(nodes) > 1 and not is_uri(storage):
            marker = Path(storage) / f"{_PROBE_PREFIX}{os.getpid()}-{time.time_ns()}"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("written by the driver; every node must see it\n")
            paths.append(str(marker))
    try:
        if paths:
            probe_nodes(paths, nodes)
            _PROBED.add(key)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
