"""Experiment configs: every shipped file loads; bad files give errors naming key, file, choices."""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from harness.config import ConfigError, load_config, parse_config, to_toml
from harness.errors import UserError

EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_experiments_load_and_round_trip(path):
    cfg = load_config(path)
    again = parse_config(tomllib.loads(to_toml(cfg)), source=str(path))
    assert again == cfg


def test_defaults_and_inf():
    cfg = parse_config({"experiment": {"name": "x"}, "search": {"inner_time": "inf", "cells": 8}})
    assert math.isinf(cfg.search.inner_time)
    assert cfg.search.cells == (8,)  # a scalar where a list is expected is a one-item list
    assert cfg.results_dir == Path("results/x")


def _write(tmp_path, text):
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needle", [
    ('[experiment]\nname="x"\n[search]\nmethdos=["metantk"]\n', "unknown key(s) search.methdos; valid keys in [search]"),
    ('[experiment]\nname="x"\n[serch]\n', "unknown table(s) [serch]"),
    ('[experiment]\nname="x"\n[search]\nrepeats="three"\n', "search.repeats: expected an integer"),
    ('[experiment]\nname="x"\n[search]\nalgorithm="reptile"\n', "choose one of maml, anil"),
    ('[experiment]\nname="x"\n[search]\nmethods=["magic"]\n', "unknown method 'magic'"),
    ('[experiment]\nname="x"\n[dataset]\nname="cifar"\n', "choose one of synthetic, omniglot"),
    ('[experiment]\nname="x"\n[search]\nrepeats=0\n', "search.repeats = 0 must be >= 1"),
    ('[experiment]\nname="x"\n[search]\ninner_time=-1\n', "search.inner_time"),
    ('[experiment]\nname="a/b"\n', "experiment.name"),
    ('[search]\nrepeats=1\n', "missing experiment.name"),
    ('[experiment\nname="x"\n', "not valid TOML"),
    ('[experiment]\nname="x"\n[evaluate]\nshots=[0]\n', "evaluate.shots"),
])
def test_bad_configs_name_the_key_and_file(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/file.toml")


def test_cli_overrides(tmp_path):
    path = _write(tmp_path, '[experiment]\nname="x"\n')
    cfg = load_config(path, {"resources": {"workers": 3, "address": None}, "dataset": {"root": "/data"}})
    assert cfg.resources.workers == 3 and cfg.resources.address == "" and cfg.dataset.root == "/data"


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from harness.cli import main

    path = _write(tmp_path, '[experiment]\nname="x"\n[search]\nrepeats="many"\n')
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.repeats: expected an integer" in err[0]
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_config_digest_hashes_the_resolved_dataset_root(tmp_path, monkeypatch):
    """`--root data/x`, `--root ./data/x` and the absolute path resume the same run; another folder does not."""
    from harness.search import config_digest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "data" / "y").mkdir()

    def digest(root):
        return config_digest(parse_config({"experiment": {"name": "e"},
                                           "dataset": {"name": "omniglot", "root": root}}, source="t"))

    same = {digest("data/x"), digest("./data/x"), digest(str(tmp_path / "data" / "x")), digest("data/y/../x")}
    assert len(same) == 1
    assert digest("data/y") not in same
