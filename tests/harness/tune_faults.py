"""A trainable that fails once, for the tests of Tune's recovery (test_pipeline, test_stream_trials)."""
from __future__ import annotations

from typing import Any, Callable


def failing_once_after_epoch_1(label: str | None = None, marker_dir: str | None = None) -> Callable[..., Any]:
    """`harness.trials.run_trial` whose first attempt (no checkpoint yet) of trial `label` (any
    trial when None) raises after reporting epoch 1: a crash Tune must recover from. With
    `marker_dir`, a later attempt that Tune hands a checkpoint (a resumed trial) leaves the
    file `marker_dir/<trial label>`. A local function, so Ray ships it by value; it patches
    `ray.tune.report` inside the trial's own worker process only."""
    def trainable(config, specs, episode_lists, data=None):
        from pathlib import Path

        from ray import tune

        from harness import trials

        resumed = tune.get_checkpoint() is not None
        if resumed and marker_dir is not None:
            (Path(marker_dir) / config["trial"]).write_text("resumed")
        real_report = tune.report

        def report(metrics, checkpoint=None):
            real_report(metrics, checkpoint=checkpoint)
            if (not resumed and label in (None, config["trial"]) and metrics.get("epoch") == 1
                    and not metrics.get("done")):
                raise RuntimeError("injected failure after epoch 1 (test)")

        tune.report = report
        try:
            trials.run_trial(config, specs, episode_lists, data)
        finally:
            tune.report = real_report
    return trainable
