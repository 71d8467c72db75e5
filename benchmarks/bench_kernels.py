"""Kernel benchmark: seconds per MetaNTK condition number per NTK backend, and region counting.

    .venv/bin/python benchmarks/bench_kernels.py [--device cpu|cuda|cuda:1] [--repeats 3]
        [--quick] [--threads N] [--backends hooks,ghost,func,opacus,loop] [--json out.json]

Part 1, the paper's kernel setting (REFERENCE.md "Kernel batch"): supernet C=48,
5 cells, GroupNorm, all ops active, 3 tasks x (5 query + 5 support) = 30 random 32x32 images,
5-way head. For each backend: seconds for ``condition_number(meta_ntk(empirical_ntk(...)))``
(MAML, t = inf, c = 1e-3, sum of logits, weights only), against the compute floor = one batched
forward + backward (weight gradients) of the same 30 images, and the ratio to the floor.
Also the relative Frobenius difference of each backend's NTK to the "loop" oracle (or to the
first backend run).

Part 2, linear regions: thin supernet (C=1, BatchNorm in train mode as the reference), 3000
random 1x3x3 inputs in 3 batches of 1000: exact hashing (``count_linear_regions``) vs the
reference's O(N^2) pattern-matrix method (``count_linear_regions_pairwise``), seconds,
ratio, whether the counts agree; the forward passes (shared) are timed separately.

``--quick``: C=16, 16x16 images, 1000 region inputs. Times are the minimum over
``--repeats`` runs after one warm-up. Nothing is hard-coded to a device: ``--device``
decides, CUDA is synchronised around every timing. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import (  # noqa: E402
    condition_number, count_linear_regions, count_linear_regions_pairwise, empirical_ntk, meta_ntk,
)
from kernels.ntk import DEFAULT_BACKEND, NTK_BACKENDS, select_parameters  # noqa: E402
from kernels.regions import sign_patterns  # noqa: E402
from search_spaces.init import reinitialize  # noqa: E402
from search_spaces.supernet import Supernet, thin_supernet  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Minimum wall seconds over `repeats` runs after one warm-up; returns (seconds, last result)."""
    result = fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def kernel_part(device: torch.device, repeats: int, quick: bool, backends: list[str]) -> dict:
    C, size = (16, 16) if quick else (48, 32)
    gen = torch.Generator().manual_seed(0)
    model = Supernet(C=C, num_classes=5, cells=5, norm="group")
    reinitialize(model, gen)
    model = model.to(device).train()
    x = torch.randn(30, 3, size, size, generator=gen).to(device)
    # 3 tasks: rows 10i..10i+4 query, 10i+5..10i+9 support
    tasks = [(torch.arange(10 * i, 10 * i + 5), torch.arange(10 * i + 5, 10 * i + 10)) for i in range(3)]
    weights = select_parameters(model, "weights")

    def floor() -> None:
        torch.autograd.grad(model(x).sum(), weights)

    def score(backend: str) -> Callable[[], tuple[float, torch.Tensor]]:
        def run() -> tuple[float, torch.Tensor]:
            theta = empirical_ntk(model, x, backend=backend)
            return condition_number(meta_ntk(theta, tasks, inner_time=float("inf"), reg=1e-3)), theta
        return run

    t_floor, _ = best_time(floor, device, repeats)
    rows = []
    thetas: dict[str, torch.Tensor] = {}
    for b in backends:
        t, (cn, theta) = best_time(score(b), device, repeats)
        thetas[b] = theta
        rows.append({"backend": b, "seconds": t, "ratio_to_floor": t / t_floor, "cn": cn})
        print(f"  {b:8s} {t:9.3f} s  {t / t_floor:6.2f}x floor  CN {cn:.6g}", flush=True)
    ref_name = "loop" if "loop" in thetas else backends[0]
    for r in rows:
        th, ref = thetas[r["backend"]], thetas[ref_name]
        r["rel_diff_to_" + ref_name] = float(torch.linalg.norm(th - ref) / torch.linalg.norm(ref))
    return {"C": C, "cells": 5, "image_size": size, "images": 30,
            "parameters": sum(p.numel() for p in model.parameters()),
            "weight_parameters": sum(p.numel() for p in weights),
            "floor_seconds": t_floor, "reference": ref_name, "rows": rows}


def region_part(device: torch.device, repeats: int, quick: bool) -> dict:
    n, batch = (1000, 1000) if quick else (3000, 1000)
    gen = torch.Generator().manual_seed(1)
    model = thin_supernet(in_channels=1, norm="batch")
    reinitialize(model, gen)
    model = model.to(device).train()
    x = torch.randn(n, 1, 3, 3, generator=gen).to(device)

    t_fwd, bits = best_time(lambda: sign_patterns(model, x, batch_size=batch, packed=False), device, repeats)
    t_hash, a = best_time(lambda: count_linear_regions(model, x, batch_size=batch), device, repeats)
    t_pair, b = best_time(lambda: count_linear_regions_pairwise(model, x, batch_size=batch), device, repeats)
    words = sign_patterns(model, x, batch_size=batch, packed=True)
    # counting only, from the same patterns
    t_hash_count, _ = best_time(lambda: torch.unique(words, dim=0).shape[0], device, repeats)

    def pairwise_count() -> float:
        S = bits.to(torch.float64)
        D = S @ (1 - S).T + (1 - S) @ S.T
        return float((1.0 / (D == 0).sum(1).to(torch.float64)).sum())

    t_pair_count, _ = best_time(pairwise_count, device, repeats)
    return {"inputs": n, "batch_size": batch, "relu_units": int(bits.shape[1]),
            "forward_seconds": t_fwd, "hash_seconds": t_hash, "pairwise_seconds": t_pair,
            "ratio": t_pair / t_hash, "hash_count_only_seconds": t_hash_count,
            "pairwise_count_only_seconds": t_pair_count,
            "count_only_ratio": t_pair_count / t_hash_count,
            "hash_count": a, "pairwise_count": b, "agree": a == b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per entry (min taken)")
    parser.add_argument("--quick", action="store_true", help="small setting (C=16, 16x16, 1000 inputs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--backends", default=",".join(NTK_BACKENDS),
                        help=f"comma-separated NTK backends (default all: {','.join(NTK_BACKENDS)})")
    parser.add_argument("--skip-regions", action="store_true", help="only the kernel part")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in NTK_BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; valid: {', '.join(NTK_BACKENDS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device} ({card}), threads {torch.get_num_threads()}, "
          f"default backend {DEFAULT_BACKEND}, repeats {args.repeats}{', quick' if args.quick else ''}, "
          f"load average {load:.2f}")

    print("MetaNTK condition number (MAML, t=inf, c=1e-3), 3 tasks x (5+5) images:", flush=True)
    kern = kernel_part(device, args.repeats, args.quick, backends)
    print(f"\nSupernet C={kern['C']}, {kern['cells']} cells, GroupNorm, {kern['images']} images "
          f"{kern['image_size']}x{kern['image_size']}, {kern['weight_parameters']:,} weight params")
    print(f"compute floor (1 batched forward + backward): {kern['floor_seconds']:.3f} s")
    ref = kern["reference"]
    print(f"{'backend':10s} {'seconds':>9s} {'x floor':>8s} {'rel. diff to ' + ref:>18s}  CN")
    for r in kern["rows"]:
        print(f"{r['backend']:10s} {r['seconds']:9.3f} {r['ratio_to_floor']:8.2f} "
              f"{r['rel_diff_to_' + ref]:18.2e}  {r['cn']:.6g}")
    out = {"torch": torch.__version__, "device": str(device), "card": card,
           "threads": torch.get_num_threads(), "load_average": load, "kernel": kern}
    if not args.skip_regions:
        reg = region_part(device, args.repeats, args.quick)
        out["regions"] = reg
        print(f"\nLinear regions: thin supernet, {reg['inputs']} inputs in batches of "
              f"{reg['batch_size']}, {reg['relu_units']} ReLU units")
        print(f"{'method':22s} {'seconds':>9s} {'count-only s':>13s} {'count':>7s}")
        print(f"{'exact hashing':22s} {reg['hash_seconds']:9.3f} {reg['hash_count_only_seconds']:13.5f} "
              f"{reg['hash_count']:7d}")
        print(f"{'pairwise O(N^2)':22s} {reg['pairwise_seconds']:9.3f} "
              f"{reg['pairwise_count_only_seconds']:13.5f} {reg['pairwise_count']:7d}")
        print(f"forward passes (shared): {reg['forward_seconds']:.3f} s; pairwise / hashing: "
              f"{reg['ratio']:.2f}x end to end, {reg['count_only_ratio']:.0f}x counting only; "
              f"counts agree: {reg['agree']}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
