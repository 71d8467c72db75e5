"""Compare the Parquet tables of two results folders: did any number move?

    python benchmarks/compare_results.py RESULTS_A RESULTS_B [--tables trials,searches] [--rtol 0]

Per table present in either folder: rows in each, the columns compared (both folders' columns
minus timing and provenance ones: seconds, device kinds, git SHA, the trial's config JSON,
worker labels), how many rows matched by the table's key, the largest absolute difference of
the numeric columns, and whether every compared value is identical (NaN equals NaN, +inf
equals +inf; strings and integers exactly). Exit status 0 when every table is identical,
1 otherwise. Reads through `harness.store`, so each file is checked against its schema.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import store  # noqa: E402

# Columns that measure the run, not its results (wall and device time, which machine, which code).
IGNORED = {"seconds", "wall_seconds", "device_seconds", "search_seconds", "train_seconds", "device_kind",
           "git_sha", "config_json", "worker", "workers", "schema_version"}
# How the rows of a table are matched between the two folders.
KEYS: dict[str, tuple[str, ...]] = {
    "candidates": ("search_id", "round", "cell_type", "edge", "op"),
    "searches": ("search_id",),
    "trials": ("trial_id",),
    "episodes": ("trial_id", "shots", "episode"),
    "proxies": ("genotype_id",),
    "proxy_scores": ("genotype_id", "proxy", "repeat"),
    "history": ("trial_id", "epoch"),
}


def _read(folder: Path, table: str) -> pd.DataFrame:
    return store.read_table(folder, table) if store.table_files(folder, table) else pd.DataFrame()


def _same(a: pd.Series, b: pd.Series) -> tuple[bool, float]:
    """(identical, max |a - b| over the finite pairs; 0.0 for non-numeric columns)."""
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b) and not (
            pd.api.types.is_bool_dtype(a) or pd.api.types.is_bool_dtype(b)):
        x, y = a.to_numpy(np.float64), b.to_numpy(np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        equal = (x == y) | both_nan
        finite = np.isfinite(x) & np.isfinite(y)
        diff = float(np.max(np.abs(x[finite] - y[finite]))) if finite.any() else 0.0
        return bool(equal.all()), diff
    return bool((a.astype(str).to_numpy() == b.astype(str).to_numpy()).all()), 0.0


def compare_table(a: pd.DataFrame, b: pd.DataFrame, table: str) -> dict:
    """One table's comparison (see the module doc)."""
    out = {"table": table, "rows_a": len(a), "rows_b": len(b)}
    columns = sorted((set(a.columns) & set(b.columns)) - IGNORED)
    key = [k for k in KEYS.get(table, ()) if k in columns]
    out["columns"] = columns
    only = sorted((set(a.columns) ^ set(b.columns)) - IGNORED)
    if a.empty and b.empty:
        return out | {"matched": 0, "max_abs_diff": 0.0, "identical": True, "differs": [], "only_one": only}
    if not key or a.duplicated(key).any() or b.duplicated(key).any():
        return out | {"matched": 0, "max_abs_diff": math.nan, "identical": False,
                      "differs": [f"rows cannot be matched by {key}"], "only_one": only}
    merged = a[columns].merge(b[columns], on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = merged[merged["_merge"] == "both"]
    differs, worst = [], 0.0
    for column in (c for c in columns if c not in key):
        same, diff = _same(matched[f"{column}_a"], matched[f"{column}_b"])
        worst = max(worst, diff)
        if not same:
            differs.append(f"{column} (max |diff| {diff:.3g})")
    unmatched = int((merged["_merge"] != "both").sum())
    if unmatched:
        differs.append(f"{unmatched} row(s) in one folder only")
    return out | {"matched": len(matched), "max_abs_diff": worst, "identical": not differs and not only,
                  "differs": differs, "only_one": only}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="results folder (before)")
    parser.add_argument("b", type=Path, help="results folder (after)")
    parser.add_argument("--tables", default=",".join(store.TABLES), help="tables to compare (default: all)")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not folder.is_dir():
            parser.error(f"{folder} is not a results folder")
    ok = True
    print(f"A = {args.a}\nB = {args.b}\nignored columns: {', '.join(sorted(IGNORED))}\n")
    print(f"{'table':<13} {'rows A':>7} {'rows B':>7} {'matched':>7} {'cols':>4} {'max |diff|':>11}  identical")
    for table in args.tables.split(","):
        r = compare_table(_read(args.a, table), _read(args.b, table), table)
        ok &= r["identical"]
        print(f"{table:<13} {r['rows_a']:>7} {r['rows_b']:>7} {r['matched']:>7} {len(r['columns']):>4} "
              f"{r['max_abs_diff']:>11.3g}  {'yes' if r['identical'] else 'NO'}")
        for line in r["differs"] + [f"column only in one folder: {c}" for c in r["only_one"]]:
            print(f"    {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
