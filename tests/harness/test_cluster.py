"""Issue 11: the harness on a multi-node Ray cluster (rows go home, storage, data probe, lost nodes)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness import store
from harness.config import parse_config


def tiny_config(out, name="cluster", **resources):
    return parse_config({
        "experiment": {"name": name, "seed": 1, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 5, "val_classes": 3, "test_classes": 4, "images_per_class": 10}},
        "search": {"methods": ["random"], "seeds": [0], "cells": [2], "init_channels": 4},
        "train": {"recipe": "synthetic", "epochs": 2, "batch_size": 25},
        "evaluate": {"ways": 3, "shots": [1], "queries": 3, "episodes": 4},
        "resources": {"max_failures": 1, **resources},
    }, source="cluster-test")


def genotype_row(cfg, seed=0):
    from search_spaces.genotypes import GENOTYPES

    genotype = next(iter(GENOTYPES.values()))
    return {"search_id": f"synthetic-random-s{seed}-c2", "method": "random", "seed": seed, "cells": 2,
            "genotype": genotype.to_str(), "device_seconds": 0.0}


def fake_outputs(trial_id: str, acc: float) -> dict:
    base = {"experiment": "x", "dataset": "synthetic", "method": "random", "seed": 0, "cells": 2,
            "trial_id": trial_id}
    trial = {**base, "search_id": trial_id, "genotype": "g", "params": 10, "search_seconds": 0.0,
             "train_seconds": 1.0, "epochs": 1, "final_loss": 1.0, "final_train_acc": 0.5, "ways": 3,
             "episodes": 2, "acc_1shot": acc, "ci_1shot": 0.1, "acc_5shot": float("nan"),
             "ci_5shot": float("nan"), "device_kind": "cpu", "config_json": "{}"}
    episodes = [{**base, "ways": 3, "shots": 1, "queries": 3, "episode": i, "accuracy": acc} for i in range(2)]
    history = [{**base, "epoch": 1, "loss": 1.0, "train_acc": 0.5, "lr": 0.1, "seconds": 1.0}]
    return {"trial_id": trial_id, "trials": [trial], "episodes": episodes, "history": history}


def write_checkpoint_folder(folder: Path, outputs: dict, model: bytes = b"weights") -> Path:
    from harness.trials import MODEL_NAME, OUTPUTS_NAME

    folder.mkdir(parents=True, exist_ok=True)
    (folder / OUTPUTS_NAME).write_text(json.dumps(outputs))
    (folder / MODEL_NAME).write_bytes(model)
    return folder


def test_collecting_a_trial_twice_replaces_its_rows(tmp_path):
    from harness.trials import collect_trial_outputs

    results = tmp_path / "results"
    first = write_checkpoint_folder(tmp_path / "a", fake_outputs("t1", 0.5))
    assert collect_trial_outputs(results, first) == "t1"
    again = write_checkpoint_folder(tmp_path / "b", fake_outputs("t1", 0.75), model=b"newer")
    assert collect_trial_outputs(results, again) == "t1"  # a restored trial reporting again
    trials = store.read_table(results, "trials")
    assert list(trials["trial_id"]) == ["t1"] and list(trials["acc_1shot"]) == [0.75]
    assert len(store.read_table(results, "episodes")) == 2 and len(store.read_table(results, "history")) == 1
    assert (results / "models" / "t1.pt").read_bytes() == b"newer"


def test_an_epoch_checkpoint_is_not_collected(tmp_path):
    from harness.trials import collect_trial_outputs

    (tmp_path / "epoch").mkdir()
    assert collect_trial_outputs(tmp_path / "results", tmp_path / "epoch") is None
    assert not (tmp_path / "results").exists()


def test_reported_epochs_merge_into_one_history_file(tmp_path):
    from harness.trials import record_epoch, trial_specs

    cfg = tiny_config(tmp_path)
    spec = trial_specs(cfg, [genotype_row(cfg)])[0]
    metrics = {"epoch": 1, "loss": 2.0, "train_acc": 0.1, "lr": 0.1, "epoch_seconds": 1.0}
    record_epoch(cfg.results_dir, spec, metrics)
    record_epoch(cfg.results_dir, spec, {**metrics, "epoch": 2, "loss": 1.5})
    record_epoch(cfg.results_dir, spec, {**metrics, "epoch": 2, "loss": 1.4})  # a retried epoch
    history = store.read_table(cfg.results_dir, "history")
    assert list(history["epoch"]) == [1, 2] and list(history["loss"]) == [2.0, 1.4]


@pytest.mark.slow
def test_a_trial_that_cannot_write_the_results_folder_still_has_all_its_rows(tmp_path, ray_session):
    """The trial sees a results folder it cannot create (a path below a plain file, refused even
    to root): every row and the model file still arrive, written by the driver."""
    from harness.trials import EvalOverrides, evaluate_model_file, run_trials, trial_specs

    cfg = tiny_config(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the trial's view of the results folder lies below this file\n")
    unreachable = str(blocker / "results")
    # episode lists are sampled by the driver, in its own folder, before the trials start
    spec = trial_specs(cfg, [genotype_row(cfg)])[0]
    from harness.trials import ensure_episode_lists

    ensure_episode_lists(cfg)
    blind = replace(spec, results_dir=unreachable)
    assert run_trials(cfg, [blind], verbose=0) == [spec.trial_id]
    trials = store.read_table(cfg.results_dir, "trials")
    assert list(trials["trial_id"]) == [spec.trial_id] and trials["acc_1shot"].between(0, 1).all()
    assert len(store.read_table(cfg.results_dir, "episodes")) == 4
    assert sorted(store.read_table(cfg.results_dir, "history")["epoch"]) == [1, 2]
    model = cfg.results_dir / "models" / f"{spec.trial_id}.pt"
    _, summary = evaluate_model_file(model, EvalOverrides(), "cpu")  # the driver's copy reproduces the row
    assert summary[1][0] == trials["acc_1shot"].iloc[0]
