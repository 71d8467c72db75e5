"""GroupNorm group rule of the kernel supernet: do the NTK backends agree at small C?

    .venv/bin/python benchmarks/bench_groupnorm.py [--channels 4,8,16] [--draws 4] [--size 32] [--no-lastact]

The reference converts every BatchNorm of its kernel network to GroupNorm(min(16, C), C). At
small C that is one channel per group; without the final norm + ReLU (`lastact`) the pooled
features were then exactly 0 and the kernel rounding noise, which is why this harness capped
the groups at C // 2. With `lastact` (issue 10) the question is whether the reference rule
is numerically sound. For each C, each rule ("reference": largest divisor of C <= min(16, C),
the current `group_count`; "cap_half": largest divisor <= min(16, C // 2), the old one) and
each weight draw: a 3-cell kernel supernet (all ops, train mode, GroupNorm, lastact) on 30
random images; the NTK (sum of logits, weights) from every backend in float32 against a
float64 evaluation ("loop" backend on a float64 copy). Prints the worst relative Frobenius
error of the kernel and the worst relative error of its condition number. `--no-lastact`
builds the supernets without the final norm + ReLU (the former network). Asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces.ops as ops  # noqa: E402
from kernels import condition_number, empirical_ntk  # noqa: E402
from search_spaces.init import reinitialize  # noqa: E402
from search_spaces.supernet import Supernet  # noqa: E402


def cap_half(C: int, max_groups: int = ops.MAX_GROUPS) -> int:
    """The former rule: at least 2 channels per group."""
    return max(g for g in range(1, max(1, min(max_groups, C // 2)) + 1) if C % g == 0)


RULES = {"reference": ops.group_count, "cap_half": cap_half}
BACKENDS = ("hooks", "func", "opacus", "loop")


def measure(C: int, rule: str, draws: int, size: int, lastact: bool) -> tuple[float, float]:
    """(max relative NTK error, max relative CN error) over draws and backends."""
    k_err = cn_err = 0.0
    with mock.patch.object(ops, "group_count", RULES[rule]):
        for draw in range(draws):
            net = Supernet(C, 5, 3, norm="group", lastact=lastact).train()
            reinitialize(net, torch.Generator().manual_seed(draw))
            x = torch.randn(30, 3, size, size, generator=torch.Generator().manual_seed(100 + draw))
            exact = empirical_ntk(net.double(), x.double(), backend="loop")
            cn_exact = condition_number(exact)
            net.float()
            for backend in BACKENDS:
                K = empirical_ntk(net, x, backend=backend)
                k_err = max(k_err, float((K - exact).norm() / exact.norm()))
                cn_err = max(cn_err, abs(condition_number(K) - cn_exact) / cn_exact)
    return k_err, cn_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="4,8,16")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lastact", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'C':>3} {'rule':>10} {'max rel NTK err':>16} {'max rel CN err':>15}")
    for C in (int(c) for c in args.channels.split(",")):
        for rule in RULES:
            k_err, cn_err = measure(C, rule, args.draws, args.size, args.lastact)
            print(f"{C:>3} {rule:>10} {k_err:>16.1e} {cn_err:>15.1e}", flush=True)


if __name__ == "__main__":
    main()
