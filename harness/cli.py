"""The `metantk-nas` command line.

Each subcommand lives in its own `harness.cmd_*` module that exposes
`register(subparsers) -> None`; the parser it adds sets `func=cmd_<command>(args) -> int`,
which parses its arguments and calls `harness.pipeline` (or a library function). The flags
shared by the commands that run an experiment are here (`add_common_experiment_args`,
`load_experiment`).
`main` turns the library's expected failures (bad input: `UserError` and friends) into one
clear line on stderr and exit status 2, never a bare traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from harness.errors import UserError

# The library rooms signal bad input with these (messages name the problem and the fix).
INPUT_ERRORS = (UserError, ValueError, KeyError, FileNotFoundError, NotADirectoryError)

# Order = order in `--help`. Modules are imported when the parser is built; they keep heavy
# imports (torch, ray) inside their command functions so `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "harness.cmd_genotypes",  # genotypes
    "harness.cmd_render",     # render
    "harness.cmd_data",      # data inspect
    "harness.cmd_kernels",   # verify-kernels
    "harness.cmd_search",    # search
    "harness.cmd_run",       # run, train, evaluate
    "harness.cmd_report",    # report
    "harness.cmd_theory",    # verify-theory
)


DEBUG_HELP = "show full tracebacks on errors (accepted before or after the subcommand)"


def add_common_experiment_args(p: argparse.ArgumentParser) -> None:
    """The flags of the commands that run an experiment file (search, run, train)."""
    p.add_argument("experiment", help="experiment TOML file (see experiments/)")
    p.add_argument("--workers", type=int, default=None, help="scorer actors (default: one per GPU, else per CPU)")
    p.add_argument("--address", default=None,
                   help="Ray address: 'auto' attaches to a running cluster (default: start a local Ray; "
                        "RAY_ADDRESS is honoured)")
    p.add_argument("--storage", default=None,
                   help="Tune's storage for trial checkpoints (default: RESULTS_DIR/tune; on a multi-node cluster "
                        "a folder every node mounts, or a URI such as s3://bucket/path)")
    p.add_argument("--out", default=None, help="results root (default: [experiment] out, usually results/)")
    p.add_argument("--root", default=None, help="dataset root folder (overrides [dataset] root)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one key of the experiment file, typed and validated like the file "
                        "(repeatable; applied last; recorded in RESULTS_DIR/config.toml), e.g. "
                        "--set search.init_channels=8 --set evaluate.episodes=20")
    p.add_argument("--fresh", action="store_true",
                   help="start over: move the folder's old results and state into RESULTS_DIR/previous/<time>/ "
                        "(nothing is deleted)")


def load_experiment(args: argparse.Namespace) -> Any:
    """The validated `ExperimentConfig` of `add_common_experiment_args`' flags."""
    from harness.config import load_config

    overrides = {
        "experiment": {"out": args.out},
        "dataset": {"root": args.root},
        "resources": {"workers": args.workers, "address": args.address, "num_cpus": args.num_cpus,
                      "storage": args.storage},
    }
    return load_config(args.experiment, overrides, sets=args.sets)


def package_version() -> str:
    """The installed distribution's version, else the one in pyproject.toml (a plain checkout)."""
    from importlib import metadata

    try:
        return metadata.version("metantk-nas")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser` (subcommands, and their subcommands), depth first."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found += [child, *_subparsers(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metantk-nas",
        description="MetaNTK-NAS: training-free architecture search for few-shot learning, "
        "run as a Ray Tune benchmark harness.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # `--debug` after the subcommand too: SUPPRESS keeps a subcommand from resetting a
    # `--debug` given before it.
    for child in _subparsers(parser):
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except INPUT_ERRORS as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"metantk-nas {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metantk-nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
