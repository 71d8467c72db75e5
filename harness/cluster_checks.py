"""Checks that a multi-node Ray cluster can run the experiment, before any work starts.

The dataset is read only by the driver (the preflight, `harness.preflight`, has already loaded
it) and reaches scorers and trials through the object store (`harness.shared_data`). Tune's
storage, given as a path, must be the same folder on every node: a probe task pinned to each
alive node (`NodeAffinitySchedulingStrategy`, no CPU taken) checks that a marker file the
driver wrote there is visible. A node that lacks it is named in one line, instead of trials
failing on that node an hour later.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from harness.config import ExperimentConfig
from harness.errors import UserError

# Seconds the probes of all nodes may take (a node's first worker process starts in ~1-3 s).
PROBE_TIMEOUT_S = 120.0
_PROBE_PREFIX = ".metantk-probe-"


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
    return (f"Ray node {describe_node(node)} cannot see {miss[0]}{more}{others}: every node needs Tune's storage "
            "folder at the same path; mount it there, or use a URI for [resources] storage")


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


# (storage, node ids) already probed by this process: `run` checks before its searches and
# before its trials; a node that joined since is probed again.
_PROBED: set[tuple[str, frozenset[str]]] = set()


def check_cluster(cfg: ExperimentConfig, storage: str | None = None, explicit_storage: bool = False) -> None:
    """On an attached cluster, with `storage` (Tune's storage_path,
    `harness.trials.tune_storage`): it suits the number of nodes (`check_storage_for_cluster`)
    and, given as a path, every node sees it (a marker file the driver writes there, found by
    `probe_nodes`, then removed). The dataset needs no probe: the driver loads each split and
    shares it through the object store (`harness.shared_data`), so only the driver reads the root."""
    from harness.ray_session import alive_nodes, check_storage_for_cluster, is_uri

    nodes = alive_nodes()
    key = (storage or "", frozenset(n["NodeID"] for n in nodes))
    if key in _PROBED:
        return
    paths: list[str] = []
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
