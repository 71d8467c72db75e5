"""`metantk-nas verify-kernels`: finite-width kernels against the infinite-width theory.

Per width: (a) empirical NTK of a random ReLU MLP vs the analytic NTK, (b) composite
MetaNTK (paper eq. 10-11) vs the MetaNTK by definition (eq. 4, second-order), (c) composite
vs analytic MetaNTK. Exit status 1 when (a) or (b) does not shrink with width.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `verify-kernels` command."""
    parser = subparsers.add_parser(
        "verify-kernels",
        help="check empirical NTK / MetaNTK against analytic and second-order kernels per width",
        description="For each width, draw random fully connected ReLU networks (NTK "
        "parameterisation) and print the relative Frobenius errors of (a) the empirical NTK "
        "vs the analytic infinite-width NTK, (b) the composite MetaNTK (eq. 10-11 from the "
        "empirical NTK, discrete inner loop) vs the MetaNTK by definition (Jacobian through "
        "the inner gradient steps, second-order terms included), (c) composite vs analytic "
        "MetaNTK. Errors are means over --repeats networks. Exit status 1 if (a) or (b) is "
        "not smaller at the largest width than at the smallest.",
    )
    parser.add_argument("--widths", default="256,1024,4096", metavar="W1,W2,...",
                        help="increasing hidden widths (default 256,1024,4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights (default 0)")
    parser.add_argument("--depth", type=int, default=1,
                        help="hidden ReLU layers (default 1; the second-order Jacobian has "
                        "width^2 columns per extra layer, so keep widths small for depth > 1)")
    parser.add_argument("--repeats", type=int, default=3, help="random networks per width (default 3)")
    parser.add_argument("--inner-steps", type=int, default=2, help="MAML inner gradient steps (default 2)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="also write kernels.csv, kernels.md, kernel_errors.png here")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (default: a bar on a terminal, a line every 10 s otherwise)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: faster for these small matrices)")
    parser.set_defaults(func=cmd_verify_kernels)


def cmd_verify_kernels(args: argparse.Namespace) -> int:
    """Print the error table; 0 when errors (a) and (b) shrink with width, else 1."""
    from harness.theory_report import kernel_report, write_kernel_outputs
    from trainers import theory

    config = theory.KernelCheckConfig(widths=theory.parse_widths(args.widths), seed=args.seed, depth=args.depth,
                                      repeats=args.repeats, inner_steps=args.inner_steps)
    with theory.torch_threads(args.threads):
        result = theory.check_kernels(config, progress=not args.no_progress)
    print(kernel_report(result))
    if args.out is not None:
        for path in write_kernel_outputs(result, args.out):
            print(f"wrote {path}")
    return 0 if result.ok else 1
