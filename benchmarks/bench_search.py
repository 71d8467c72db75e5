"""Search throughput: candidates/s and round time with 1 and 2 scorer workers, and paper size.

    .venv/bin/python benchmarks/bench_search.py [--quick] [--device cpu|cuda] [--paper-candidates 6]

Part 1 runs the first pruning round of a small search (3-cell C=8 supernet, synthetic data)
on a local Ray with 1 and then 2 scorer actors and prints candidates/s, round seconds and the
speed-up. Part 2 scores a sample of candidates of the paper-size setting (5 cells, C=48,
GroupNorm, 30 images of 32x32, MAML kernel, 3 repeats; linear regions on 3000 inputs) in
this process on `--device` and extrapolates the time of a full round (127 networks x 3
repeats) and of a whole search (510 networks x 3 repeats: 486 op candidates, 14 edge
candidates, 10 origins). Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import parse_config  # noqa: E402


def small_config(out: str, workers: int) -> object:
    return parse_config({
        "experiment": {"name": f"bench{workers}", "seed": 0, "out": out},
        "dataset": {"name": "synthetic", "options": {"train_classes": 10, "images_per_class": 10}},
        "search": {"methods": ["metantk"], "seeds": [0], "cells": [3], "init_channels": 8,
                   "kernel_image_size": 16, "repeats": 1, "region_inputs": 300, "region_batches": 1,
                   "candidates_per_job": 8},
        "resources": {"workers": workers},
    }, source="bench")


def first_round(workers: int, out: str) -> tuple[float, int]:
    """Seconds of the first pruning round (127 networks) with `workers` actors."""
    from harness.scorers import ScorerPool
    from harness.search import SearchInterrupted, run_searches

    cfg = small_config(out, workers)
    pool = ScorerPool(workers=workers)
    try:
        # Warm-up: every actor builds its scorer (dataset + supernets) outside the timing.
        from harness.scorers import Job
        from harness.scoring import spec_from_config

        spec = spec_from_config(cfg, 3)
        warm = [Job(spec, ("warm", i), ("rn",), (((i, 0), np.ones((2, 9, 7), bool)),)) for i in range(workers)]
        pool.run(warm, lambda *a: None)
        start = time.perf_counter()
        try:
            run_searches(cfg, pool, stop_after_round=1, progress=False)
        except SearchInterrupted:
            pass
        return time.perf_counter() - start, 127
    finally:
        pool.shutdown()


def paper_sample(device: str, n: int) -> dict[str, float]:
    """Seconds per MetaNTK CN and per region count at paper size, on `device`."""
    import torch

    from harness.scoring import Scorer, spec_from_config

    cfg = parse_config({"experiment": {"name": "paper"}, "dataset": {"name": "synthetic"},
                        "search": {"cells": [5], "init_channels": 48}}, source="paper")
    spec = spec_from_config(cfg, 5)
    scorer = Scorer(spec, torch.device(device))
    masks = np.ones((2, 9, 7), bool)
    rng = np.random.default_rng(0)
    scorer.score(masks, (0, "warm", 0, 0), ("cn_meta", "rn"))  # warm-up (allocations, cudnn)
    cn, rn = [], []
    for i in range(n):
        m = masks.copy()
        m[rng.integers(2), rng.integers(9), rng.integers(7)] = False
        cn.append(scorer.score(m, (0, "paper", 0, 0), ("cn_meta",)).seconds)
        rn.append(scorer.score(m, (0, "paper", 0, 0), ("rn",)).seconds)
    return {"cn": float(np.median(cn)), "rn": float(np.median(rn))}


def paper_rounds(device: str, rounds: int, out: str, cells: int = 5, channels: int = 48) -> list[tuple[int, float, int]]:
    """Run `rounds` real rounds of a paper-size metantk search in this process on `device`."""
    import time as _time

    from harness.scoring import InlinePool
    from harness.search import SEARCH_ROUNDS, SearchInterrupted, run_searches

    cfg = parse_config({"experiment": {"name": "paper-search", "seed": 0, "out": out},
                        "dataset": {"name": "synthetic"},
                        "search": {"methods": ["metantk"], "cells": [cells], "init_channels": channels, "repeats": 3,
                                   "candidates_per_job": 16}},
                       source="paper")
    pool = InlinePool(device)
    times = []
    for r in range(1, rounds + 1):
        start = _time.perf_counter()
        try:
            run_searches(cfg, pool, resume=r > 1, stop_after_round=r if r < SEARCH_ROUNDS else None, progress=False)
        except SearchInterrupted:
            pass
        n = [127, 109, 91, 73, 55, 37, 4, 5, 4, 5][r - 1] * 3  # candidates + origin per round
        times.append((r, _time.perf_counter() - start, n))
        print(f"  round {r}: {times[-1][1]:7.1f} s  {n:4d} networks  {n / times[-1][1]:6.2f} networks/s", flush=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="skip the Ray part")
    p.add_argument("--paper-candidates", type=int, default=4)
    p.add_argument("--paper-rounds", type=int, default=0,
                   help="also run this many real rounds (1-10: 6 op rounds, 4 edge-group rounds) of a paper-size search "
                        "in-process (GPU)")
    p.add_argument("--paper-cells", type=int, default=5, help=argparse.SUPPRESS)     # smoke-testing the script
    p.add_argument("--paper-channels", type=int, default=48, help=argparse.SUPPRESS)
    p.add_argument("--out", default="/tmp/metantk-bench-search")
    args = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    if not args.quick:
        from harness.ray_session import ensure_ray

        ensure_ray("", 2)
        rows = {w: first_round(w, args.out) for w in (1, 2)}
        print("\nfirst pruning round, 3-cell C=8 supernet, 30 images 16x16, repeats 1 (127 networks)")
        print(f"{'workers':>8} {'round s':>9} {'cand/s':>8}")
        for w, (sec, n) in rows.items():
            print(f"{w:>8} {sec:>9.1f} {n / sec:>8.2f}")
        print(f"speed-up 2 vs 1 workers: {rows[1][0] / rows[2][0]:.2f}x")
    t = paper_sample(args.device, args.paper_candidates) if args.paper_candidates else {"cn": 0.0, "rn": 0.0}
    per_net = t["cn"] + t["rn"]
    round_s = 127 * 3 * per_net
    search_s = 510 * 3 * per_net
    print(f"\npaper size (5 cells, C=48, MAML kernel, 30 images 32x32; regions on 3000 inputs), {args.device}:")
    print(f"  MetaNTK CN {t['cn']:.3f} s + regions {t['rn']:.3f} s per network (median of {args.paper_candidates})")
    print(f"  round 1 (127 networks x 3 repeats) ~ {round_s / 60:.1f} min on one worker;"
          f" whole search (510 x 3) ~ {search_s / 60:.1f} min = {search_s / 3600:.2f} device-hours")
    print("  reference: 1.54 GPU-hours per 5-cell miniImageNet search on a V100")
    if args.paper_rounds:
        import shutil

        shutil.rmtree(Path(args.out) / "paper-search", ignore_errors=True)
        print(f"\npaper-size search, real rounds in-process on {args.device} (networks = (candidates+origin) x 3):")
        from harness.search import SEARCH_ROUNDS

        rows = paper_rounds(args.device, min(args.paper_rounds, SEARCH_ROUNDS), args.out, args.paper_cells,
                            args.paper_channels)
        total = sum(t for _, t, _ in rows)
        print(f"  {len(rows)} round(s): {total:.1f} s" + ("  (whole search)" if len(rows) == SEARCH_ROUNDS else ""))


if __name__ == "__main__":
    main()
