"""`metantk-nas render GENOTYPE`: draw a genotype's normal and reduction cells with graphviz."""
from __future__ import annotations

import argparse
import sys

DEFAULT_RENDER_DIR = "results/cells"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="draw the normal and reduction cells of a genotype with graphviz",
        description="Write <name>_normal and <name>_reduce diagrams (SVG, PNG or PDF). Needs "
        "graphviz's `dot` executable; without it the DOT sources (.gv) are written and a "
        "warning says how to install it (exit status 0).",
    )
    p.add_argument("genotype", metavar="GENOTYPE",
                   help="a registry name (see `metantk-nas genotypes`), a genotype string "
                        "\"Genotype(normal=[[('op', 0), ...], ...], ...)\", or a JSON file")
    p.add_argument("--out", default=DEFAULT_RENDER_DIR, help=f"output folder (default: {DEFAULT_RENDER_DIR})")
    p.add_argument("--format", choices=("svg", "png", "pdf", "both"), default="both",
                   help="image format: svg, png, pdf, or both = svg and png (default: both)")
    p.add_argument("--name", default=None,
                   help="file stem (default: the registry name or the JSON file's stem, else 'genotype')")
    p.set_defaults(func=cmd_render)


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
