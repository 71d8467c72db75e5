"""Starting or attaching to Ray, the only place that calls `ray.init`.

Embedded default: a local Ray started by the command (`address="local"`, no dashboard).
Cluster: `--address auto` or `RAY_ADDRESS` attaches to a running cluster, with no resource
arguments (the cluster decides). Resources for actors and trials are derived from
`ray.cluster_resources()` (a GPU request on a CPU-only cluster would hang silently).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import ray

from harness.errors import UserError
from harness.provenance import CODE_PACKAGES


# Seconds to wait for a TCP connection to a cluster address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an address like `10.0.0.1:6379` or `ray://head:10001`; None for `auto`,
    `local` and anything without a port (Ray resolves those itself)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and Ray
# client server are) answers with a SETTINGS frame of its own (frame type 4 in byte 3).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def _speaks_grpc(sock: socket.socket) -> bool:
    sock.sendall(_H2_PREFACE)
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))
        if not chunk:
            return False
        head += chunk
    return head[3] == _H2_SETTINGS


# Ray Client addresses: refused (`check_reachable`): the harness's driver must be the process
# that writes the results, and under Ray Client Tune's controller runs on the head.
RAY_CLIENT_SCHEME = "ray://"


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UserError within about `timeout` seconds unless a gRPC server listens at `address`
    (and at once for a Ray Client `ray://` address, which the harness does not support).

    Ray itself retries an unreachable address, or one where something else listens, for
    minutes (and ignores Ctrl-C meanwhile); one bounded connect and HTTP/2 greeting tell a
    typo or a stopped cluster apart up front.
    """
    if address.startswith(RAY_CLIENT_SCHEME):
        raise UserError(f"--address {address}: Ray Client (ray://) runs Tune's driver side on the head node, "
                        "whose disk would then get the results; run the command on a machine of the cluster "
                        "with --address auto (or HEAD_IP:6379)")
    target = _host_port(address)
    if target is None:
        return
    fix = "check the address, start the cluster (`ray start --head`), or leave out --address to run a local Ray"
    try:
        with socket.create_connection(target, timeout=timeout) as sock:
            sock.settimeout(timeout)
            grpc = _speaks_grpc(sock)
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); {fix}") from None
    if not grpc:
        raise UserError(f"cannot reach a Ray cluster at {address} (something else listens there); {fix}")


def code_runtime_env() -> dict[str, Any]:
    """Ray's runtime_env that ships this checkout's packages (CODE_PACKAGES) to every worker.

    `py_modules` rather than `working_dir`: only the code travels (not results, data or a
    virtual environment beside it), and the workers keep their own working directory. Every
    node still needs the dependencies (torch, ray, ...: `pip install -c constraints.txt .`);
    the project's own code is then always the driver's, whatever version a node has installed.
    """
    root = Path(__file__).resolve().parent.parent
    return {"py_modules": [str(root / name) for name in CODE_PACKAGES]}


def attached(address: str = "") -> bool:
    """Whether `ensure_ray(address)` attaches to a running cluster (`--address`, RAY_ADDRESS)
    rather than starting the embedded local Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS", ""))


def ensure_ray(address: str = "", num_cpus: int = 0, *, object_store_mb: int = 0) -> dict[str, float]:
    """Initialise Ray once per process; returns `ray.cluster_resources()`.

    Attaching to a cluster ships the code (`code_runtime_env`); the embedded local Ray runs
    the code of this process and needs no shipping.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS", "")
        if attached(address):
            check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=True, runtime_env=code_runtime_env())
            except ConnectionError as exc:  # e.g. `auto` with no cluster on this machine
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"cannot attach to Ray at {address!r}: {first}") from None
        else:
            # A throwaway local cluster needs no auth token (Ray 2.60 creates one otherwise).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False,
                                      "num_cpus": num_cpus or os.cpu_count() or 1}
            if object_store_mb:
                kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
            ray.init(**kwargs)
            # The raylet's dashboard and runtime-env agents outlive a SIGKILLed driver by
            # minutes: a detached watcher ends them (harness.ray_reaper).
            from harness.ray_reaper import start_for_current_process

            start_for_current_process()
    return dict(ray.cluster_resources())


def gpu_request(cluster: dict[str, float], gpus: float, what: str) -> float:
    """GPUs to request for one `what` ("trial", "scorer"): `gpus` (a fraction packs several on
    one GPU) when the cluster has GPUs, 0 on a CPU-only cluster. UserError when the cluster's
    GPUs cannot hold even one (Ray would leave the work pending forever)."""
    available = float(cluster.get("GPU", 0.0))
    if available <= 0 or gpus <= 0:
        return 0.0
    if gpus > available:
        raise UserError(f"one {what} asks for {gpus:g} GPUs but the cluster has {available:g}; "
                        f"lower [resources] {'trial_gpus' if what == 'trial' else 'gpus_per_worker'}")
    return float(gpus)


def trial_resources(cluster: dict[str, float], cpus_per_trial: float = 1.0, gpus_per_trial: float = 1.0
                    ) -> dict[str, float]:
    """Resources of one Tune trial: `gpus_per_trial` GPUs when the cluster has GPUs (0.25: four
    trials share a GPU), else CPUs only (at most the cluster's CPUs, so a trial can start)."""
    gpus = gpu_request(cluster, gpus_per_trial, "trial")
    if gpus:
        return {"cpu": cpus_per_trial, "gpu": gpus}
    return {"cpu": min(cpus_per_trial, max(cluster.get("CPU", 1.0), 1.0))}


def how_many_fit(cluster: dict[str, float], resources: dict[str, float]) -> int:
    """How many units of `resources` ({"cpu": .., "gpu": ..}: a trial, a scorer) the cluster
    holds at once (>= 1)."""
    fits = [cluster.get(key.upper(), 0.0) / need for key, need in resources.items() if need > 0]
    # a small tolerance: 4 x 0.25 GPU is 1.0 in Ray's fixed-point bookkeeping, not 0.99999
    return max(1, int(min(fits) + 1e-9)) if fits else 1


def alive_nodes() -> list[dict[str, Any]]:
    """`ray.nodes()` entries of the nodes that are alive (NodeID, NodeManagerAddress, Resources)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def is_uri(storage: str) -> bool:
    """A pyarrow.fs URI (`s3://bucket/x`, `gs://...`, `file:///shared/x`) rather than a path."""
    return "://" in storage


def check_storage_for_cluster(storage: str, explicit: bool, nodes: int) -> None:
    """UserError when Tune's storage cannot work on a cluster of `nodes` alive nodes.

    Since Ray 2.7 a trial's checkpoints go to the storage from the node it runs on, and a
    restored trial reads them from whichever node it restarts on: with more than one node the
    default node-local RESULTS_DIR/tune strands them. An explicit path is taken as a shared
    mount (the per-node probe then checks that every node sees it, `harness.cluster_probe`).
    """
    if nodes > 1 and not explicit and not is_uri(storage):
        raise UserError(f"attached to a Ray cluster of {nodes} nodes, but Tune's storage is the node-local "
                        f"{storage}; set [resources] storage (--storage) to a folder every node mounts or to a "
                        "URI (s3://bucket/path, gs://..., file:///shared/path)")
