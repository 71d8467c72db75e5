"""Tests of the Parquet result store: pinned schemas, atomic idempotent writes, strict reads."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import store
from harness.store import SCHEMA_VERSION, SCHEMAS, SchemaError


def sample_row(table: str, i: int = 0, **overrides: object) -> dict:
    """A valid row of `table`: values derived from the column type and the row number."""
    row: dict = {}
    for f in SCHEMAS[table]:
        if f.name == "schema_version":
            continue
        if pa.types.is_string(f.type):
            row[f.name] = f"{f.name}-{i}"
        elif pa.types.is_boolean(f.type):
            row[f.name] = i % 2 == 0
        elif pa.types.is_integer(f.type):
            row[f.name] = 10 * i + 1
        else:
            row[f.name] = 0.25 + 0.125 * i
    row.update(overrides)
    return row


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_round_trip_every_table(tmp_path: Path, table: str) -> None:
    rows = [sample_row(table, i) for i in range(3)]
    path = store.write_rows(tmp_path, table, "unit=0", rows)
    assert path == tmp_path / table / "unit=0.parquet"
    frame = store.read_table(tmp_path, table)
    assert list(frame.columns) == SCHEMAS[table].names
    assert (frame["schema_version"] == SCHEMA_VERSION).all()
    assert frame.drop(columns="schema_version").to_dict("records") == rows
    # Dtypes are pinned: identical to those of an empty read.
    empty = store.read_table(tmp_path / "nothing", table)
    assert empty.empty and list(empty.columns) == SCHEMAS[table].names
    assert frame.dtypes.to_dict() == empty.dtypes.to_dict()
    assert pq.read_schema(path).remove_metadata().equals(SCHEMAS[table])


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_every_schema_is_versioned_and_non_nullable(table: str) -> None:
    schema = SCHEMAS[table]
    assert schema.names[0] == "schema_version" and schema.field(0).type == pa.int32()
    assert not any(f.nullable for f in schema)
    assert len(set(schema.names)) == len(schema.names)


def test_numpy_scalars_are_accepted(tmp_path: Path) -> None:
    row = sample_row("episodes", seed=np.int64(7), cells=np.int32(5), accuracy=np.float32(0.5))
    store.write_rows(tmp_path, "episodes", "k", [row])
    frame = store.read_table(tmp_path, "episodes")
    assert frame.loc[0, "seed"] == 7 and frame.loc[0, "accuracy"] == 0.5


def test_infinite_and_nan_floats_are_preserved(tmp_path: Path) -> None:
    row = sample_row("candidates", cn_origin=math.inf, cn_pruned=math.inf, delta_cn=math.nan)
    store.write_rows(tmp_path, "candidates", "round=0", [row])
    frame = store.read_table(tmp_path, "candidates")
    assert frame.loc[0, "cn_origin"] == math.inf and frame.loc[0, "cn_pruned"] == math.inf
    assert math.isnan(frame.loc[0, "delta_cn"])


def test_same_key_twice_overwrites_without_duplicates(tmp_path: Path) -> None:
    store.write_rows(tmp_path, "trials", "trial=a", [sample_row("trials", 0)])
    store.write_rows(tmp_path, "trials", "trial=a", [sample_row("trials", 1)])
    assert files_in(tmp_path / "trials") == ["trial=a.parquet"]
    frame = store.read_table(tmp_path, "trials")
    assert len(frame) == 1 and frame.loc[0, "trial_id"] == "trial_id-1"


def test_rows_are_ordered_by_file_name(tmp_path: Path) -> None:
    for key, i in (("b", 2), ("a", 1), ("c", 3)):
        store.write_rows(tmp_path, "episodes", key, [sample_row("episodes", i)])
    assert list(store.read_table(tmp_path, "episodes")["episode"]) == [11, 21, 31]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_rows(tmp_path, "searches", "search=0", [sample_row("searches", 0)])

    def half_write(table: pa.Table, where: object, **kwargs: object) -> None:
        where.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store.pq, "write_table", half_write)
    with pytest.raises(OSError, match="simulated"):
        store.write_rows(tmp_path, "searches", "search=0", [sample_row("searches", 5)])
    monkeypatch.undo()
    assert files_in(tmp_path / "searches") == ["search=0.parquet"]
    frame = store.read_table(tmp_path, "searches")
    assert list(frame["search_id"]) == ["search_id-0"]


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash in rename")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        store.write_rows(tmp_path, "episodes", "k", [sample_row("episodes")])
    assert files_in(tmp_path / "episodes") == []


def test_temp_files_are_ignored_by_readers(tmp_path: Path) -> None:
    store.write_rows(tmp_path, "episodes", "k", [sample_row("episodes")])
    (tmp_path / "episodes" / ".k.parquet.abc.tmp").write_bytes(b"junk")
    assert len(store.read_table(tmp_path, "episodes")) == 1


def test_empty_rows_write_a_valid_empty_file(tmp_path: Path) -> None:
    store.write_rows(tmp_path, "proxies", "none", [])
    frame = store.read_table(tmp_path, "proxies")
    assert frame.empty and list(frame.columns) == SCHEMAS["proxies"].names


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_missing_column_on_write_names_it(tmp_path: Path, table: str) -> None:
    row = sample_row(table)
    dropped = SCHEMAS[table].names[-1]
    del row[dropped]
    with pytest.raises(ValueError, match=rf"{table}.*missing columns \['{dropped}'\]"):
        store.write_rows(tmp_path, table, "k", [row])
    assert not (tmp_path / table).exists() or files_in(tmp_path / table) == []


def test_extra_column_on_write_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unexpected columns \['colour'\]"):
        store.write_rows(tmp_path, "episodes", "k", [sample_row("episodes", colour="red")])


@pytest.mark.parametrize(
    ("column", "value"),
    [("seed", "zero"), ("seed", 1.5), ("seed", True), ("accuracy", "high"),
     ("accuracy", False), ("dataset", 3), ("episode", None), ("dataset", None)],
)
def test_wrong_type_on_write_names_the_column(tmp_path: Path, column: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"column '{column}'"):
        store.write_rows(tmp_path, "episodes", "k", [sample_row("episodes", **{column: value})])


def test_int32_overflow_names_the_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="column 'cells'"):
        store.write_rows(tmp_path, "episodes", "k", [sample_row("episodes", cells=2**40)])


def test_accuracy_in_percent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"acc_1shot.*fractions, not percent"):
        store.write_rows(tmp_path, "trials", "k", [sample_row("trials", acc_1shot=62.0)])


def test_schema_version_in_row_must_match(tmp_path: Path) -> None:
    store.write_rows(tmp_path, "episodes", "ok", [sample_row("episodes", schema_version=1)])
    with pytest.raises(ValueError, match="schema_version"):
        store.write_rows(tmp_path, "episodes", "bad", [sample_row("episodes", schema_version=2)])


def test_unknown_table_lists_valid_tables(tmp_path: Path) -> None:
    for call in (lambda: store.write_rows(tmp_path, "trial", "k", []),
                 lambda: store.read_table(tmp_path, "trial")):
        with pytest.raises(KeyError, match="candidates, searches, trials, episodes, proxies"):
            call()


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "a b", "x" * 201, "é"])
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="safe file name"):
        store.write_rows(tmp_path, "episodes", key, [sample_row("episodes")])


def _write_raw(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_reading_a_file_missing_a_column_names_file_and_column(tmp_path: Path) -> None:
    good = store.rows_to_table("candidates", [sample_row("candidates")])
    bad = tmp_path / "candidates" / "old.parquet"
    _write_raw(bad, good.drop_columns(["op"]))
    with pytest.raises(SchemaError, match=r"old\.parquet.*missing columns \['op'\]"):
        store.read_table(tmp_path, "candidates")


def test_reading_another_schema_version_fails(tmp_path: Path) -> None:
    good = store.rows_to_table("episodes", [sample_row("episodes")])
    newer = good.set_column(0, SCHEMAS["episodes"].field(0), pa.array([2], type=pa.int32()))
    _write_raw(tmp_path / "episodes" / "v2.parquet", newer)
    with pytest.raises(SchemaError, match=r"v2\.parquet.*schema_version.*\[2\]"):
        store.read_table(tmp_path, "episodes")


def test_reading_a_wrong_column_type_fails(tmp_path: Path) -> None:
    good = store.rows_to_table("episodes", [sample_row("episodes")])
    idx = good.schema.get_field_index("accuracy")
    bad = good.set_column(idx, pa.field("accuracy", pa.string()), pa.array(["0.5"]))
    _write_raw(tmp_path / "episodes" / "t.parquet", bad)
    with pytest.raises(SchemaError, match=r"t\.parquet.*accuracy \(string, expected double\)"):
        store.read_table(tmp_path, "episodes")


def test_reading_a_corrupt_file_fails_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match=r"broken\.parquet"):
        store.read_table(tmp_path, "trials")


def test_delete_rows(tmp_path: Path) -> None:
    store.write_rows(tmp_path, "episodes", "k", [sample_row("episodes")])
    assert store.delete_rows(tmp_path, "episodes", "k") is True
    assert store.delete_rows(tmp_path, "episodes", "k") is False
    assert store.read_table(tmp_path, "episodes").empty
    assert not store.has_parquet(tmp_path)


def test_text_and_json_helpers_are_atomic_and_strict(tmp_path: Path) -> None:
    path = store.write_json_atomic(tmp_path / "deep" / "x.json", {"b": 1, "a": [1.5]})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}
    with pytest.raises(ValueError, match=r"x\.json.*NaN"):
        store.write_json_atomic(path, {"a": math.nan})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}  # old content intact
    store.write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_results_layout(tmp_path: Path) -> None:
    layout = store.results_layout(tmp_path)
    assert layout.table("trials") == tmp_path / "trials"
    assert set(layout.tables) == set(SCHEMAS)
    assert (layout.cells, layout.plots, layout.report) == (
        tmp_path / "cells", tmp_path / "plots", tmp_path / "report")
    assert layout.git_sha.name == "git_sha.txt" and layout.config.name == "config.toml"
    with pytest.raises(KeyError, match="valid tables"):
        layout.table("nope")
    assert not any(p.exists() for p in (layout.cells, layout.report))  # creates nothing


def test_read_gives_pandas_frames_that_write_back(tmp_path: Path) -> None:
    rows = [sample_row("proxies", i, cn_ntk=math.inf if i == 1 else 3.0) for i in range(2)]
    store.write_rows(tmp_path, "proxies", "a", rows)
    frame = store.read_table(tmp_path, "proxies").drop(columns="schema_version")
    store.write_rows(tmp_path / "copy", "proxies", "a", frame.to_dict("records"))
    pd.testing.assert_frame_equal(store.read_table(tmp_path / "copy", "proxies"),
                                  store.read_table(tmp_path, "proxies"))
