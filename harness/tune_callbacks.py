"""Tune callbacks that run on the driver (rows go home).

A trial may run on any node of a cluster, with no view of the driver's disk, so it writes
nothing there: it reports each epoch's metrics, and its last checkpoint carries its model
file and rows. `TrialRowsCallback` turns those into the results folder's files, on the
driver. Everything it writes is keyed by trial id and replaced on a second write, so a
retried epoch or a restored trial never duplicates a row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray import tune


def config_spec(config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `TrialSpec.to_dict()` of the trial whose Tune config is `config`: its own `spec`
    when it carries one (a trial streamed as its search ended, `harness.trial_stream`), else
    `specs[config["trial"]]` (a trial of a grid over labels)."""
    return config["spec"] if "spec" in config else specs[config["trial"]]


class TrialRowsCallback(tune.Callback):
    """Writes every row and model file of the trials into `results_dir`.

    `specs` maps Tune's trial label (`config["trial"]`) to `TrialSpec.to_dict()` (a streamed
    trial's config carries its own: `config_spec`). What is
    written comes from `harness.trials`, passed in (`record_epoch(results_dir, spec, metrics)`
    per epoch report, `collect_outputs(results_dir, checkpoint_folder, git_sha)` per finished
    trial), so this module needs nothing of the trials module that starts Tune with it. A
    module-level class of plain attributes (module-level functions pickle by name): Tune
    pickles its run config, callbacks included, with the experiment.
    """

    def __init__(self, results_dir: str | Path, specs: dict[str, dict[str, Any]], git_sha: str, *,
                 record_epoch: Callable[[Path, dict[str, Any], dict], Any],
                 collect_outputs: Callable[[Path, str, str], Any]) -> None:
        self.results_dir = Path(results_dir)
        self.specs = specs
        self.git_sha = git_sha  # the driver's code version, stamped on the trials rows
        self.record_epoch = record_epoch
        self.collect_outputs = collect_outputs

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        # epoch reports carry `epoch_seconds`; the final report carries the outputs instead
        if "epoch_seconds" in result:
            self.record_epoch(self.results_dir, config_spec(trial.config, self.specs), result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.collect_outputs(self.results_dir, folder, self.git_sha)
