"""Memory of N trial-like workers that each load the training split vs. read it shared.

usage: python benchmarks/bench_shared_data.py [--workers 4] [--images-per-class 500]

Starts its own local Ray. Each worker (a Ray task, all running at once) gets the split the
way a trial does: "load" = `SplitKey.load()` in the worker (before: every trial read the
dataset itself), "shared" = `harness.shared_data.resolve_split` on the arrays the driver put
in the object store once. The worker touches every image (sums them) and reports its
proportional set size (PSS, /proc/self/smaps_rollup: shared pages are split between the
processes that map them, so the sum over workers is what they cost together) and RSS;
"none" is the workers' baseline without any data.
Linux only.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def memory_kib() -> dict[str, int]:
    """Rss and Pss of this process in KiB (/proc/self/smaps_rollup)."""
    out = {}
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                out[name] = int(rest.split()[0])
    return out


def use_split(mode: str, key, shared) -> dict[str, int]:
    import torch

    from harness.shared_data import resolve_split

    torch.set_num_threads(1)
    if mode == "none":  # the worker's baseline: python, torch and ray, no data
        time.sleep(2.0)
        return {**memory_kib(), "checksum": 0}
    split = resolve_split(shared if mode == "shared" else None, key)
    total = int(split.images.sum(dtype=torch.int64))  # touch every byte, as an epoch would
    time.sleep(2.0)  # every worker holds its split at the same time
    return {**memory_kib(), "checksum": total}


def main() -> None:
    import ray

    from harness.shared_data import data_split_key, load_shared
    from harness.specs import DataSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--images-per-class", type=int, default=500)
    args = p.parse_args()
    options = {"train_classes": 64, "images_per_class": args.images_per_class}
    key = data_split_key(DataSpec("synthetic", "", 0, "train", "train", options, 0), "train")
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, object_store_memory=400 * 2**20,
             log_to_driver=False)
    try:
        shared = load_shared([key])
        size_mib = shared[key]["images"].nbytes / 2**20
        ref = ray.put(shared)
        del shared
        task = ray.remote(num_cpus=1)(use_split)
        print(f"split: {size_mib:.0f} MiB of images; {args.workers} workers at once")
        for mode in ("none", "shared", "load"):  # "load" last: a reused worker may keep its heap
            results = ray.get([task.remote(mode, key, ref if mode == "shared" else None) for _ in range(args.workers)])
            pss = sum(r["Pss"] for r in results) / 1024
            rss = sum(r["Rss"] for r in results) / 1024
            print(f"{mode:>6}: workers' PSS total {pss:7.0f} MiB, RSS total {rss:7.0f} MiB")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
