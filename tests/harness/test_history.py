"""The `history` table: one row per trial and epoch, pinned schema, idempotent writes."""
from __future__ import annotations

import pytest

from harness import store
from harness.trials import history_rows, restored_history, trial_specs, write_history_rows
from trainers.rfs import EpochResult

from test_pipeline import pipeline_config


@pytest.fixture()
def spec(tmp_path):
    cfg = pipeline_config(tmp_path / "res")
    row = {"search_id": "synthetic-random-s0-c3", "method": "random", "seed": 0, "cells": 3, "genotype": "g",
           "device_seconds": 0.0}
    (spec,) = trial_specs(cfg, [row])
    return spec


def epochs(*losses: float) -> list[EpochResult]:
    return [EpochResult(epoch=i + 1, loss=loss, acc=0.1 * (i + 1), lr=0.05, seconds=1.0 + i)
            for i, loss in enumerate(losses)]


def test_history_rows_match_the_pinned_schema(spec):
    rows = history_rows(spec, epochs(2.0, 1.5))
    table = store.rows_to_table("history", rows)
    assert table.schema == store.SCHEMAS["history"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1] == {"experiment": "e2e", "trial_id": spec.trial_id, "dataset": "synthetic",
                       "method": "random", "seed": 0, "cells": 3, "epoch": 2, "loss": 1.5, "train_acc": 0.2,
                       "lr": 0.05, "seconds": 2.0}


def test_a_retried_epoch_overwrites_its_row(spec):
    write_history_rows(spec, epochs(2.0, 1.5))
    # The trial crashed after epoch 2 and restarted from epoch 1's checkpoint: epoch 2 ran again.
    write_history_rows(spec, epochs(2.0, 1.4, 1.1))
    frame = store.read_table(spec.results_dir, "history")
    assert list(frame["epoch"]) == [1, 2, 3]
    assert list(frame["loss"]) == [2.0, 1.4, 1.1]
    assert len(store.table_files(spec.results_dir, "history")) == 1


def test_duplicate_epochs_are_refused(spec):
    with pytest.raises(ValueError, match="duplicate epochs"):
        write_history_rows(spec, epochs(2.0) + epochs(1.0))


def test_train_accuracy_in_percent_is_refused(spec):
    rows = history_rows(spec, epochs(2.0))
    rows[0]["train_acc"] = 55.0
    with pytest.raises(ValueError, match="train_acc"):
        store.write_rows(spec.results_dir, "history", "x", rows)


def test_restored_history_reads_a_pretrain_checkpoint(tmp_path):
    """What a restarted trial starts its curve from: the epochs the checkpoint recorded."""
    import torch

    from trainers.data import load_split
    from trainers.rfs import TrainConfig, get_recipe, pretrain

    split = load_split("synthetic", None, "train", train_classes=3, val_classes=2, test_classes=2,
                       images_per_class=6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    cfg = get_recipe("synthetic").replace(epochs=2, lr_decay_epochs=(), batch_size=8)
    assert isinstance(cfg, TrainConfig)
    result = pretrain(model, split, cfg, device="cpu", checkpoint_dir=tmp_path, progress=False)
    restored = restored_history(tmp_path / "checkpoint.pt")
    assert [e.epoch for e in restored] == [1, 2]
    assert [e.loss for e in restored] == [e.loss for e in result.history]
