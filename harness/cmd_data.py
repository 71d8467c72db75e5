"""`metantk-nas data list | inspect`: which datasets exist and what a copy on disk holds.

`data inspect --dataset NAME --root DIR` loads every split through `trainers.data` and
prints classes, images, image shape, dtype and images per class (or JSON with --json). A
missing or malformed copy is a `DatasetError` that `harness.cli.main` prints as one line
(exit status 2).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

_INSPECT_EPILOG = """\
examples:
  metantk-nas data inspect --dataset synthetic
  metantk-nas data inspect --dataset omniglot --root ../shared/data/omniglot
  metantk-nas data inspect --dataset omniglot --root DIR --option rotations=true --seed 1
  metantk-nas data inspect --dataset mini_imagenet --root DIR --json

options per dataset (KEY=VALUE, values parsed as JSON when possible):
  synthetic:       train_classes, val_classes, test_classes, images_per_class, channels,
                   noise, max_shift
  omniglot:        fractions=0.6,0.2,0.2  rotations=false  invert=false
  mini_imagenet,
  tiered_imagenet: unsafe_pickle=false (allow arbitrary pickles; trusted files only)
"""


def register(subparsers: Any) -> None:
    data = subparsers.add_parser(
        "data", help="list datasets, inspect a dataset copy",
        description="Datasets: list the registered ones, or inspect a copy on disk.")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    lister = sub.add_parser("list", help="registered datasets with one-line descriptions",
                            description="List the registered datasets.")
    lister.set_defaults(func=cmd_data_list)

    inspect = sub.add_parser(
        "inspect", help="classes and images per split, image shape, dtype",
        description="Load every split of a dataset and summarise it; errors name the file "
                    "and the expected layout.",
        epilog=_INSPECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("--dataset", required=True, metavar="NAME",
                         help="registered dataset name (see `metantk-nas data list`)")
    inspect.add_argument("--root", default=None, metavar="DIR",
                         help="dataset folder (not needed for synthetic)")
    inspect.add_argument("--seed", type=int, default=0,
                         help="class-split / generation seed (default 0)")
    inspect.add_argument("--image-size", type=int, default=None, metavar="S",
                         help="resize images to S x S (default: the dataset's native size)")
    inspect.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="dataset-specific option, repeatable (see below)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=cmd_data_inspect)


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value); value parsed as JSON, a comma list, or kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option {text!r}: expected KEY=VALUE, e.g. rotations=true")

    def scalar(s: str) -> Any:
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return s

    raw = raw.strip()
    if "," in raw and not raw.startswith(("[", "{", '"')):
        return key.strip(), [scalar(part.strip()) for part in raw.split(",")]
    return key.strip(), scalar(raw)


def cmd_data_list(args: argparse.Namespace) -> int:
    from trainers.data import DATASETS

    width = max(len(name) for name in DATASETS)
    for name, spec in DATASETS.items():
        print(f"{name:<{width}}  {spec.description}")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """Readable table of `trainers.data.inspect_dataset` output."""
    lines = [f"{summary['dataset']}: {summary['description']}"]
    if summary["root"] is not None:
        lines.append(f"root: {summary['root']}")
    if summary["options"]:
        lines.append("options: " + ", ".join(f"{k}={v}" for k, v in summary["options"].items()))
    header = ("split", "classes", "images", "image shape", "dtype", "images/class")
    rows = []
    for split, info in summary["splits"].items():
        lo, hi = info["min_images_per_class"], info["max_images_per_class"]
        rows.append((split, str(info["classes"]), str(info["images"]),
                     "x".join(map(str, info["image_shape"])), info["dtype"],
                     str(lo) if lo == hi else f"{lo}-{hi}"))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = (False, True, True, False, False, True)
    for row in (header, *rows):
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from trainers.data import inspect_dataset

    options = dict(parse_option(text) for text in args.option)
    for reserved in ("seed", "image_size"):
        if reserved in options:
            raise ValueError(f"--option {reserved}=...: use --{reserved.replace('_', '-')} instead")
    if args.image_size is not None:
        options["image_size"] = args.image_size
    summary = inspect_dataset(args.dataset, args.root, seed=args.seed, **options)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0
