"""Config for the paper's runs: every shipped file validates, per-cell-count kernels,
`--set` overrides typed like the file, and every late refusal of the trainer, evaluator or
scorer mirrored up front."""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from harness.config import KernelSettings, apply_sets, load_config, parse_config, parse_set, to_toml
from harness.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))
PAPER = {"mini_5cell", "mini_8cell", "tiered_5cell", "tiered_8cell", "ablation_mini"}
# Paper Table 1 / Table 2 kernels per (dataset, cells) (REFERENCE.md).
PAPER_KERNELS = {
    ("mini_imagenet", 5): KernelSettings("maml", math.inf, 1e-3),
    ("tiered_imagenet", 5): KernelSettings("maml", math.inf, 1e-3),
    ("mini_imagenet", 8): KernelSettings("anil", 1.0, 1e-5),
    ("tiered_imagenet", 8): KernelSettings("anil", math.inf, 1e-3),
}


def cfg_of(**sections):
    return parse_config({"experiment": {"name": "x"}, **sections}, source="t.toml")


def test_the_experiments_folder_has_every_paper_file():
    assert PAPER <= {p.stem for p in EXPERIMENTS}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_shipped_experiment_file_loads_and_round_trips(path):
    cfg = load_config(path)
    assert cfg.experiment.name == path.stem
    again = parse_config(tomllib.loads(to_toml(cfg)), source=str(path))
    assert again == cfg


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_files_use_the_papers_settings(name):
    cfg = load_config(REPO / "experiments" / f"{name}.toml")
    assert cfg.search.ranking == "reference"
    assert (cfg.evaluate.queries, cfg.evaluate.episodes, cfg.evaluate.support_augment) == (50, 1000, 5)
    for cells in cfg.search.cells:
        assert cfg.search.kernel_for(cells) == PAPER_KERNELS[(cfg.dataset.name, cells)], cells


# ----------------------------------------------------------------------------- kernel_by_cells


def test_kernel_by_cells_overrides_only_its_cell_count_and_fills_missing_keys():
    cfg = cfg_of(search={"cells": [5, 8], "reg": 1e-3, "kernel_by_cells": {"8": {"algorithm": "anil",
                                                                                  "inner_time": 1}}})
    assert cfg.search.kernel_for(5) == KernelSettings("maml", math.inf, 1e-3)
    assert cfg.search.kernel_for(8) == KernelSettings("anil", 1.0, 1e-3)
    assert "kernel_by_cells = { 8 = { algorithm = \"anil\", inner_time = 1.0, reg = 0.001 } }" in to_toml(cfg)


@pytest.mark.parametrize("table,message", [
    ({"9": {"algorithm": "anil"}}, "9 is not in search.cells"),
    ({"eight": {"algorithm": "anil"}}, "must be a cell count"),
    ({"8": {"algorithm": "reptile"}}, "choose one of maml, anil"),
    ({"8": {"inner_time": -1}}, "inner_time = -1.0 must be >= 0"),
    ({"8": {"reg": "inf"}}, "reg = inf must be a finite number"),
    ({"8": {"repeats": 2}}, "unknown key(s) repeats"),
    ({"8": 3}, "expected a table"),
    ({"8": {"reg": "small"}}, "kernel_by_cells.8.reg: expected a number"),
])
def test_kernel_by_cells_is_validated(table, message):
    with pytest.raises(ConfigError, match=None) as err:
        cfg_of(search={"cells": [5, 8], "kernel_by_cells": table})
    assert message in str(err.value)


# ----------------------------------------------------------------------------- --set


@pytest.mark.parametrize("item,path,value", [
    ("search.init_channels=8", ("search", "init_channels"), 8),
    ("evaluate.shots=[1, 5]", ("evaluate", "shots"), [1, 5]),
    ("search.inner_time=inf", ("search", "inner_time"), math.inf),
    ("search.reg=1e-5", ("search", "reg"), 1e-5),
    ("dataset.name=omniglot", ("dataset", "name"), "omniglot"),
    ('dataset.root="a b"', ("dataset", "root"), "a b"),
    ("search.kernel_by_cells.8.algorithm=anil", ("search", "kernel_by_cells", "8", "algorithm"), "anil"),
])
def test_parse_set_reads_values_as_toml(item, path, value):
    assert parse_set(item) == (path, value)


@pytest.mark.parametrize("item", ["search.init_channels", "init_channels=3", "search..x=1", "=3"])
def test_parse_set_refuses_malformed_items(item):
    with pytest.raises(ConfigError, match="expected TABLE.KEY=VALUE"):
        parse_set(item)


def test_apply_sets_nests_and_refuses_a_key_below_a_value():
    data = {"search": {"cells": [5]}}
    out = apply_sets(data, ["search.kernel_by_cells.5.reg=0.1", "search.cells=[3]"])
    assert out == {"search": {"cells": [3], "kernel_by_cells": {"5": {"reg": 0.1}}}}
    assert data == {"search": {"cells": [5]}}  # the input is not changed
    with pytest.raises(ConfigError, match="search.cells is a value, not a table"):
        apply_sets(data, ["search.cells.x=1"])


def test_set_overrides_are_typed_validated_and_recorded(tmp_path):
    path = REPO / "experiments" / "mini_8cell.toml"
    cfg = load_config(path, sets=["search.init_channels=8", "evaluate.episodes=20", "search.seeds=[0]"])
    assert (cfg.search.init_channels, cfg.evaluate.episodes, cfg.search.seeds) == (8, 20, (0,))
    text = to_toml(cfg)
    assert "# --set search.init_channels=8" in text and "init_channels = 8" in text and "episodes = 20" in text
    with pytest.raises(ConfigError, match=r"search.init_channels: expected an integer.*with --set"):
        load_config(path, sets=["search.init_channels=eight"])
    with pytest.raises(ConfigError, match=r"search.init_channels = 0 must be >= 1"):
        load_config(path, sets=["search.init_channels=0"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) search.channels"):
        load_config(path, sets=["search.channels=8"])


def test_set_can_drop_the_per_cells_table_when_reducing_cells():
    path = REPO / "experiments" / "ablation_mini.toml"
    with pytest.raises(ConfigError, match=r"--set search.kernel_by_cells=\{\}"):
        load_config(path, sets=["search.cells=[5]"])
    cfg = load_config(path, sets=["search.cells=[5]", "search.kernel_by_cells={}"])
    assert cfg.search.kernel_by_cells == {} and cfg.search.kernel_for(5).algorithm == "maml"


def test_cli_set_is_refused_before_any_work(tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "out"
    code = main(["search", str(REPO / "experiments" / "smoke.toml"), "--out", str(out),
                 "--set", "search.repeats=0"])
    assert code == 2
    assert "search.repeats = 0 must be >= 1" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- late refusals


@pytest.mark.parametrize("sections,message", [
    ({"evaluate": {"support_augment": -1}}, "evaluate.support_augment = -1 must be >= 0"),
    ({"search": {"seeds": [0, -2]}}, "search.seeds contains [-2]"),
    ({"train": {"recipe": "imagenet"}}, "train.recipe: unknown training recipe 'imagenet'"),
    ({"train": {"lr_decay_epochs": [3, 2]}}, "lr_decay_epochs=(3, 2) must be strictly increasing"),
    ({"train": {"drop_path": 1.0}}, "drop_path=1.0 must be in [0, 1)"),
    ({"train": {"epochs": 2, "lr_decay_epochs": [0]}}, "must be strictly increasing epochs >= 1"),
    ({"search": {"kernel_output": "full"}}, "kernel_output = 'full' works only for the plain NTK"),
    ({"search": {"kernel_output": "full", "methods": ["tenas"]}, "study": {"proxies": True}},
     "study.proxies score(s) the MetaNTK"),
    ({"resources": {"trial_cpus": 0}}, "resources.trial_cpus = 0.0 must be > 0"),
    ({"resources": {"candidate_batch": -1}}, "resources.candidate_batch = -1 must be >= 0"),
    ({"dataset": {"options": {"channels": 4}}, "train": {"recipe": "mini_imagenet"}},
     "its augmentation 'rfs84' refuses 4-channel images"),
    ({"search": {"kernel_output": "full", "methods": ["tenas"]}, "resources": {"candidate_batch": 4}},
     "set resources.candidate_batch = 1"),
])
def test_what_the_trainer_evaluator_or_scorer_would_refuse_later_is_refused_now(sections, message):
    with pytest.raises(ConfigError) as err:
        cfg_of(**sections)
    assert message in str(err.value)


def test_a_four_channel_dataset_may_use_a_recipe_without_colour_jitter():
    cfg = cfg_of(dataset={"options": {"channels": 4}}, train={"recipe": "synthetic"})
    assert cfg.dataset.options["channels"] == 4


def test_plain_ntk_may_use_the_full_kernel():
    assert cfg_of(search={"kernel_output": "full", "methods": ["tenas", "regions"]}).search.kernel_output == "full"


def test_round_deltas_is_replaced_by_ranking():
    with pytest.raises(ConfigError, match="ranking"):
        cfg_of(search={"round_deltas": True})
    with pytest.raises(ConfigError, match="choose one of exact, reference"):
        cfg_of(search={"ranking": "rounded"})
