"""`metantk-nas report RESULTS_DIR`: print and write the result tables from the Parquet files."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` command."""
    parser = subparsers.add_parser(
        "report",
        help="print and write Table 1 / Table 2 / proxy correlations, figures and an HTML page",
        description="Read the Parquet tables (candidates, searches, trials, episodes, proxies) "
        "of one results folder and print Markdown tables: Table 1 (method x cells: params, "
        "search cost, 1-shot and 5-shot mean ± 95% CI over seeds), the Table-2 ablation "
        "(difference to the random method) and, when the proxy study was run, the rank "
        "correlation of each training-free proxy (and of the parameter count, as a baseline) "
        "with accuracy and the paired bootstrap comparison of the proxies. Unless --no-write, report.md, "
        "the CSVs, the figures (figures/*.svg and *.png: per-seed strips, search trajectories, "
        "training curves, proxy scatter, cells side by side) and index.html (one page that opens "
        "from the folder with no server) are written atomically to RESULTS_DIR/report/ (or --out).",
    )
    parser.add_argument("results_dir", type=Path, metavar="RESULTS_DIR",
                        help="folder written by `metantk-nas run`, e.g. results/smoke")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write report.md and the CSVs (default RESULTS_DIR/report)")
    parser.add_argument("--no-write", action="store_true",
                        help="only print the tables, write nothing")
    parser.add_argument("--no-figures", action="store_true",
                        help="write the tables only (no figures, no index.html)")
    parser.add_argument("--n-boot", type=int, default=None, metavar="B",
                        help="bootstrap resamples for the correlation intervals (default: [study] "
                        "n_boot of RESULTS_DIR/config.toml, else 1000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap resampling (default 0)")
    parser.set_defaults(func=cmd_report)


def default_n_boot(results_dir: Path) -> int:
    """The `[study] n_boot` the run used (from the resolved config beside the results), else 1000.

    So `report` reproduces the intervals that `run` printed without repeating the setting.
    """
    import tomllib

    path = results_dir / "config.toml"
    try:
        return int(tomllib.loads(path.read_text()).get("study", {}).get("n_boot", 1000))
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError):
        return 1000


def cmd_report(args: argparse.Namespace) -> int:
    """Print the Markdown report and, unless --no-write, the paths written."""
    from harness.pipeline import build_report, write_report

    if args.n_boot is None:
        args.n_boot = default_n_boot(args.results_dir)

    if args.no_write:
        print(build_report(args.results_dir, n_boot=args.n_boot, seed=args.seed).markdown)
        return 0
    files = write_report(args.results_dir, args.out, n_boot=args.n_boot, seed=args.seed,
                         figures=not args.no_figures)
    print(files.markdown)
    print("Written:")
    for line in files.summary():
        print(f"  {line}")
    return 0
