"""Config-shaped specs (harness.specs): built from the validated config in one place, one
name per setting from the TOML key to the spec, plain data through JSON, and digests of
stored proxy scores unchanged by the new shape."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from harness.config import parse_config
from harness.specs import (DataSpec, EvaluationSpec, KernelSpec, NetworkSpec, RegionSpec, ScoreSpec, TrialSpec,
                           spec_from_config, trial_spec)


def _cfg(tmp_path: Path, **study):
    return parse_config({
        "experiment": {"name": "x", "seed": 3, "out": str(tmp_path)},
        "dataset": {"name": "synthetic", "options": {"train_classes": 6, "test_classes": 5, "images_per_class": 8}},
        "search": {"cells": [3, 4], "init_channels": 4, "kernel_by_cells": {"4": {"algorithm": "anil", "reg": 0.5}}},
        "train": {"recipe": "synthetic", "epochs": 1, "init_channels": 6},
        "evaluate": {"ways": 3, "shots": [1, 5], "queries": 2, "episodes": 4, "C": 0.5},
        "study": {"proxies": True, **study},
    }, source="t")


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_sub_specs_use_the_config_key_names(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    section = {f.name for f in dataclasses.fields(cfg.search)}
    assert _names(KernelSpec) - {"proxy_options"} <= section
    assert _names(RegionSpec) <= section and _names(NetworkSpec) <= section
    assert _names(EvaluationSpec) == {f.name for f in dataclasses.fields(cfg.evaluate)}
    # [dataset] keys, plus the experiment seed that fixes the split
    assert _names(DataSpec) == {f.name for f in dataclasses.fields(cfg.dataset)} | {"seed"}


def test_score_spec_takes_each_value_from_its_key(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    spec = spec_from_config(cfg, 4)
    assert spec.data.seed == cfg.experiment.seed and spec.data.name == "synthetic"
    assert spec.data.options == (("images_per_class", 8), ("test_classes", 5), ("train_classes", 6))
    assert spec.network == NetworkSpec(cells=4, init_channels=4)  # the search's channels
    assert (spec.kernel.algorithm, spec.kernel.reg) == ("anil", 0.5)  # search.kernel_by_cells.4
    assert spec_from_config(cfg, 3).kernel.algorithm == "maml"
    for name in _names(KernelSpec) - {"algorithm", "inner_time", "reg", "proxy_options"}:
        assert getattr(spec.kernel, name) == getattr(cfg.search, name), name
    assert spec.regions == RegionSpec(cfg.search.region_inputs, cfg.search.region_batches)
    assert hash(spec) == hash(spec_from_config(cfg, 4))  # actors cache scorers by spec


def test_trial_spec_is_plain_data(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    row = {"search_id": "s", "method": "random", "seed": 2, "cells": 3, "genotype": "g", "device_seconds": 1.5}
    spec = trial_spec(cfg, row, 7, "s-t7")
    assert spec.network == NetworkSpec(cells=3, init_channels=6)  # [train] init_channels
    assert spec.evaluate == EvaluationSpec(ways=3, shots=(1, 5), queries=2, episodes=4, C=0.5, support_augment=0)
    assert spec.train["seed"] == 7 and spec.seed == 2
    assert TrialSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.with_evaluate(support_augment=3).evaluate.support_augment == 3


def test_one_load_for_a_split(tmp_path: Path) -> None:
    from trainers.data import load_split

    data = spec_from_config(_cfg(tmp_path), 3).data
    split = data.load(data.eval_split)
    direct = load_split("synthetic", None, "test", seed=3, train_classes=6, test_classes=5, images_per_class=8)
    assert np.array_equal(split.images, direct.images) and np.array_equal(split.labels, direct.labels)


@pytest.mark.parametrize("zero_cost, maml", [([], "116f0bdf9e505a36"), (["synflow"], "8a904807679bbbda")])
def test_proxy_score_digests_are_those_of_the_flat_spec(zero_cost: list[str], maml: str) -> None:
    """Values computed by the flat ScoreSpec's code (fdfac33): stored proxy scores stay valid."""
    from harness.study import _digests, proxy_specs

    cfg = parse_config({"experiment": {"name": "x", "seed": 3},
                        "dataset": {"name": "synthetic", "options": {"train_classes": 6}},
                        "search": {"cells": [3], "init_channels": 4},
                        "study": {"proxies": True, "zero_cost": zero_cost}}, source="t")
    assert _digests(cfg, proxy_specs(cfg, 3)) == {"maml": maml, "anil": "e5e321a5d73cca3d"}


def test_checkpoints_of_the_old_cn_ntk_proxy_are_rescored() -> None:
    """`proxy:cn_ntk` changed network and batch (TE-NAS's, as the `cn_ntk` column): a maml
    digest that covers it is no longer the one written before, every other digest stays."""
    import hashlib

    from harness.study import INIT_FORMAT, KEY_TAG, REDEFINED_MEASURES, proxy_specs, spec_digest

    cfg = parse_config({"experiment": {"name": "x", "seed": 3},
                        "dataset": {"name": "synthetic", "options": {"train_classes": 6}},
                        "search": {"cells": [3], "init_channels": 4},
                        "study": {"proxies": True, "zero_cost": ["synflow", "cn_ntk"]}}, source="t")
    spec = proxy_specs(cfg, 3)["maml"]
    measures = ("proxy:synflow", "proxy:cn_ntk")
    old = (INIT_FORMAT, KEY_TAG, spec.flat_fields(), measures)  # the digest's parts before the change
    assert spec_digest(spec, measures) != hashlib.sha256(repr(old).encode()).hexdigest()[:16]
    assert set(REDEFINED_MEASURES) == {"proxy:cn_ntk"}


def test_flat_fields_follow_the_flat_order(tmp_path: Path) -> None:
    spec = spec_from_config(_cfg(tmp_path), 3)
    flat = spec.flat_fields()
    assert len(flat) == 25 and flat[:3] == ("synthetic", "", "train") and flat[-1] == "plain"
    assert isinstance(spec, ScoreSpec)
