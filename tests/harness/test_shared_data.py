"""Datasets through the object store: the driver loads each split once; scorer actors and
trials get the arrays (zero-copy) and never read the dataset root."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import parse_config
from harness.shared_data import (SplitKey, data_split_key, load_shared, preloaded_split, resolve_split, score_data_key,
                                 shared_split, split_arrays, trial_data_keys)
from harness.specs import DataSpec
from trainers.data import load_split

# An Omniglot experiment whose root exists nowhere: any worker that reads the root fails.
NOWHERE = "/nonexistent/omniglot-root"


def omniglot_config(out) -> object:
    return parse_config({
        "experiment": {"name": "shared", "seed": 2, "out": str(out)},
        "dataset": {"name": "omniglot", "root": NOWHERE},
        "search": {"methods": ["regions"], "seeds": [0], "cells": [3], "init_channels": 4, "repeats": 1,
                   "region_inputs": 20, "region_batches": 1},
        "train": {"recipe": "omniglot", "epochs": 1, "batch_size": 16},
        "evaluate": {"ways": 3, "shots": [1], "queries": 2, "episodes": 3},
    }, source="shared")


def fake_omniglot(name, root, split, *, image_size=None, seed=0, **options):
    """On the driver only (monkeypatched there): 1-channel 28x28 generated images for the
    split of `NOWHERE`, so the driver can load what no worker could."""
    assert (name, str(root)) == ("omniglot", NOWHERE)
    return load_split("synthetic", None, split, image_size=28, seed=seed, channels=1, train_classes=6,
                      val_classes=3, test_classes=4, images_per_class=6)


def never_load(*args, **kwargs):
    raise RuntimeError("read the dataset root")


def test_a_split_round_trips_through_plain_arrays_without_a_copy():
    split = load_split("synthetic", None, "train", seed=1, train_classes=4, images_per_class=3)
    arrays = split_arrays(split)
    assert isinstance(arrays["images"], np.ndarray) and arrays["images"].flags.c_contiguous
    arrays["images"].setflags(write=False)  # as Ray hands them over
    back = shared_split(arrays)
    assert torch.equal(back.images, split.images) and torch.equal(back.labels, split.labels)
    assert back.class_names == split.class_names and (back.dataset, back.split) == ("synthetic", "train")
    assert back.images.data_ptr() == arrays["images"].ctypes.data  # a view, not a copy


def test_keys_of_a_trial_and_of_a_scorer_name_the_same_split(tmp_path):
    from harness.scoring import spec_from_config

    cfg = omniglot_config(tmp_path)
    keys = trial_data_keys(cfg)
    assert keys["train"] == score_data_key(spec_from_config(cfg, 3))
    assert keys["train"] == SplitKey("omniglot", NOWHERE, "train", 0, 2, ())
    assert keys["eval"].split == "test"
    spec = DataSpec("x", "", 0, "a", "b", {"b": [1, 2], "a": 1}, 0)  # options as a mapping: frozen
    key = data_split_key(spec, "s")
    assert key.options == (("a", 1), ("b", (1, 2))) and key.data().train_split == key.data().eval_split == "s"


def test_a_shared_split_is_used_instead_of_the_root(monkeypatch, tmp_path):
    monkeypatch.setattr("trainers.data.load_split", fake_omniglot)
    key = trial_data_keys(omniglot_config(tmp_path))["train"]
    shared = load_shared([key, key])
    assert list(shared) == [key]  # loaded once
    monkeypatch.setattr("trainers.data.load_split", never_load)
    assert resolve_split(shared, key).n_classes == 6
    with pytest.raises(RuntimeError, match="read the dataset root"):
        resolve_split({}, key)


def test_the_inline_scorer_takes_a_shared_split(monkeypatch, tmp_path):
    from harness.scoring import Job, score_job, spec_from_config

    monkeypatch.setattr("trainers.data.load_split", fake_omniglot)
    spec = spec_from_config(omniglot_config(tmp_path), 3)
    shared = load_shared([score_data_key(spec)])
    monkeypatch.setattr("trainers.data.load_split", never_load)
    masks = np.ones((2, 9, 7), bool)
    ((ident, score),) = score_job({}, Job(spec, (2, "s", 0, 0), ("rn",), (("origin", masks),)),
                                  torch.device("cpu"), 1, lambda s: preloaded_split(shared, s))
    assert ident == "origin" and score.rn >= 1


@pytest.mark.slow
def test_actors_and_trials_never_read_the_dataset_root(monkeypatch, tmp_path, ray_session):
    """The root exists nowhere: the driver's (patched) loader serves it; a worker that read
    the root would fail with a DatasetError."""
    import ray

    from harness import store
    from harness.scorers import ScorerPool
    from harness.scoring import Job, spec_from_config
    from harness.trials import run_trials, trial_specs
    from search_spaces.genotypes import get_genotype

    monkeypatch.setattr("trainers.data.load_split", fake_omniglot)
    cfg = omniglot_config(tmp_path)
    spec = spec_from_config(cfg, 3)
    pool = ScorerPool(1, shared=ray.put(load_shared([score_data_key(spec)])))
    try:
        got = []
        pool.run([Job(spec, (2, "s", 0, 0), ("rn",), (("origin", np.ones((2, 9, 7), bool)),))],
                 lambda job, label, scores: got.extend(scores))
    finally:
        pool.shutdown()
    assert [ident for ident, _ in got] == ["origin"] and got[0][1].rn >= 1

    row = {"search_id": "omniglot-metanas-s0-c3", "method": "metanas", "seed": 0, "cells": 3,
           "genotype": get_genotype("metanas_og_v2").to_str(), "device_seconds": 0.0}
    (trial,) = trial_specs(cfg, [row])
    assert run_trials(cfg, [trial], verbose=0) == [trial.trial_id]
    trials = store.read_table(cfg.results_dir, "trials")
    assert trials["acc_1shot"].between(0, 1).all() and (trials["epochs"] == 1).all()
