"""The config's value checks are named, one per table (`config.CHECKS`), each finding its own
table's problems and passing every other table's."""
from __future__ import annotations

import pytest

from harness import config
from harness.config import ConfigError, parse_config

VALID = parse_config({"experiment": {"name": "x"}}, source="t")
# table -> a change that only that table's check refuses, and the key its message names
BROKEN = {
    "experiment": (lambda c: c.replace("experiment", name="../x"), "experiment.name"),
    "search": (lambda c: c.replace("search", seeds=(1, 1)), "search.seeds"),
    "evaluate": (lambda c: c.replace("evaluate", C=0.0), "evaluate.C"),
    "resources": (lambda c: c.replace("resources", trial_gpus=1.5), "resources.trial_gpus"),
    "study": (lambda c: c.replace("study", zero_cost=("synflow",)), "study.zero_cost"),
    "train": (lambda c: c.replace("train", lr=-1.0), "train.*"),
}


def test_one_check_per_table_in_table_order() -> None:
    assert [c.__name__ for c in config.CHECKS] == [f"check_{t}" for t in BROKEN]


@pytest.mark.parametrize("table", list(BROKEN))
def test_each_check_finds_its_tables_problem_only(table: str) -> None:
    change, key = BROKEN[table]
    broken = change(VALID)
    for check in config.CHECKS:
        if check.__name__ == f"check_{table}":
            with pytest.raises(ConfigError, match=f"t: {key.replace('.', '[.]').replace('*', '[*]')} "):
                check(broken)
        else:
            check(broken)


def test_parse_runs_every_check() -> None:
    raw = {"experiment": {"name": "x"}, "evaluate": {"C": 0.0}}
    with pytest.raises(ConfigError, match="evaluate.C must be > 0"):
        parse_config(raw, source="t")
