"""Fuzz the Parquet readers: truncated and bit-flipped files give a clear error naming the file.

Seeded. For every table a valid file is damaged (cut at a random length, or one random bit
flipped) and read back with `store.read_table`. The read must either raise `SchemaError`
naming the file, or return exactly the rows that were written (a flip in bytes the reader
does not use, e.g. column statistics). A wrong number read silently, or any other
exception, fails the test. Page checksums (written by `store.write_rows`) are what turn a
flip inside the data into an error.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from harness import store
from harness.store import SCHEMAS, SchemaError
from tests.harness.test_store import sample_row

DAMAGES_PER_TABLE = 80


def _damage(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.35:
        return data[:rng.randrange(len(data))]
    out = bytearray(data)
    pos = rng.randrange(len(out))
    out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_damaged_files_are_refused_by_name_or_read_unchanged(tmp_path: Path, table: str) -> None:
    rng = random.Random(f"parquet-{table}")
    path = store.write_rows(tmp_path, table, "unit", [sample_row(table, i) for i in range(4)])
    original = path.read_bytes()
    expected = store.read_table(tmp_path, table)
    refused = 0
    for _ in range(DAMAGES_PER_TABLE):
        path.write_bytes(_damage(original, rng))
        try:
            frame = store.read_table(tmp_path, table)
        except SchemaError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc).strip(), str(exc)
            refused += 1
            continue
        assert frame.equals(expected), "a damaged file was read as different rows"
    assert refused > DAMAGES_PER_TABLE // 2


def test_a_damaged_file_is_set_aside_and_the_next_write_replaces_it(tmp_path: Path) -> None:
    path = store.write_rows(tmp_path, "trials", "t", [sample_row("trials")])
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    (moved,) = store.set_aside_unreadable(tmp_path, ("trials",))
    assert moved[0] == path and not path.exists()
    store.write_rows(tmp_path, "trials", "t", [sample_row("trials", 1)])
    assert list(store.read_table(tmp_path, "trials")["trial_id"]) == ["trial_id-1"]
