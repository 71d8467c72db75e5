"""Starting or attaching to Ray, the only place that calls `ray.init`.

Embedded default: a local Ray started by the command (`address="local"`, no dashboard).
Cluster: `--address auto` or `RAY_ADDRESS` attaches to a running cluster, with no resource
arguments (the cluster decides). Resources for actors and trials are derived from
`ray.cluster_resources()` (a GPU request on a CPU-only cluster would hang silently).
"""
from __future__ import annotations

import os
import socket
from typing import Any

import ray

from harness.errors import UserError


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


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UserError within about `timeout` seconds unless a gRPC server listens at `address`.

    Ray itself retries an unreachable address, or one where something else listens, for
    minutes (and ignores Ctrl-C meanwhile); one bounded connect and HTTP/2 greeting tell a
    typo or a stopped cluster apart up front.
    """
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


def ensure_ray(address: str = "", num_cpus: int = 0, *, object_store_mb: int = 0) -> dict[str, float]:
    """Initialise Ray once per process; returns `ray.cluster_resources()`."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS", "")
        if address:
            check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=True)
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


def trial_resources(cluster: dict[str, float], cpus_per_trial: float = 1.0) -> dict[str, float]:
    """Resources of one Tune trial: one GPU each when the cluster has GPUs, else CPUs only."""
    if cluster.get("GPU", 0) >= 1:
        return {"cpu": cpus_per_trial, "gpu": 1}
    return {"cpu": min(cpus_per_trial, max(cluster.get("CPU", 1.0), 1.0))}
