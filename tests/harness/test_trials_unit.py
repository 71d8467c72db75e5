"""Fast tests of the trials module without Ray: one trial trained and evaluated by
`train_and_evaluate` at tiny scale, brought home and reported, with shot counts other than
the default; failures injected with monkeypatch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import store, trials
from harness.config import parse_config
from harness.pipeline import build_report
from search_spaces.genotypes import resolve_genotype


def _cfg(tmp_path: Path, shots: list[int]):
    return parse_config({
        "experiment": {"name": "unit", "seed": 1, "out": str(tmp_path)},
        "dataset": {"name": "synthetic", "image_size": 16,
                    "options": {"train_classes": 4, "val_classes": 2, "test_classes": 4, "images_per_class": 8}},
        "search": {"methods": ["metanas"], "seeds": [0], "cells": [3], "init_channels": 4},
        "train": {"recipe": "synthetic", "epochs": 1, "batch_size": 16},
        "evaluate": {"ways": 3, "shots": shots, "queries": 2, "episodes": 3},
    }, source="unit")


def _row(method: str = "metanas", seed: int = 0) -> dict:
    return {"search_id": f"synthetic-{method}-s{seed}-c3", "method": method, "seed": seed, "cells": 3,
            "genotype": resolve_genotype("metanas_in_v2").to_str(), "device_seconds": 0.5}


def _run_home(cfg, spec, work: Path) -> dict:
    """One trial as the trainable runs it, then brought home as the driver does."""
    trials.ensure_episode_lists(cfg)
    lists = trials.load_episode_lists(cfg.results_dir, spec)
    epochs = []
    final = trials.train_and_evaluate(spec, lists, work, torch.device("cpu"), epochs.append)
    assert trials.collect_trial_outputs(cfg.results_dir, work) == spec.trial_id
    assert [e.epoch for e in epochs] == [1]
    return final


@pytest.mark.parametrize("shots", [[2], [1, 3, 5]])
def test_a_trial_of_any_shot_counts_end_to_end(tmp_path: Path, shots: list[int]) -> None:
    cfg = _cfg(tmp_path, shots)
    (spec,) = trials.trial_specs(cfg, [_row()])
    final = _run_home(cfg, spec, tmp_path / "work")
    accs = [store.accuracy_column(k) for k in shots]
    assert final["done"] and sorted(k for k in final if k.startswith("acc_")) == sorted(accs)
    rows = store.read_table(cfg.results_dir, "trials")
    assert [c for c in rows.columns if c.startswith(("acc_", "ci_"))] == store.accuracy_columns(shots)
    assert rows[accs].iloc[0].between(0, 1).all()
    episodes = store.read_table(cfg.results_dir, "episodes")
    assert sorted(set(episodes["shots"])) == sorted(shots) and len(episodes) == 3 * len(shots)
    assert json.loads(rows["config_json"].iloc[0])["evaluate"]["shots"] == shots
    text = build_report(cfg.results_dir, n_boot=0).markdown
    assert all(f"{k}-shot (%)" in text for k in shots)
    assert ("5-shot" in text) == (5 in shots)


def test_a_failed_training_leaves_no_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainers.rfs

    cfg = _cfg(tmp_path, [1])
    (spec,) = trials.trial_specs(cfg, [_row()])
    trials.ensure_episode_lists(cfg)

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(trainers.rfs, "pretrain", broken)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RuntimeError, match="device lost"):
        trials.train_and_evaluate(spec, trials.load_episode_lists(cfg.results_dir, spec), work, torch.device("cpu"))
    assert trials.collect_trial_outputs(cfg.results_dir, work) is None  # not counted as done
    assert trials.missing_trials(cfg.results_dir, [spec]) == {spec.trial_id}


def test_run_trials_starts_nothing_when_every_trial_has_its_rows(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, [1])
    specs = trials.trial_specs(cfg, [_row(), _row("random")])
    for spec in specs:
        episode = {"experiment": "unit", "trial_id": spec.trial_id, "dataset": "synthetic", "method": spec.method,
                   "seed": 0, "cells": 3, "ways": 3, "shots": 1, "queries": 2, "episode": 0, "accuracy": 0.5}
        outputs = {"trial_id": spec.trial_id, "history": [], "episodes": [episode],
                   "trials": [{"experiment": "unit", "dataset": "synthetic", "method": spec.method, "seed": 0,
                               "cells": 3, "trial_id": spec.trial_id, "search_id": spec.search_id, "genotype": "g",
                               "params": 1, "search_seconds": 0.0, "train_seconds": 0.0, "epochs": 1,
                               "final_loss": 0.0, "final_train_acc": 0.5, "ways": 3, "episodes": 3,
                               "acc_1shot": 0.5, "ci_1shot": 0.1, "device_kind": "cpu", "config_json": "{}"}]}
        trials.write_trial_outputs(cfg.results_dir, outputs)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started although every trial has its rows")

    monkeypatch.setattr("harness.ray_session.ensure_ray", no_ray)
    assert trials.run_trials(cfg, specs, verbose=0) == sorted(s.trial_id for s in specs)


def test_a_missing_episodes_file_makes_a_trial_missing(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, [1])
    (spec,) = trials.trial_specs(cfg, [_row()])
    row = {"experiment": "unit", "trial_id": spec.trial_id, "dataset": "synthetic", "method": "metanas",
           "seed": 0, "cells": 3, "ways": 3, "shots": 1, "queries": 2, "episode": 0, "accuracy": 0.5}
    store.write_rows(cfg.results_dir, "episodes", spec.trial_id, [row])
    assert trials.missing_trials(cfg.results_dir, [spec]) == {spec.trial_id}  # no `trials` row yet
