"""Seconds per architecture of every proxy of kernels.proxies.

The study's setting: the kernel supernet of an experiment restricted to a sampled genotype
(`search_spaces.supernet.genotype_masks`), its kernel task batch and region inputs, scored
through `harness.scoring.Scorer` exactly as the study does ("proxy:<name>" measures). Per
proxy: the minimum over `--repeats` genotypes of its own timed seconds (after one warm-up).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_proxies.py experiments/proxies_omniglot.toml \
        --root ../shared/data/omniglot [--device cpu|cuda] [--repeats 3] [--threads 1] \
        [--cells 5 --channels 48]   # the GPU-scale network
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from harness.config import load_config
from harness.scoring import Scorer, generator, masks_array, spec_from_config
from kernels.proxy_names import PROXY_NAMES
from search_spaces.genotypes import sample_genotype
from search_spaces.supernet import genotype_masks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cells", type=int, default=0, help="override the cell count (0: the experiment's)")
    p.add_argument("--channels", type=int, default=0, help="override init_channels (0: the experiment's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.experiment, {"dataset": {"root": args.root}})
    cells = args.cells or cfg.search.cells[0]
    spec = spec_from_config(cfg, cells)
    if args.channels:
        spec = dataclasses.replace(spec, network=dataclasses.replace(spec.network, init_channels=args.channels))
    scorer = Scorer(spec, torch.device(args.device))
    measures = tuple(f"proxy:{n}" for n in PROXY_NAMES)
    seconds: dict[str, list[float]] = {m: [] for m in measures}
    for r in range(args.repeats + 1):  # the first is a warm-up
        masks = masks_array(genotype_masks(sample_genotype(generator("bench", r))))
        score = scorer.score(masks, ("bench", r), measures)
        if r:
            for m in measures:
                seconds[m].append(score.proxy_seconds[m])
    print(f"# {args.experiment}: {cells} cells, C = {spec.network.init_channels}, "
          f"{spec.kernel.tasks * spec.kernel.ways * (spec.kernel.shots + spec.kernel.queries)}"
          f" images at {spec.kernel.kernel_image_size}px, {args.device}, {args.threads} thread(s), "
          f"min of {args.repeats} genotypes ({time.strftime('%Y-%m-%d %H:%M')})")
    print("| proxy | seconds |\n|---|---|")
    for m in measures:
        print(f"| {m[len('proxy:'):]} | {np.min(seconds[m]):.3f} |")


if __name__ == "__main__":
    main()
