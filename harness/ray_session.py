"""Starting or attaching to Ray, the only place that calls `ray.init`.

Embedded default: a local Ray started by the command (`address="local"`, no dashboard).
Cluster: `--address auto` or `RAY_ADDRESS` attaches to a running cluster, with no resource
arguments (the cluster decides). Resources for actors and trials are derived from
`ray.cluster_resources()` (a GPU request on a CPU-only cluster would hang silently).
"""
from __future__ import annotations

import os
from typing import Any

import ray


def ensure_ray(address: str = "", num_cpus: int = 0, *, object_store_mb: int = 0) -> dict[str, float]:
    """Initialise Ray once per process; returns `ray.cluster_resources()`."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # A throwaway local cluster needs no auth token (Ray 2.60 creates one otherwise).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False,
                                      "num_cpus": num_cpus or os.cpu_count() or 1}
            if object_store_mb:
                kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
            ray.init(**kwargs)
    return dict(ray.cluster_resources())


def trial_resources(cluster: dict[str, float], cpus_per_trial: float = 1.0) -> dict[str, float]:
    """Resources of one Tune trial: one GPU each when the cluster has GPUs, else CPUs only."""
    if cluster.get("GPU", 0) >= 1:
        return {"cpu": cpus_per_trial, "gpu": 1}
    return {"cpu": min(cpus_per_trial, max(cluster.get("CPU", 1.0), 1.0))}
