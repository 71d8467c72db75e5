"""A trial evaluates with `evaluate.support_augment` copies made by its training recipe's
transform (it once raised ValueError after the whole training)."""
from __future__ import annotations

import torch

from harness.config import parse_config
from harness.trials import build_network, ensure_episode_lists, eval_settings, evaluate_trained, trial_specs


def test_trial_evaluation_augments_support_with_the_recipe_transform(tmp_path, monkeypatch):
    import trainers.fewshot as fewshot
    from trainers.data import load_split

    cfg = parse_config({
        "experiment": {"name": "aug", "seed": 0, "out": str(tmp_path)},
        "dataset": {"name": "synthetic", "image_size": 16,
                    "options": {"train_classes": 4, "val_classes": 2, "test_classes": 3, "images_per_class": 4}},
        "search": {"methods": ["random"], "cells": [3], "init_channels": 4},
        "train": {"recipe": "synthetic"},
        "evaluate": {"ways": 3, "shots": [1], "queries": 2, "episodes": 3, "support_augment": 2},
    }, source="aug")
    ensure_episode_lists(cfg)
    row = {"search_id": "s", "method": "random", "seed": 0, "cells": 3, "device_seconds": 0.0,
           "genotype": "metanas_og_v2"}
    from search_spaces.genotypes import get_genotype

    row["genotype"] = get_genotype("metanas_og_v2").to_str()
    (spec,) = trial_specs(cfg, [row])
    used = []
    real = fewshot.make_augment
    monkeypatch.setattr(fewshot, "make_augment", lambda name, norm: used.append(name) or real(name, norm))
    split = load_split("synthetic", None, "test", image_size=16, seed=0, **cfg.dataset.options)
    torch.manual_seed(0)
    model = build_network(spec.genotype, 4, 4, 3, 3)
    places = [cfg.results_dir / "episode_lists"]
    summary, rows = evaluate_trained(model, eval_settings(spec), split, torch.device("cpu"), places)
    assert used == ["small"]  # the synthetic recipe's training augmentation
    assert 0.0 <= summary[1][0] <= 1.0 and len(rows) == 3
    plain, _ = evaluate_trained(model, eval_settings(spec.with_evaluate(support_augment=0)), split,
                                torch.device("cpu"), places)
    assert used == ["small"]  # no augmentation without support_augment
    assert 0.0 <= plain[1][0] <= 1.0
