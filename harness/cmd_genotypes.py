"""`metantk-nas genotypes`: list the named cells of the genotype registry."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "genotypes",
        help="list the named genotypes (published MetaNAS cells and baselines)",
        description="List the named genotypes of the registry: name and genotype string, "
        "or JSON with --json. Any name can be passed to `render` or used in an experiment.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object {name: genotype}")
    p.set_defaults(func=cmd_genotypes)


def cmd_genotypes(args: argparse.Namespace) -> int:
    import json

    from search_spaces.genotypes import GENOTYPES

    if args.json:
        print(json.dumps({name: g.to_dict() for name, g in GENOTYPES.items()}, indent=2))
        return 0
    width = max(len(name) for name in GENOTYPES)
    for name, g in GENOTYPES.items():
        print(f"{name:<{width}}  {g.to_str()}")
    return 0
