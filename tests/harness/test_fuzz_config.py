"""Fuzz the experiment-config loader: wrong types and ranges for every key give one line.

Seeded: each case sets one key (or a whole table) of a valid config to a value of the wrong
type, out of range, NaN/inf, nested or huge, and loads it both from a dict and from TOML
text. The loader must either accept it or raise `ConfigError` with a one-line message that
names the section; any other exception (a traceback for the user) fails the test.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import pytest

from harness.config import BOUNDS, SECTIONS, ConfigError, load_config, parse_config

BASE: dict[str, dict[str, Any]] = {
    "experiment": {"name": "fuzz", "seed": 1, "out": "results"},
    "dataset": {"name": "synthetic", "options": {"train_classes": 6}},
    "search": {"methods": ["metantk"], "seeds": [0], "cells": [3], "init_channels": 4},
    "train": {"recipe": "synthetic", "epochs": 1},
    "evaluate": {"ways": 3, "shots": [1], "queries": 4, "episodes": 6},
    "resources": {"workers": 1},
    "study": {"proxies": False},
}
KEYS: list[tuple[str, str]] = [(s, f.name) for s, cls in SECTIONS.items() for f in fields(cls)]
CASES_PER_KEY = 6


def _wrong_values(rng: random.Random, hint: Any, bounds: tuple[float, float] | None) -> list[Any]:
    """Candidate bad values for a key of type `hint`: other types, edges, non-finite, nesting."""
    junk: list[Any] = ["", "abc", "1e3", "../..", "inf", "-inf", "nan", True, False, 0, -1, 2**63 - 1, -(2**63),
                       0.5, -0.0, 1e308, -1e308, math.inf, -math.inf, math.nan, [], [1, "a"], [[1]],
                       {"a": 1}, {}, [{"x": [1]}], "x" * 300]
    if bounds is not None:
        lo, hi = bounds
        for edge in (lo, hi):
            if math.isfinite(edge):
                junk += [edge - 1, edge + 1, edge - 1e-9, edge + 1e-9, int(edge) - 1, int(edge) + 1]
        if get_origin(hint) is tuple:
            junk += [[int(lo) - 1], [int(hi) + 1] if math.isfinite(hi) else [2**63 - 1], [1, int(lo) - 1]]
    return rng.sample(junk, CASES_PER_KEY)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _toml_text(data: dict[str, Any]) -> str:
    lines = []
    for section, values in data.items():
        if not isinstance(values, dict):
            lines.insert(0, f"{section} = {_toml(values)}")  # a non-table at the top level
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _check(load, section: str) -> None:
    try:
        load()
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg, msg
        assert section in msg, msg
    # Any other exception propagates: that is the traceback the fuzz looks for.


def _cases() -> list[tuple[str, str, Any]]:
    rng = random.Random(20261201)
    cases = []
    for section, key in KEYS:
        hint = get_type_hints(SECTIONS[section])[key]
        for value in _wrong_values(rng, hint, BOUNDS.get((section, key))):
            cases.append((section, key, value))
    return cases


CASES = _cases()


def test_the_fuzz_covers_every_key_a_few_hundred_times() -> None:
    assert {(s, k) for s, k, _ in CASES} == set(KEYS)
    assert len(CASES) >= 300


def test_every_wrong_value_of_every_key_is_one_line(tmp_path: Path) -> None:
    accepted = refused = 0
    for i, (section, key, value) in enumerate(CASES):
        data = {s: dict(v) for s, v in BASE.items()}
        data[section][key] = value
        _check(lambda: parse_config(data, source="fuzz"), section)
        path = tmp_path / f"case{i}.toml"
        path.write_text(_toml_text(data))
        try:
            load_config(path)
            accepted += 1
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
            refused += 1
    assert refused > 0.8 * len(CASES)  # almost every value is wrong for its key


@pytest.mark.parametrize("seed", range(4))
def test_whole_tables_of_the_wrong_shape_are_one_line(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(25):
        data: dict[str, Any] = {s: dict(v) for s, v in BASE.items()}
        section = rng.choice([*SECTIONS, "extra"])
        data[section] = rng.choice([5, "text", [1, 2], {"unknown_key": 1}, {}, {"name": [1]}, math.nan])
        if rng.random() < 0.3:
            data.pop(rng.choice(list(SECTIONS)), None)
        _check(lambda: parse_config(data, source="fuzz"), "")
        path = tmp_path / f"s{seed}-{i}.toml"
        path.write_text(_toml_text(data))
        _check(lambda: load_config(path), str(path))


def test_files_that_are_not_toml_are_one_line(tmp_path: Path) -> None:
    cases = {"binary.toml": bytes(range(256)), "empty.toml": b"", "half.toml": b"[experiment\nname = ",
             "latin1.toml": "[experiment]\nname = \"caf\xe9\"\n".encode("latin-1")}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _check(lambda: load_config(path), str(path))
    _check(lambda: load_config(tmp_path), str(tmp_path))  # a folder, not a file
