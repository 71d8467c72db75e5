"""The Parquet result store: pinned schemas, atomic idempotent writes, strict reads.

Every table lives in `RESULTS_DIR/<table>/<key>.parquet` (design section 7). A writer
chooses a key that is deterministic per unit of work (one search round, one finished
search, one trial, ...), so a retried task rewrites the same file instead of adding a
duplicate: Ray may run an epoch or a scoring task twice after a restart. Files are written
to a temporary name in the same folder, fsynced and renamed, so a reader never sees half a
file and a crash mid-write leaves the previous version intact.

Schemas are pinned: writers are checked column by column (names, Python types, nulls,
accuracy ranges) and readers refuse any file whose columns or `schema_version` differ,
naming the file and the column. Conventions of the stored values:

- accuracies (`acc_*`, `accuracy`, `final_train_acc`, `train_acc`) are fractions in [0, 1]; `ci_*` are
  half-widths of 95% intervals in the same unit;
- the few-shot accuracy of `trials` and `proxies` is one pair of columns per evaluated shot
  count, `acc_<K>shot`, `ci_<K>shot` (`accuracy_columns`, from `[evaluate] shots`; the default
  shots 1 and 5 give `acc_1shot`, `ci_1shot`, `acc_5shot`, `ci_5shot`); a reader takes the
  shot counts from the file;
- a missing float is NaN, a missing string is "" (no nulls anywhere, so pandas dtypes are
  stable); condition numbers may be +inf (an explicit value, never a sentinel).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# The one atomic writer of the project (library room: the trainers use it too).
from trainers.atomic import current_umask, write_atomic  # noqa: F401  (re-exported)

SCHEMA_VERSION = 1

_STR, _I32, _I64, _F64, _BOOL = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()


# Shot counts of the few-shot evaluation when a config does not say (`[evaluate] shots`).
DEFAULT_SHOTS: tuple[int, ...] = (1, 5)
_ACCURACY_RE = re.compile(r"^acc_([1-9][0-9]*)shot$")
_INTERVAL_RE = re.compile(r"^ci_([1-9][0-9]*)shot$")
# Stands, in a table's field list, for the accuracy columns of the evaluated shot counts.
_ACCURACY_BLOCK = ("<accuracy per shot count>", None)


def accuracy_column(shots: int) -> str:
    """Mean few-shot accuracy of `shots`-shot episodes: `acc_<shots>shot`."""
    return f"acc_{int(shots)}shot"


def interval_column(shots: int) -> str:
    """Half-width of the 95% interval of `accuracy_column(shots)`: `ci_<shots>shot`."""
    return f"ci_{int(shots)}shot"


def normalized_shots(shots: Sequence[int]) -> tuple[int, ...]:
    """Shot counts in storage order: distinct, ascending."""
    return tuple(sorted({int(k) for k in shots}))


def accuracy_columns(shots: Sequence[int] = DEFAULT_SHOTS) -> list[str]:
    """The accuracy columns of `shots` (ascending): [acc_1shot, ci_1shot, acc_5shot, ci_5shot]
    for the default (1, 5). The one place the column names are made."""
    return [c for k in normalized_shots(shots) for c in (accuracy_column(k), interval_column(k))]


def shots_of(columns: Iterable[str]) -> tuple[int, ...]:
    """The shot counts with an accuracy or interval column among `columns` (ascending; one of
    the pair is enough, so a missing half is reported as missing)."""
    return normalized_shots(int(m.group(1)) for c in columns
                            if (m := _ACCURACY_RE.match(c) or _INTERVAL_RE.match(c)))


def shots_in(frame: pd.DataFrame) -> tuple[int, ...]:
    """The shot counts whose accuracy columns `frame` holds (`shots_of`); the default shots
    when it holds none (so a missing column is reported against them)."""
    return shots_of(frame.columns) or DEFAULT_SHOTS


def accuracy_targets(frame: pd.DataFrame) -> tuple[str, ...]:
    """The accuracy columns a table's proxies are correlated with: `acc_<K>shot` of each shot
    count of `frame`."""
    return tuple(accuracy_column(k) for k in shots_in(frame))


def _schema(*fields: tuple[str, pa.DataType | None]) -> tuple[tuple[str, pa.DataType | None], ...]:
    """A table's field list (`table_schema` makes the Arrow schema)."""
    return fields


# Columns shared by the per-unit tables: which experiment / search a row belongs to.
_RUN_KEYS = (("experiment", _STR), ("dataset", _STR), ("method", _STR), ("seed", _I64),
             ("cells", _I32))

_FIELDS: dict[str, tuple[tuple[str, pa.DataType | None], ...]] = {
    # One row per scored candidate (op masked on an edge) per round, repeat-averaged.
    "candidates": _schema(
        *_RUN_KEYS,
        ("search_id", _STR), ("round", _I32), ("cell_type", _STR), ("edge", _I32),
        ("op", _STR), ("repeats", _I32),
        ("cn_origin", _F64), ("cn_pruned", _F64), ("rn_origin", _F64), ("rn_pruned", _F64),
        ("delta_cn", _F64), ("delta_rn", _F64), ("rank_cn", _I32), ("rank_rn", _I32),
        ("importance", _I32), ("pruned", _BOOL), ("worker", _STR), ("seconds", _F64),
    ),
    # One row per finished search.
    "searches": _schema(
        *_RUN_KEYS,
        ("search_id", _STR), ("genotype", _STR), ("rounds", _I32), ("candidates", _I64),
        ("wall_seconds", _F64), ("device_seconds", _F64), ("workers", _I32),
        ("device_kind", _STR), ("params", _I64), ("git_sha", _STR),
        # The MetaNTK settings the search ran with ("" / NaN when it scored no MetaNTK; "ntk"
        # for the plain NTK of tenas).
        ("algorithm", _STR), ("inner_time", _F64), ("reg", _F64),
    ),
    # One row per trained and evaluated architecture (a Ray Tune trial).
    "trials": _schema(
        *_RUN_KEYS,
        ("trial_id", _STR), ("search_id", _STR), ("genotype", _STR), ("params", _I64),
        ("search_seconds", _F64), ("train_seconds", _F64), ("epochs", _I32),
        ("final_loss", _F64), ("final_train_acc", _F64), ("ways", _I32), ("episodes", _I32),
        _ACCURACY_BLOCK,
        ("device_kind", _STR), ("git_sha", _STR), ("config_json", _STR),
    ),
    # One row per evaluated few-shot episode.
    "episodes": _schema(
        ("experiment", _STR), ("trial_id", _STR), ("dataset", _STR), ("method", _STR),
        ("seed", _I64), ("cells", _I32), ("ways", _I32), ("shots", _I32), ("queries", _I32),
        ("episode", _I32), ("accuracy", _F64),
    ),
    # One row per sampled genotype of the proxy-quality study.
    "proxies": _schema(
        ("experiment", _STR), ("dataset", _STR), ("genotype_id", _STR), ("genotype", _STR),
        ("seed", _I64), ("cells", _I32),
        ("cn_metantk_maml", _F64), ("cn_metantk_anil", _F64), ("cn_ntk", _F64),
        ("regions", _F64), ("params", _I64),
        _ACCURACY_BLOCK,
        ("train_seconds", _F64),
    ),
    # Every proxy value of the study, one row per (genotype, proxy, repeat).
    "proxy_scores": _schema(
        ("experiment", _STR), ("dataset", _STR), ("genotype_id", _STR), ("genotype", _STR), ("cells", _I32),
        ("proxy", _STR), ("repeat", _I32), ("value", _F64), ("seconds", _F64),
    ),
    # One row per trial and training epoch (the training curve); `epoch` counts from 1,
    # `train_acc` is the epoch's mean training accuracy, `lr` the rate the epoch ran with.
    "history": _schema(
        ("experiment", _STR), ("trial_id", _STR), ("dataset", _STR), ("method", _STR),
        ("seed", _I64), ("cells", _I32), ("epoch", _I32), ("loss", _F64), ("train_acc", _F64),
        ("lr", _F64), ("seconds", _F64),
    ),
}



def _check_table(table: str) -> str:
    if table not in _FIELDS:
        raise KeyError(f"unknown results table {table!r}; valid tables: {', '.join(TABLES)}")
    return table


def table_schema(table: str, shots: Sequence[int] = DEFAULT_SHOTS) -> pa.Schema:
    """The pinned Arrow schema of `table` for an evaluation of `shots`: `schema_version` first,
    every field non-nullable (module doc). Tables without accuracy columns ignore `shots`."""
    fields = [pa.field("schema_version", _I32, nullable=False)]
    for name, typ in _FIELDS[_check_table(table)]:
        if (name, typ) == _ACCURACY_BLOCK:
            fields += [pa.field(c, _F64, nullable=False) for c in accuracy_columns(shots)]
        else:
            fields.append(pa.field(name, typ, nullable=False))
    return pa.schema(fields)


def has_accuracy_columns(table: str) -> bool:
    """Whether `table` stores one accuracy pair per shot count (`trials`, `proxies`)."""
    return _ACCURACY_BLOCK in _FIELDS[_check_table(table)]


TABLES: tuple[str, ...] = tuple(_FIELDS)
# The schemas with the default shot counts (1, 5).
SCHEMAS: dict[str, pa.Schema] = {name: table_schema(name) for name in TABLES}

# Columns added after schema version 1, with the value that files written before them and
# writers that do not know them get (so older results folders stay readable): the git SHA
# of the code the driver ran ("" = unknown, not a git checkout).
ADDED_COLUMNS: dict[str, dict[str, Any]] = {"searches": {"git_sha": ""}, "trials": {"git_sha": ""}}

# Columns holding accuracies as fractions (besides every `acc_<K>shot`): a value outside
# [0, 1] means someone wrote percent.
_FRACTION_COLUMNS = frozenset({"accuracy", "final_train_acc", "train_acc"})


def _is_fraction(column: str) -> bool:
    return column in _FRACTION_COLUMNS or bool(_ACCURACY_RE.match(column))


# Keys become file names: no separators, no leading dot (temp files and `..` start with one).
_KEY_RE = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_.=-]{0,199}$")


class SchemaError(ValueError):
    """A stored Parquet file that does not match the pinned schema (names file and columns)."""


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ResultsLayout:
    """Where everything of one experiment's results folder lives (design section 7)."""

    root: Path
    tables: Mapping[str, Path]  # table name -> folder of its Parquet files
    cells: Path                 # rendered genotypes (*.svg, *.png)
    plots: Path                 # figures (*.png)
    report: Path                # report.md and CSVs written by `metantk-nas report`
    config: Path                # resolved experiment config
    git_sha: Path               # git commit the results were produced with

    def table(self, name: str) -> Path:
        """Folder of table `name`; KeyError listing the tables if unknown."""
        return self.tables[_check_table(name)]

    def cell_images(self, search_id: str, fmt: str = "png") -> tuple[Path, Path] | None:
        """The rendered (normal, reduce) cells of a search, or None when they were not rendered."""
        pair = tuple(self.cells / f"{search_id}_{t}.{fmt}" for t in ("normal", "reduce"))
        return pair if all(p.is_file() for p in pair) else None  # type: ignore[return-value]


def results_layout(results_dir: str | os.PathLike[str]) -> ResultsLayout:
    """Paths of one results folder (nothing is created)."""
    root = Path(results_dir)
    return ResultsLayout(
        root=root,
        tables={name: root / name for name in TABLES},
        cells=root / "cells",
        plots=root / "plots",
        report=root / "report",
        config=root / "config.toml",
        git_sha=root / "git_sha.txt",
    )


# ----------------------------------------------------------------------------- atomic files


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (parents created); returns the path."""
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (parents created); returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented, key-sorted JSON atomically.

    NaN/inf are refused (they are not JSON); the ValueError names the file.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ValueError(f"cannot write {path} as JSON: {exc} (replace NaN/inf by null "
                         "or a string first)") from exc
    return write_text_atomic(path, text)


# ----------------------------------------------------------------------------- validation


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            f"results key {key!r} is not a safe file name: use 1-200 letters, digits and "
            "'-', '_', '.', '=' (not starting with '.'), e.g. 'search=metantk-seed=0-round=3'"
        )
    return key


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_value(table: str, column: str, typ: pa.DataType, row: int, value: Any) -> None:
    """Raise ValueError naming the column unless `value` is a valid Python value for `typ`."""
    where = f"table {table!r}, column {column!r}, row {row}"
    if value is None or value is pd.NA or value is pd.NaT:
        hint = "NaN" if pa.types.is_floating(typ) else "''" if pa.types.is_string(typ) else None
        fix = f"; store a missing value as {hint}" if hint else ""
        raise ValueError(f"{where}: null is not allowed ({typ}){fix}")
    is_bool = isinstance(value, (bool, np.bool_))
    if pa.types.is_boolean(typ):
        ok = is_bool
    elif pa.types.is_integer(typ):
        ok = isinstance(value, numbers.Integral) and not is_bool
    elif pa.types.is_floating(typ):
        ok = isinstance(value, numbers.Real) and not is_bool
    elif pa.types.is_string(typ):
        ok = isinstance(value, str)
    else:  # pragma: no cover - the schemas above use only these types
        raise TypeError(f"unsupported schema type {typ} for {where}")
    if not ok:
        raise ValueError(f"{where}: expected {typ}, got {_type_name(value)} {value!r}")
    if _is_fraction(column) and not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: accuracy {value!r} outside [0, 1]; store fractions, "
                         "not percent")


def _shots_of_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """The shot counts of the first row's accuracy columns (the default without rows or
    accuracy columns, so a row that lacks them is reported against the default)."""
    first = rows[0] if rows and isinstance(rows[0], Mapping) else {}
    return shots_of(first) or DEFAULT_SHOTS


def rows_to_table(table: str, rows: Sequence[Mapping[str, Any]],
                  shots: Sequence[int] | None = None) -> pa.Table:
    """Validate `rows` against the pinned schema of `table` and build the Arrow table.

    `schema_version` is filled in (a row may carry it only with the current value). The
    accuracy columns are those of `shots`, by default of the first row's `acc_<K>shot`
    columns. Raises KeyError for an unknown table and ValueError naming the table and the
    missing / extra / mistyped column otherwise.
    """
    schema = table_schema(table, _shots_of_rows(rows) if shots is None else shots)
    expected = [name for name in schema.names if name != "schema_version"]
    columns: dict[str, list[Any]] = {name: [] for name in expected}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"table {table!r}, row {i}: expected a dict, got {_type_name(row)}")
        keys = set(row)
        if "schema_version" in keys:
            if row["schema_version"] != SCHEMA_VERSION:
                raise ValueError(f"table {table!r}, row {i}: schema_version "
                                 f"{row['schema_version']!r} != {SCHEMA_VERSION}; leave it out")
            keys.discard("schema_version")
        added = ADDED_COLUMNS.get(table, {})
        row = {**{c: v for c, v in added.items() if c not in keys}, **row}
        keys |= set(added)
        missing = [c for c in expected if c not in keys]
        extra = sorted(keys.difference(expected))
        if missing or extra:
            parts = ([f"missing columns {missing}"] if missing else []) + (
                [f"unexpected columns {extra}"] if extra else [])
            raise ValueError(f"table {table!r}, row {i}: {'; '.join(parts)}; the pinned "
                             f"columns are {expected}")
        for name in expected:
            columns[name].append(row[name])
    arrays = [pa.array([SCHEMA_VERSION] * len(rows), type=_I32)]
    for name in expected:
        typ = schema.field(name).type
        values = columns[name]
        for i, value in enumerate(values):
            _check_value(table, name, typ, i, value)
        try:
            arrays.append(pa.array(values, type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise ValueError(f"table {table!r}, column {name!r}: cannot store as {typ}: "
                             f"{exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


# ----------------------------------------------------------------------------- write / read


def table_path(results_dir: str | os.PathLike[str], table: str, key: str) -> Path:
    """`results_dir/<table>/<key>.parquet` after checking the table and the key."""
    return results_layout(results_dir).table(table) / f"{_check_key(key)}.parquet"


def write_rows(results_dir: str | os.PathLike[str], table: str, key: str,
               rows: Sequence[Mapping[str, Any]], shots: Sequence[int] | None = None) -> Path:
    """Validate `rows` and write them atomically as `results_dir/<table>/<key>.parquet`.

    Idempotent per key: writing the same key again replaces the file (no duplicate rows).
    An empty `rows` writes a valid zero-row file. Returns the file's path.
    """
    path = table_path(results_dir, table, key)
    arrow = rows_to_table(table, rows, shots)
    # Page checksums: a flipped bit in a data page is an error on read, not a wrong number.
    return write_atomic(path, lambda handle: pq.write_table(arrow, handle, write_page_checksum=True))


def delete_rows(results_dir: str | os.PathLike[str], table: str, key: str) -> bool:
    """Remove the file of `key` in `table`; returns whether a file was there."""
    path = table_path(results_dir, table, key)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def table_files(results_dir: str | os.PathLike[str], table: str) -> list[Path]:
    """The Parquet files of `table`, sorted by file name (temp files are ignored)."""
    folder = results_layout(results_dir).table(table)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.parquet") if not p.name.startswith(".")),
                  key=lambda p: p.name)


# What a user does about a file that cannot be read (see `set_aside_unreadable`).
_UNREADABLE_FIX = "rerun `metantk-nas run` on the experiment: it sets the file aside and recomputes its rows"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


def _read_file(path: Path, table: str) -> pa.Table:
    """Read one file and check it against the pinned schema of the shot counts its accuracy
    columns name; SchemaError otherwise."""
    try:
        found = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file of table {table!r} ({_first_line(exc)}); "
                          f"{_UNREADABLE_FIX}") from exc
    schema = table_schema(table, shots_of(found.names) or DEFAULT_SHOTS)
    added = {n: v for n, v in ADDED_COLUMNS.get(table, {}).items() if n not in found.names}
    missing = [n for n in schema.names if n not in found.names and n not in added]
    extra = [n for n in found.names if n not in schema.names]
    if missing or extra:
        parts = ([f"missing columns {missing}"] if missing else []) + (
            [f"unexpected columns {extra}"] if extra else [])
        raise SchemaError(f"{path}: {'; '.join(parts)} for table {table!r} (schema version "
                          f"{SCHEMA_VERSION}); it was written by another version, rerun the "
                          "step that writes it")
    wrong = [f"{f.name} ({found.field(f.name).type}, expected {f.type})" for f in schema
             if f.name not in added and found.field(f.name).type != f.type]
    if wrong:
        raise SchemaError(f"{path}: wrong column types for table {table!r}: {', '.join(wrong)}")
    stored = pa.schema([f for f in schema if f.name not in added])
    try:
        data = pq.read_table(path, schema=stored, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file of table {table!r} ({_first_line(exc)}); "
                          f"{_UNREADABLE_FIX}") from exc
    for name, value in added.items():  # a file from before the column: its default, in schema order
        data = data.add_column(schema.get_field_index(name), schema.field(name),
                               pa.array([value] * data.num_rows, type=schema.field(name).type))
    versions = set(data.column("schema_version").to_pylist())
    if versions - {SCHEMA_VERSION}:
        raise SchemaError(f"{path}: column 'schema_version' holds {sorted(versions)}, this "
                          f"code reads version {SCHEMA_VERSION}; rerun the step that writes it")
    if data.num_rows and any(data.column(n).null_count for n in schema.names):
        nulls = [n for n in schema.names if data.column(n).null_count]
        raise SchemaError(f"{path}: null values in columns {nulls} of table {table!r}")
    return data


def read_file(path: str | os.PathLike[str], table: str) -> pa.Table:
    """One Parquet file of `table`, checked against its pinned schema (SchemaError naming the
    file otherwise): for readers that need one unit's rows, not the whole table."""
    return _read_file(Path(path), _check_table(table))


def read_table(results_dir: str | os.PathLike[str], table: str,
               shots: Sequence[int] | None = None) -> pd.DataFrame:
    """All rows of `table` under `results_dir` as a DataFrame with the pinned dtypes.

    Row order is deterministic: files sorted by name, rows in file order. No files ->
    an empty DataFrame with the columns and dtypes of `shots` (default: 1 and 5). A file
    that does not match the schema raises SchemaError naming the file and the column(s).
    Files of one table with different shot counts (an experiment whose `[evaluate] shots`
    grew: a finished trial's row keeps the shot counts it was trained with) read as the union
    of their accuracy columns, NaN where a file has none (`harness.report.
    accuracies_with_added_evaluations` fills those from the `episodes` rows).
    """
    _check_table(table)
    files = table_files(results_dir, table)
    parts = [_read_file(path, table) for path in files]
    if not parts:
        return table_schema(table, DEFAULT_SHOTS if shots is None else shots).empty_table().to_pandas()
    every = normalized_shots(k for p in parts for k in shots_of(p.schema.names))
    if any(shots_of(p.schema.names) != every for p in parts):
        schema = table_schema(table, every)
        parts = [_with_columns(p, schema) for p in parts]
    return pa.concat_tables(parts).to_pandas()


def _with_columns(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """`part` with every column of `schema` in its order, the ones it lacks (accuracy columns
    of shot counts it was not evaluated on) as NaN."""
    n = part.num_rows
    columns = [part.column(f.name) if f.name in part.column_names else pa.array([math.nan] * n, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def has_parquet(results_dir: str | os.PathLike[str]) -> bool:
    """Whether any table of `results_dir` has at least one Parquet file."""
    return any(table_files(results_dir, name) for name in TABLES)


UNREADABLE_DIR = "unreadable"


def set_aside_unreadable(results_dir: str | os.PathLike[str],
                         tables: Sequence[str] = TABLES) -> list[tuple[Path, Path, str]]:
    """Move every file of `tables` that cannot be read (corrupt, truncated, another schema)
    to `results_dir/unreadable/<table>/`, so its rows count as missing and are recomputed.

    Nothing is deleted; the other files of the table are untouched. Returns
    (old path, new path, reason) per moved file. The name gets a nanosecond stamp so a
    file set aside twice keeps both copies.
    """
    moved = []
    for table in tables:
        _check_table(table)
        for path in table_files(results_dir, table):
            try:
                _read_file(path, table)
            except SchemaError as exc:
                target = Path(results_dir) / UNREADABLE_DIR / table / f"{path.name}.{time.time_ns()}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                moved.append((path, target, _first_line(exc).removeprefix(f"{path}: ")))
    return moved
