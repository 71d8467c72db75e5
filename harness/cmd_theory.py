"""`metantk-nas verify-theory`: MAML on wide ReLU networks against Theorems 1 and 2.

Per width: full-batch second-order MAML on synthetic sinusoid regression tasks; training
loss per outer step (Theorem 1: linear convergence) and trained meta-outputs on new tasks
vs the kernel-regression prediction of eq. 12 (Theorem 2). Writes CSV, Markdown and PNG
plots; exit status 1 when the prediction error does not shrink with width.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `verify-theory` command."""
    parser = subparsers.add_parser(
        "verify-theory",
        help="train MAML per width; compare loss and meta-outputs with the MetaNTK theory",
        description="For each width, train fully connected ReLU networks (NTK "
        "parameterisation) with full-batch second-order MAML (square loss) on synthetic "
        "sinusoid regression tasks. Reports the training loss per outer step against its "
        "MetaNTK prediction (Theorem 1: linear convergence) and the relative error between "
        "the trained meta-outputs on new tasks and the kernel-regression prediction of "
        "eq. 12 (Theorem 2) with the analytic MetaNTK. Writes theory.csv, theory.md, "
        "losses.csv, predictions.csv, loss.png, prediction_error.png, prediction_scatter.png "
        "to --out. Exit status 1 if the prediction error is not smaller at the largest width "
        "than at the smallest.",
    )
    parser.add_argument("--widths", default=None, metavar="W1,W2,...",
                        help="increasing hidden widths (default 256,1024,4096; 64,512 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of tasks and weights (default 0)")
    parser.add_argument("--depth", type=int, default=1, help="hidden ReLU layers (default 1)")
    parser.add_argument("--steps", type=int, default=None, metavar="T",
                        help="outer MAML steps (default 80; 20 with --quick)")
    parser.add_argument("--inner-steps", type=int, default=1, help="inner gradient steps (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="random networks per width (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for tests: widths 64,512 unless given, 20 steps, 1 repeat, "
                        "3 training tasks")
    parser.add_argument("--out", type=Path, default=Path("results/theory"), metavar="DIR",
                        help="output folder (default results/theory)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (default: a bar on a terminal, a line every 10 s otherwise)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: faster for these small matrices)")
    parser.set_defaults(func=cmd_verify_theory)


def cmd_verify_theory(args: argparse.Namespace) -> int:
    """Print the table and the files written; 0 when the Theorem-2 error shrinks, else 1."""
    from harness.theory_report import theory_report, write_theory_outputs
    from trainers import theory

    quick = args.quick
    widths_text = args.widths or ("64,512" if quick else "256,1024,4096")
    options: dict = dict(widths=theory.parse_widths(widths_text), seed=args.seed, depth=args.depth,
                         inner_steps=args.inner_steps,
                         outer_steps=args.steps if args.steps is not None else (20 if quick else 80),
                         repeats=args.repeats if args.repeats is not None else (1 if quick else 3))
    if quick:
        options.update(n_train_tasks=3, n_test_tasks=2)
    config = theory.TheoryConfig(**options)
    with theory.torch_threads(args.threads):
        result = theory.check_theory(config, progress=not args.no_progress)
    print(theory_report(result))
    for path in write_theory_outputs(result, args.out):
        print(f"wrote {path}")
    return 0 if result.ok else 1
