"""The scorer pool: Ray actors that each own one GPU (or one CPU slot) and score masks.

Built once per run and reused by every round of every search: each actor keeps one
`harness.scoring.Scorer` per `ScoreSpec` (supernet, thin supernet and dataset built once),
so only masks, keys and scores travel. Candidates of concurrent searches share the pool.
Scores are pure functions of their inputs, so Ray's actor restarts and task retries are safe:
a killed actor is restarted and its in-flight jobs rerun with identical results.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Hashable, Iterable

import ray

from harness.scoring import Job, JobFeed, Score, ScoreSpec  # noqa: F401  (Job re-exported)

MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
IN_FLIGHT_PER_ACTOR = 2
START_TIMEOUT_S = 300  # one running, one queued: hides the round trip


@ray.remote
class ScorerActor:
    def __init__(self, index: int, shared: dict[Any, Any] | None = None) -> None:
        import torch

        self.index = index
        # The splits the driver put in the object store (`harness.shared_data`): passed as a
        # top-level ObjectRef, so Ray hands over the NumPy arrays zero-copy (shared memory).
        self._shared = shared or {}
        gpu_ids = ray.get_gpu_ids()
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU: it is device 0 here.
        self.device = torch.device("cuda", 0) if gpu_ids and torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cpu":
            # One CPU slot, one thread: tiny convolutions oversubscribed across threads run
            # 10-40x slower on a busy 2-core box (measured).
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.label = f"{socket.gethostname()}:{self.device.type}{gpu_ids[0] if gpu_ids else ''}#{index}"
        self._scorers: dict[ScoreSpec, Any] = {}

    def info(self) -> dict[str, Any]:
        import torch

        kind = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"pid": os.getpid(), "label": self.label, "device_kind": kind}

    def score(self, job: Job, batch: int = 0) -> tuple[str, list[tuple[Hashable, Score]]]:
        from harness.scoring import default_batch, score_job

        from harness.shared_data import preloaded_split

        return self.label, score_job(self._scorers, job, self.device, batch or default_batch(self.device),
                                     lambda spec: preloaded_split(self._shared, spec))


def scorer_plan(cluster: dict[str, float], requested: int, gpus_per_worker: float) -> tuple[int, dict[str, float]]:
    """(number of actors, Ray options per actor) on a cluster of `cluster` resources: each actor
    takes `gpus_per_worker` GPUs (a fraction packs several on one GPU) when the cluster has GPUs,
    else one CPU; `requested` actors (0 = as many as fit)."""
    from harness.ray_session import how_many_fit, gpu_request

    gpus = gpu_request(cluster, gpus_per_worker, "scorer")
    # a GPU actor's one CPU is not counted: as before, the GPUs decide how many fit
    capacity = how_many_fit(cluster, {"gpu": gpus} if gpus else {"cpu": 1.0})
    options = {"num_gpus": gpus, "num_cpus": 1} if gpus else {"num_cpus": 1}
    return (min(requested, capacity) if requested > 0 else capacity), options


def plan_workers(requested: int, gpus_per_worker: float) -> tuple[int, dict[str, float]]:
    """`scorer_plan` on the running Ray's resources."""
    return scorer_plan(dict(ray.cluster_resources()), requested, gpus_per_worker)


class ScorerPool:
    """A fixed set of `ScorerActor`s with bounded in-flight work per actor."""

    def __init__(self, workers: int = 0, gpus_per_worker: float = 1.0, batch: int = 0, shared: Any = None) -> None:
        # `batch`: candidates per kernel pass on each actor (0 = its device's default).
        # `shared`: ObjectRef of the splits loaded once by the driver (`harness.shared_data`),
        # or None (each actor reads the dataset root).
        self.size, self._options = plan_workers(workers, gpus_per_worker)
        self.batch = batch
        self._shared = shared
        self._actors = [self._new_actor(i) for i in range(self.size)]
        try:
            infos = ray.get([a.info.remote() for a in self._actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise RuntimeError(
                f"could not start {self.size} scorer actors with {self._options} each within {START_TIMEOUT_S}s; "
                f"available now: {ray.available_resources()}. Free the cluster or ask for fewer --workers"
            ) from None
        self.device_kind = infos[0]["device_kind"]

    def _new_actor(self, index: int) -> Any:
        return ScorerActor.options(
            **self._options, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES
        ).remote(index, self._shared)

    @property
    def actors(self) -> list[Any]:
        return list(self._actors)

    def run(self, jobs: Iterable[Job], on_result: Callable[[Job, str, list[tuple[Hashable, Score]]], None]) -> None:
        """Score every job; `on_result(job, worker_label, [(id, Score)])` as each one finishes.

        `jobs` may be a `JobFeed` that `on_result` adds to: then this returns when the feed
        is empty and nothing is in flight. Jobs whose actor died beyond its restarts are
        resubmitted to a fresh actor (safe: scores are pure); any other error propagates.
        """
        pending = jobs if isinstance(jobs, JobFeed) else JobFeed(jobs)
        inflight: dict[Any, tuple[Job, int]] = {}
        load = [0] * self.size
        taken = resubmits = 0  # jobs taken from the feed (a put-back job counts once), retries
        retried: set[int] = set()  # ids of put-back jobs, still referenced by the feed
        while pending or inflight:
            while pending:
                idx = min(range(self.size), key=lambda i: load[i])
                if load[idx] >= IN_FLIGHT_PER_ACTOR:
                    break
                job = pending.pop()
                inflight[self._actors[idx].score.remote(job, self.batch)] = (job, idx)
                load[idx] += 1
                if id(job) in retried:
                    retried.discard(id(job))
                else:
                    taken += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                job, idx = inflight.pop(ref)
                load[idx] -= 1
                try:
                    label, scores = ray.get(ref)
                except ray.exceptions.RayActorError:
                    resubmits += 1
                    if resubmits > 3 * self.size + taken:
                        raise
                    time.sleep(0.5)
                    self._actors[idx] = self._new_actor(idx)
                    pending.put_back(job)
                    retried.add(id(job))
                    continue
                on_result(job, label, scores)

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
