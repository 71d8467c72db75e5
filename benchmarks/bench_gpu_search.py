"""A paper-size search against its compute floor, the levers one by one, and scorer scaling
(issue 15), in ONE run on one device.

    PYTHONPATH=. python benchmarks/bench_gpu_search.py [--device cuda] [--parts floor,levers,search,scaling]
        [--batches 16,32,64] [--lever-networks 64] [--actors 1,2,4] [--engine auto|ray|processes]
        [--json out.json] [--out /tmp/metantk-gpu-search]
    PYTHONPATH=. python benchmarks/bench_gpu_search.py --device cpu --tiny     (the script's own check)

Setting: the default search of the paper (5 cells, C = 48, GroupNorm kernel supernet, 3 tasks
x (5 + 5) images of 32x32, MAML kernel t = inf, c = 1e-3, 3 repeats, regions on 3 x 1000
inputs; synthetic data: the time does not depend on the pixels). ``--tiny``: 3 cells, C = 8,
8x8 images, 1 repeat, 300 region inputs (the smoke search), for CPUs and the test.

Parts (each printed as it finishes; every timing on CUDA is synchronised, the floor is timed
with CUDA events):

- ``floor``: one forward + backward (weight gradients) of the 30-image kernel batch through
  the kernel supernet, the median of ``--floor-repeats``, times the kernels of one search
  (1521 at paper size: 507 networks x 3 repeats) = the search's compute floor; also the
  same per network when 16 candidates (today's GPU batch) share one pass.
- ``levers``: the MetaNTK condition numbers of ``--lever-networks`` networks of round 1 (the
  origin and single-op removals, one key), per lever: the default backend one network per
  pass (today's CPU path: the reference of the scores), candidates per batched pass
  (``--batches``), the ghost Gram backend, channels-last; and the region counts one network
  at a time. Each line: ``lever: seconds per search (extrapolated), ratio to the floor, max
  relative CN difference to the reference`` (<= 1e-5 wanted) and to a float64 evaluation of
  the first ``--float64-networks`` networks.
- ``search``: the whole search (or its first ``--search-rounds``) with the library's
  defaults for the device (InlinePool: one process, no Ray; ``--search-batch``,
  ``--search-backend`` to change them), wall seconds, ratio to the floor of the kernels it
  computed, the genotype. With ``--tiny`` the same search also runs on the CPU one network
  per pass (today's reference) and the genotypes and candidate scores are compared.
- ``scaling``: round-1 work (``--scaling-networks`` networks x repeats, MetaNTK CN and
  regions, in jobs of ``candidates_per_job``) with 1, 2, 4 scorers sharing the device (Ray
  actors with ``gpus_per_worker = 1/k``, or k spawned processes when Ray is missing or
  ``--engine processes``; ``--cluster-nodes N``: Ray actors on a multi-node cluster on this
  machine with declared GPUs): seconds, networks/s, searches/hour (networks/s over the
  search's kernels), speed-up.

TF32 is off (``torch.backends.cuda.matmul.allow_tf32 = False``, cuDNN likewise; the kernel
code also scopes it off). No reduced precision anywhere. Each part has its own time limit
(``--part-timeout``, checked between steps) so one slow part cannot eat the session: a part
that runs out prints ``<part>: stopped after N s`` and the next part runs; a part that fails
prints its traceback, the next part runs, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import parse_config  # noqa: E402
from harness.scoring import GPU_CANDIDATE_BATCH, InlinePool, Job, JobFeed, Scorer, default_batch  # noqa: E402
from harness.specs import ScoreSpec, spec_from_config  # noqa: E402

PARTS = ("floor", "levers", "search", "scaling")
# Kernels (networks x repeats) of the paper-size search (benchmarks/README.md "Search"): 507
# networks per repeat. The search part counts the kernels it really computed.
PAPER_KERNELS = 1521
NETWORKS_PER_REPEAT = PAPER_KERNELS // 3

SCALES: dict[str, dict[str, Any]] = {
    "paper": {"dataset": {"name": "synthetic"},
              "search": {"methods": ["metantk"], "seeds": [0], "cells": [5], "init_channels": 48,
                         "candidates_per_job": GPU_CANDIDATE_BATCH}},
    # A check of the script, not a measurement: 3 cells, C = 4, 6 images of 8x8, 1 repeat.
    "tiny": {"dataset": {"name": "synthetic", "image_size": 32,
                         "options": {"train_classes": 10, "val_classes": 4, "test_classes": 4,
                                     "images_per_class": 10}},
             "search": {"methods": ["metantk"], "seeds": [0], "cells": [3], "init_channels": 4,
                        "kernel_image_size": 8, "tasks": 1, "ways": 3, "repeats": 1, "region_inputs": 100,
                        "region_batches": 1, "candidates_per_job": 8}},
}


class PartTimeout(RuntimeError):
    """A part ran past ``--part-timeout`` (checked between its steps)."""


@dataclass(frozen=True)
class Lever:
    """One way to compute the MetaNTK condition numbers of a set of networks."""

    name: str
    backend: str = "hooks"
    batch: int = 1
    channels_last: bool = False
    full_gram: bool = False  # the batched pass as before issue 15: the whole (k n)^2 Gram


# ------------------------------------------------------------------------------ helpers

def make_config(scale: str, out: Path, name: str, *, backend: str = "hooks") -> Any:
    raw = copy.deepcopy(SCALES[scale])
    raw["experiment"] = {"name": name, "seed": 0, "out": str(out)}
    raw["search"]["kernel_backend"] = backend
    return parse_config(raw, source=f"bench_gpu_search:{scale}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``, synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def event_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls after one warm-up: CUDA events on a GPU, wall clock else."""
    fn()
    sync(device)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            out.append(begin.elapsed_time(end) / 1000.0)
        else:
            out.append(timed(fn, device)[0])
    return out


def round_one_masks(count: int) -> list[np.ndarray]:
    """The origin and the first ``count - 1`` single-op removals of round 1, (2, 9, 7) bool."""
    full = np.ones((2, 9, 7), bool)
    masks = [full]
    for t in range(2):
        for e in range(9):
            for o in range(7):
                m = full.copy()
                m[t, e, o] = False
                masks.append(m)
    return masks[:count]


def rel_diff(a: Iterable[float], b: Iterable[float]) -> float:
    """Largest |a - b| / |b| over pairs (inf where exactly one is infinite)."""
    worst = 0.0
    for x, y in zip(a, b):
        if x == y:
            continue
        worst = max(worst, abs(x - y) / abs(y) if math.isfinite(x) and math.isfinite(y) and y else math.inf)
    return worst


def cn_float64(scorer: Scorer, masks: np.ndarray) -> float:
    """The MetaNTK CN of one network evaluated in float64 (network, images and kernel) on the
    scorer's device, with the scorer's weights and task batch: the accuracy reference."""
    from harness.scoring import masks_dict
    from kernels import condition_number, empirical_ntk, meta_ntk

    s = scorer.spec.kernel
    net = copy.deepcopy(scorer.net).to(torch.float64)
    net.set_masks(masks_dict(masks))
    theta = empirical_ntk(net, scorer.x.to(torch.float64), output=s.kernel_output, params=s.kernel_params,
                          backend="hooks")
    return condition_number(meta_ntk(theta, scorer.tasks, inner_time=s.inner_time, reg=s.reg))


class CountingPool:
    """A pool wrapper that counts the networks scored (each repeat counts): kernels."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.networks = pool, 0
        self.size = getattr(pool, "size", 1)
        self.device_kind = getattr(pool, "device_kind", "cpu")
        self.label = getattr(pool, "label", "pool")

    def run(self, jobs: Any, on_result: Any) -> None:
        def counted(job: Job, label: str, results: list) -> None:
            self.networks += len(results)
            on_result(job, label, results)
        self.pool.run(jobs, counted)

    def shutdown(self) -> None:
        self.pool.shutdown()


def run_search(cfg: Any, pool: Any, stop_after_round: int | None = None) -> tuple[float, int, str]:
    """(wall seconds, kernels scored, genotype or "") of a fresh search of ``cfg`` on ``pool``."""
    from harness.search import SearchInterrupted, run_searches

    shutil.rmtree(cfg.results_dir, ignore_errors=True)
    counting = CountingPool(pool)
    start = time.perf_counter()
    genotype = ""
    try:
        rows = run_searches(cfg, counting, stop_after_round=stop_after_round, progress=False)
        genotype = rows[0]["genotype"]
    except SearchInterrupted:
        pass
    return time.perf_counter() - start, counting.networks, genotype


# ------------------------------------------------------------------------------ parts

def floor_part(spec: ScoreSpec, device: torch.device, repeats: int, batch: int, kernels: int) -> dict:
    from kernels.ntk import select_parameters

    scorer = Scorer(spec, device)
    scorer.score(np.ones((2, 9, 7), bool), (0, "floor", 0, 0), ("cn_meta",))  # builds weights + batch
    net, x = scorer.net, scorer.x
    weights = select_parameters(net, "weights")

    def one_pass(inputs: torch.Tensor) -> Callable[[], Any]:
        return lambda: torch.autograd.grad(net(inputs).sum(), weights)

    per_kernel = float(np.median(event_seconds(one_pass(x), device, repeats)))
    net.sample_masks = torch.ones(batch, 2, 9, 7, dtype=torch.bool, device=device)
    try:
        batched = float(np.median(event_seconds(one_pass(x.repeat(batch, 1, 1, 1)), device, repeats))) / batch
    except torch.cuda.OutOfMemoryError:  # reported as NaN; the single-batch floor stands
        batched = math.nan
        torch.cuda.empty_cache()
    finally:
        net.sample_masks = None
    return {"images": int(x.shape[0]), "kernel_seconds": per_kernel, "search_kernels": kernels,
            "search_floor_seconds": per_kernel * kernels, "batch": batch,
            "batched_kernel_seconds": batched, "batched_search_floor_seconds": batched * kernels}


def lever_list(batches: list[int], device: torch.device) -> list[Lever]:
    best = default_batch(device)
    levers = [Lever("hooks, 1 network per pass (reference)")]
    levers += [Lever(f"hooks, {b} candidates per pass", batch=b) for b in batches if b > 1]
    stacked = best if best > 1 else max(batches + [1])
    if stacked > 1:
        levers.append(Lever(f"hooks, {stacked} per pass, full Gram (before issue 15)", batch=stacked,
                            full_gram=True))
    levers += [Lever(f"ghost Gram, {best} per pass", backend="ghost", batch=best),
               Lever(f"channels_last, {best} per pass", batch=best, channels_last=True)]
    return levers


def cn_full_gram(scorer: Scorer, masks: list[np.ndarray], batch: int) -> list[float]:
    """MetaNTK CNs with ``batch`` candidates per pass computed as before issue 15: the whole
    (k n) x (k n) Gram of the stacked batch, of which only the k diagonal blocks are used."""
    from kernels import condition_number, empirical_ntk, meta_ntk

    s, n, out = scorer.spec.kernel, scorer.x.shape[0], []
    for i in range(0, len(masks), batch):
        chunk = masks[i:i + batch]
        scorer.net.sample_masks = torch.from_numpy(np.stack(chunk)).to(scorer.device)
        try:
            theta = empirical_ntk(scorer.net, scorer.x.repeat(len(chunk), 1, 1, 1), output=s.kernel_output,
                                  params=s.kernel_params, backend=s.kernel_backend)
        finally:
            scorer.net.sample_masks = None
        out += [condition_number(meta_ntk(theta[b * n:(b + 1) * n, b * n:(b + 1) * n], scorer.tasks,
                                          inner_time=s.inner_time, reg=s.reg)) for b in range(len(chunk))]
    return out


def lever_cns(scorer: Scorer, lever: Lever, masks: list[np.ndarray], key: tuple) -> list[float]:
    """The lever's MetaNTK condition numbers of ``masks`` under ``key``."""
    if lever.full_gram:
        scorer.score(masks[0], key, ("cn_meta",))  # draws the key's weights and batch
        return cn_full_gram(scorer, masks, lever.batch)
    return [sc.cn_meta for sc in scorer.score_many(masks, key, ("cn_meta",), batch=lever.batch)]


def levers_part(spec: ScoreSpec, device: torch.device, levers: list[Lever], n: int, f64: int,
                kernels: int, floor_s: float, deadline: float) -> list[dict]:
    masks = round_one_masks(n)
    key = (0, "levers", 1, 0)
    rows: list[dict] = []
    reference: list[float] | None = None
    exact: list[float] = []
    for lever in levers:
        if time.monotonic() > deadline:
            raise PartTimeout(f"after {len(rows)} levers")
        scorer = Scorer(spec.with_kernel(kernel_backend=lever.backend), device)
        if lever.channels_last:
            scorer.net.to(memory_format=torch.channels_last)
        row: dict[str, Any] = {"lever": lever.name, "backend": lever.backend, "batch": lever.batch,
                               "channels_last": lever.channels_last}
        try:
            lever_cns(scorer, lever, masks[:max(2, lever.batch)], key)  # warm-up
            seconds, cns = timed(lambda: lever_cns(scorer, lever, masks, key), device)
        except torch.cuda.OutOfMemoryError as exc:  # reported as this lever's result, next lever runs
            row["error"] = f"out of memory ({str(exc).splitlines()[0][:80]})"
            rows.append(row)
            print(f"  {lever.name}: {row['error']}", flush=True)
            torch.cuda.empty_cache()
            continue
        if reference is None:
            reference = cns
            exact = [cn_float64(scorer, m) for m in masks[:f64]]
        row.update(seconds_per_network=seconds / len(masks), search_seconds=seconds / len(masks) * kernels,
                   ratio_to_floor=seconds / len(masks) * kernels / floor_s if floor_s else math.nan,
                   max_rel_diff_reference=rel_diff(cns, reference), max_rel_diff_float64=rel_diff(cns[:f64], exact))
        rows.append(row)
        print(f"  {lever.name}: {row['search_seconds']:.2f} s per search, {row['ratio_to_floor']:.2f}x floor, "
              f"CN rel. diff {row['max_rel_diff_reference']:.1e} to reference, "
              f"{row['max_rel_diff_float64']:.1e} to float64", flush=True)
        del scorer
    if time.monotonic() <= deadline:
        scorer = Scorer(spec, device)
        scorer.score(masks[0], key, ("rn",))
        seconds, _ = timed(lambda: scorer.score_many(masks, key, ("rn",)), device)
        row = {"lever": "regions, 1 network at a time", "seconds_per_network": seconds / len(masks),
               "search_seconds": seconds / len(masks) * kernels,
               "ratio_to_floor": seconds / len(masks) * kernels / floor_s if floor_s else math.nan}
        rows.append(row)
        print(f"  {row['lever']}: {row['search_seconds']:.2f} s per search, {row['ratio_to_floor']:.2f}x floor",
              flush=True)
    return rows


def search_part(scale: str, device: torch.device, out: Path, batch: int, backend: str, rounds: int,
                tiny_reference: bool) -> dict:
    cfg = make_config(scale, out, "gpu-search", backend=backend)
    stop = rounds or None
    seconds, kernels, genotype = run_search(cfg, InlinePool(device, batch=batch), stop)
    result: dict[str, Any] = {"seconds": seconds, "kernels": kernels, "genotype": genotype,
                              "batch": batch, "backend": backend}
    print(f"  whole search: {seconds:.1f} s, {kernels} kernels, {batch} candidates per pass, backend {backend}",
          flush=True)
    print(f"  genotype: {genotype or f'(none: stopped after round {rounds})'}", flush=True)
    if tiny_reference:
        from harness.store import read_table

        ref_cfg = make_config(scale, out, "gpu-search-reference")
        ref_seconds, _, ref_genotype = run_search(ref_cfg, InlinePool("cpu", batch=1), stop)
        keys = ["round", "cell_type", "edge", "op"]
        got = read_table(cfg.results_dir, "candidates").sort_values(keys)
        ref = read_table(ref_cfg.results_dir, "candidates").sort_values(keys)
        diff = rel_diff(got["cn_pruned"].tolist(), ref["cn_pruned"].tolist()) if len(got) == len(ref) else math.inf
        result.update(reference_seconds=ref_seconds, reference_genotype=ref_genotype,
                      genotype_matches=genotype == ref_genotype, max_rel_diff_reference=diff)
        print(f"  reference (cpu, 1 network per pass): {ref_seconds:.1f} s; genotype matches: "
              f"{genotype == ref_genotype}; candidate CN max rel. diff {diff:.1e}", flush=True)
    return result


def _process_worker(index: int, device: str, batch: int, inbox: Any, outbox: Any) -> None:
    """Scorer process ``index``: score jobs from ``inbox`` until None, answer on ``outbox``."""
    pool = InlinePool(device, batch=batch)
    outbox.put((index, None, "", None))
    for job in iter(inbox.get, None):
        pool.run([job], lambda j, label, res: outbox.put((index, j, f"{label}#{index}", res)))


class ProcessPool:
    """k scorer processes (spawned) sharing one device: ``run(jobs, on_result)`` as InlinePool,
    two jobs in flight per process. For machines without Ray."""

    def __init__(self, workers: int, device: torch.device, batch: int) -> None:
        ctx = mp.get_context("spawn")
        self.size, self.device_kind, self.label = workers, str(device), f"processes:{device}"
        self._out = ctx.Queue()
        self._ins = [ctx.Queue() for _ in range(workers)]
        self._procs = [ctx.Process(target=_process_worker, args=(i, str(device), batch, q, self._out), daemon=True)
                       for i, q in enumerate(self._ins)]
        for p in self._procs:
            p.start()
        for _ in self._procs:
            self._out.get(timeout=300)

    def run(self, jobs: Any, on_result: Any) -> None:
        feed = jobs if isinstance(jobs, JobFeed) else JobFeed(jobs)
        load = [0] * self.size
        while True:
            while len(feed) and min(load) < 2:  # two in flight per process hide the round trip
                w = load.index(min(load))
                self._ins[w].put(feed.pop())
                load[w] += 1
            if not any(load):
                return
            w, job, label, res = self._out.get(timeout=600)
            load[w] -= 1
            on_result(job, label, res)

    def shutdown(self) -> None:
        for q in self._ins:
            q.put(None)
        for p in self._procs:
            p.join(timeout=30)


def start_cluster(nodes: int) -> Any:
    """A multi-node Ray cluster on this machine: a head without resources and ``nodes``
    worker nodes of 1 CPU and 1 declared GPU each (CPU work: torch sees no CUDA there)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway cluster needs no token
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                            "object_store_memory": 100 * 2 ** 20})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * 2 ** 20)
    ray.init(address=cluster.address, include_dashboard=False)
    return cluster


def make_pool(engine: str, workers: int, device: torch.device, batch: int) -> Any:
    """Ray actors with ``gpus_per_worker = 1 / workers`` ("ray": a local Ray unless one is
    running, e.g. the cluster of ``--cluster-nodes``), or spawned processes."""
    if engine == "ray":
        import ray

        from harness.ray_session import ensure_ray
        from harness.scorers import ScorerPool

        if not ray.is_initialized():
            ensure_ray("", 0)
        return ScorerPool(workers=workers, gpus_per_worker=1.0 / workers, batch=batch)
    return ProcessPool(workers, device, batch)


def scaling_jobs(spec: ScoreSpec, networks: int, per_job: int, repeats: int) -> list[Job]:
    """Round-1 work of one search: ``networks`` networks (origin and single-op removals) per
    repeat, ``per_job`` to a job, each repeat its own key (its own weights and batch)."""
    masks = round_one_masks(networks)
    return [Job(spec, (0, "scaling", 1, r), ("cn_meta", "rn"),
                tuple(((i, r), masks[i]) for i in range(start, min(networks, start + per_job))))
            for r in range(repeats) for start in range(0, networks, per_job)]


def scaling_part(spec: ScoreSpec, device: torch.device, actors: list[int], engine: str, networks: int,
                 per_job: int, repeats: int, kernels: int, deadline: float) -> list[dict]:
    rows = []
    for k in actors:
        if time.monotonic() > deadline:
            raise PartTimeout(f"after {len(rows)} pool sizes")
        pool = make_pool(engine, k, device, default_batch(device))
        try:
            if pool.size < k:
                print(f"  {k} scorers: only {pool.size} fit on this machine; skipped", flush=True)
                continue
            # warm-up: every scorer builds its networks outside the timing
            warm = [Job(spec, ("warm", i), ("rn",), (((i, 0), np.ones((2, 9, 7), bool)),)) for i in range(2 * k)]
            pool.run(warm, lambda *a: None)
            jobs = scaling_jobs(spec, networks, per_job, repeats)
            done: list[int] = []
            seconds, _ = timed(lambda: pool.run(jobs, lambda job, label, res: done.append(len(res))), device)
        finally:
            pool.shutdown()
        rate = sum(done) / seconds
        rows.append({"scorers": k, "gpus_each": 1.0 / k, "seconds": seconds, "networks": sum(done),
                     "networks_per_second": rate, "searches_per_hour": rate * 3600 / kernels})
        print(f"  {k} scorer(s): {sum(done)} networks in {seconds:.1f} s, {rate:.2f} networks/s, "
              f"{rows[-1]['searches_per_hour']:.1f} searches/hour", flush=True)
    return rows


# ------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="smoke-size search (3 cells, C=8, 8x8, 1 repeat)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--batches", default="16,32,64", help="candidates per batched pass to try (levers)")
    p.add_argument("--lever-networks", type=int, default=64, help="networks of round 1 per lever")
    p.add_argument("--float64-networks", type=int, default=4, help="of those, evaluated in float64 too")
    p.add_argument("--floor-repeats", type=int, default=10)
    p.add_argument("--search-batch", type=int, default=0,
                   help="candidates per pass of the whole search (0: the device's default)")
    p.add_argument("--search-backend", default="hooks", help="NTK backend of the whole search")
    p.add_argument("--actors", default="1,2,4", help="scorers sharing the device (scaling)")
    p.add_argument("--scaling-networks", type=int, default=127,
                   help="networks per repeat scored in the scaling part (127: round 1)")
    p.add_argument("--search-rounds", type=int, default=0, help="stop the whole search after N rounds (0: all)")
    p.add_argument("--engine", choices=("auto", "ray", "processes"), default="auto",
                   help="scaling pool: Ray actors (auto: when Ray is installed) or spawned processes")
    p.add_argument("--cluster-nodes", type=int, default=0,
                   help="scaling on a multi-node Ray cluster on this machine: N worker nodes with 1 CPU "
                        "and 1 declared GPU each (implies --engine ray)")
    p.add_argument("--part-timeout", type=float, default=420.0, help="seconds per part (checked between steps)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (CPU)")
    p.add_argument("--out", type=Path, default=Path("/tmp/metantk-gpu-search"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    actors = [int(a) for a in args.actors.split(",") if a.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Accuracy first: no TF32 anywhere (the kernel code scopes it off as well).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    engine = args.engine
    cluster = None
    if args.cluster_nodes and "scaling" in parts:
        engine = "ray"
        cluster = start_cluster(args.cluster_nodes)
    if engine == "auto":
        try:
            import ray  # noqa: F401
            engine = "ray"
        except ImportError:
            engine = "processes"
    scale = "tiny" if args.tiny else "paper"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(f"torch {torch.__version__}, device {device} ({card}), {scale} search, threads {torch.get_num_threads()}, "
          f"load average {load:.2f}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
          f"cudnn {torch.backends.cudnn.allow_tf32}", flush=True)
    cfg = make_config(scale, args.out, "gpu-search")
    spec = spec_from_config(cfg, cfg.search.cells[0])
    kernels = NETWORKS_PER_REPEAT * cfg.search.repeats  # before the search part counts them
    search_batch = args.search_batch or default_batch(device)
    out: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "card": card, "scale": scale,
                           "load_average": load, "search_kernels": kernels}
    floor_s = math.nan
    failed: list[str] = []

    def run_part(name: str, fn: Callable[[float], Any]) -> None:
        start = time.monotonic()
        print(f"\n{name}:", flush=True)
        try:
            out[name] = fn(start + args.part_timeout)
        except PartTimeout as exc:
            print(f"{name}: stopped after {time.monotonic() - start:.0f} s ({exc})", flush=True)
        except Exception:  # noqa: BLE001 - GPU time is scarce: report, run the next part, exit 1
            traceback.print_exc()
            print(f"{name}: FAILED (traceback above); the next part runs", flush=True)
            failed.append(name)
        if args.json is not None:  # after every part: a later kill keeps what was measured
            args.json.write_text(json.dumps(out, indent=2, default=str))

    if "floor" in parts:
        # the batched floor at today's GPU batch (64 candidates = 1920 images may not fit)
        floor_batch = min(GPU_CANDIDATE_BATCH, max(batches + [1]))
        run_part("floor", lambda d: floor_part(spec, device, args.floor_repeats, floor_batch, kernels))
        f = out.get("floor")
        if f:
            floor_s = f["search_floor_seconds"]
            print(f"  compute floor: {f['kernel_seconds'] * 1e3:.2f} ms per kernel ({f['images']} images, 1 fwd+bwd) "
                  f"x {kernels} kernels = {floor_s:.2f} s per search; "
                  f"{f['batched_kernel_seconds'] * 1e3:.2f} ms per kernel at {f['batch']} per pass "
                  f"= {f['batched_search_floor_seconds']:.2f} s", flush=True)
    if "levers" in parts:
        levers = lever_list(batches, device)
        run_part("levers", lambda d: levers_part(spec, device, levers, args.lever_networks, args.float64_networks,
                                                 kernels, floor_s, d))
    if "search" in parts:
        run_part("search", lambda d: search_part(scale, device, args.out, search_batch, args.search_backend,
                                                 args.search_rounds, tiny_reference=scale == "tiny"))
        s, f = out.get("search"), out.get("floor")
        if s and f:
            floor_run = f["kernel_seconds"] * s["kernels"]
            print(f"  search: {s['seconds']:.1f} s, {s['seconds'] / floor_run:.2f}x its floor ({floor_run:.2f} s)",
                  flush=True)
        elif s:
            print(f"  search: {s['seconds']:.1f} s (floor not measured)", flush=True)
    if "scaling" in parts:
        print(f"\nscaling engine: {engine}" + (f", cluster of {args.cluster_nodes} worker nodes (1 CPU, 1 declared "
                                               "GPU each)" if cluster else ""), flush=True)
        run_part("scaling", lambda d: scaling_part(spec, device, actors, engine, args.scaling_networks,
                                                   cfg.search.candidates_per_job, cfg.search.repeats, kernels, d))
        rows = out.get("scaling") or []
        if rows:
            base = rows[0]["networks_per_second"]
            print(f"  {'scorers':>8} {'GPU each':>9} {'seconds':>8} {'networks/s':>11} {'searches/h':>11} {'speed-up':>9}")
            for r in rows:
                print(f"  {r['scorers']:>8} {r['gpus_each']:>9.2f} {r['seconds']:>8.1f} "
                      f"{r['networks_per_second']:>11.2f} {r['searches_per_hour']:>11.1f} "
                      f"{r['networks_per_second'] / base:>8.2f}x")
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    print("\ndone" + (f"; FAILED parts: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
