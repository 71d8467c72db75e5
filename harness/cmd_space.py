"""`metantk-nas genotypes` (list named cells) and `metantk-nas render` (draw a genotype's cells)."""
from __future__ import annotations

import argparse
import sys

DEFAULT_RENDER_DIR = "results/cells"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "genotypes",
        help="list the named genotypes (published MetaNAS cells and baselines)",
        description="List the named genotypes of the registry: name and genotype string, "
        "or JSON with --json. Any name can be passed to `render` or used in an experiment.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object {name: genotype}")
    p.set_defaults(func=cmd_genotypes)

    r = subparsers.add_parser(
        "render",
        help="draw the normal and reduction cells of a genotype with graphviz",
        description="Write <name>_normal and <name>_reduce diagrams (SVG, PNG or PDF). Needs "
        "graphviz's `dot` executable; without it the DOT sources (.gv) are written and a "
        "warning says how to install it (exit status 0).",
    )
    r.add_argument("genotype", metavar="GENOTYPE",
                   help="a registry name (see `metantk-nas genotypes`), a genotype string "
                        "\"Genotype(normal=[[('op', 0), ...], ...], ...)\", or a JSON file")
    r.add_argument("--out", default=DEFAULT_RENDER_DIR, help=f"output folder (default: {DEFAULT_RENDER_DIR})")
    r.add_argument("--format", choices=("svg", "png", "pdf", "both"), default="both",
                   help="image format: svg, png, pdf, or both = svg and png (default: both)")
    r.add_argument("--name", default=None,
                   help="file stem (default: the registry name or the JSON file's stem, else 'genotype')")
    r.set_defaults(func=cmd_render)


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


def _default_name(spec: str) -> str:
    from pathlib import Path

    from search_spaces.genotypes import GENOTYPES

    text = spec.strip()
    if text in GENOTYPES:
        return text
    path = Path(text).expanduser()
    if not text.startswith(("Genotype(", "{")) and path.is_file():
        return path.stem
    return "genotype"


def cmd_render(args: argparse.Namespace) -> int:
    from search_spaces.genotypes import resolve_genotype
    from search_spaces.render import DotNotFoundError, render_genotype

    genotype = resolve_genotype(args.genotype)
    name = args.name or _default_name(args.genotype)
    formats = ("svg", "png") if args.format == "both" else (args.format,)
    try:
        paths = render_genotype(genotype, args.out, name, formats)
    except DotNotFoundError as exc:
        for path in exc.written:
            print(path)
        print(f"metantk-nas render: warning: {exc}", file=sys.stderr)
        return 0
    for path in paths:
        print(path)
    return 0
