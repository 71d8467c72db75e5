"""Growth end to end (real Ray, Tune): `run`, add a seed and a shot count, rerun: only the new
work runs and every finished file keeps its bytes and mtime; a changed [train] setting is
refused with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import store
from harness.cli import main

pytestmark = pytest.mark.slow

EXPERIMENT = """
[experiment]
name = "grow"
seed = 1
out = "{out}"

[dataset]
name = "synthetic"
options = {{ train_classes = 6, val_classes = 3, test_classes = 5, images_per_class = 12 }}

[search]
methods = ["random"]
seeds = [0]
cells = [3]
init_channels = 4

[train]
recipe = "synthetic"
epochs = 1
batch_size = 32

[evaluate]
ways = 3
shots = [1]
queries = 4
episodes = 6
"""


def files(folder: Path, *tops: str) -> dict[str, tuple[bytes, int]]:
    """Relative path -> (bytes, mtime) of every file under `folder`/`tops` (all when none)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"
            and (not tops or p.relative_to(folder).parts[0] in tops)}


RESULTS = ("searches", "candidates", "trials", "episodes", "history", "models", "cells", "episode_lists")


@pytest.fixture(scope="module")
def grown(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("growth")
    path = tmp / "grow.toml"
    path.write_text(EXPERIMENT.format(out=tmp))
    run = ["run", str(path), "--no-progress"]
    assert main(run) == 0
    folder = tmp / "grow"
    first = files(folder, *RESULTS)
    grow = ["--set", "search.seeds=[0, 1]", "--set", "evaluate.shots=[1, 5]"]
    assert main(run + grow) == 0
    return folder, first, run + grow


def test_finished_files_keep_their_bytes_and_mtime(grown):
    folder, first, _ = grown
    after = files(folder, *RESULTS)
    assert {k: after[k] for k in first} == first
    new = sorted(set(after) - set(first))
    assert "models/synthetic-random-s1-c3.pt" in new and "trials/synthetic-random-s1-c3.parquet" in new
    # the added shot count of the finished trial: its own file, from the saved model
    assert "episodes/synthetic-random-s0-c3-5shot.parquet" in new
    assert "episode_lists/synthetic-test-3w5s4q-6e-seed1.npz" in new


def test_only_the_new_trial_was_trained(grown):
    folder, _, _ = grown
    records = json.loads((folder / "state" / "tune_experiments.json").read_text())["experiments"]
    assert [sorted(r["trials"]) for r in records] == [["synthetic-random-s0-c3"], ["synthetic-random-s1-c3"]]
    history = store.read_table(folder, "history")
    assert sorted(history["trial_id"]) == ["synthetic-random-s0-c3", "synthetic-random-s1-c3"]  # one epoch each


def test_every_trial_has_both_shot_counts_in_the_tables_and_the_report(grown):
    folder, _, _ = grown
    episodes = store.read_table(folder, "episodes")
    counts = episodes.groupby(["trial_id", "shots"]).size().to_dict()
    assert counts == {(t, k): 6 for t in ("synthetic-random-s0-c3", "synthetic-random-s1-c3") for k in (1, 5)}
    from harness.pipeline import read_results

    trials = read_results(folder)["trials"].set_index("trial_id")
    assert trials["acc_5shot"].between(0, 1).all() and trials["acc_1shot"].between(0, 1).all()
    # on disk the finished trial's row still says what it was evaluated on when it ran
    assert store.read_table(folder, "trials").set_index("trial_id")["acc_5shot"].isna().tolist() == [True, False]


def test_the_config_history_says_what_changed(grown):
    folder, _, _ = grown
    lines = (folder / "config_history" / "changes.txt").read_text().splitlines()
    assert len(lines) == 2 and "first recorded config" in lines[0]
    assert "evaluate.shots: [1] -> [1, 5]" in lines[1] and "search.seeds: [0] -> [0, 1]" in lines[1]


def test_a_rerun_does_nothing_and_writes_nothing(grown, monkeypatch):
    folder, _, run = grown
    before = files(folder, *RESULTS, "config_history", "identities.json", "state", "config.toml")
    monkeypatch.setattr("harness.ray_session.ensure_ray", lambda *a, **k: pytest.fail("Ray was started"))
    # the report is rewritten on every run (not part of the results); here it is left out
    monkeypatch.setattr("harness.pipeline.report_stage", lambda cfg: None)
    monkeypatch.setattr("harness.cmd_run._print_report", lambda files: None)
    assert main(run) == 0
    assert files(folder, *RESULTS, "config_history", "identities.json", "state", "config.toml") == before


def test_changed_epochs_are_refused_naming_the_trials_and_nothing_is_written(grown, capsys):
    folder, _, run = grown
    before = files(folder)
    capsys.readouterr()
    assert main(run + ["--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "trial synthetic-random-s0-c3 (train.epochs 1 -> 2)" in err
    assert "trial synthetic-random-s1-c3 (train.epochs 1 -> 2)" in err
    assert "--fresh" in err and "experiment.name" in err
    assert files(folder) == before


def test_the_added_shot_count_is_the_saved_models_own_evaluation(grown):
    import torch

    from harness.pipeline import evaluate_model_file
    from harness.trials import EvalOverrides

    folder, _, _ = grown
    episodes = store.read_table(folder, "episodes")
    added = episodes[(episodes["trial_id"] == "synthetic-random-s0-c3") & (episodes["shots"] == 5)]
    # `evaluate --shots 5` samples the experiment's 5-shot episodes afresh from the same seed
    _, summary = evaluate_model_file(folder / "models" / "synthetic-random-s0-c3.pt", EvalOverrides(shots=5),
                                     torch.device("cpu"))
    assert summary[5][0] == pytest.approx(added["accuracy"].mean(), abs=1e-12)


def test_a_trial_whose_rows_were_deleted_runs_again_alone(grown):
    """Tune's record calls it finished: that experiment is moved aside and only the trial
    without rows trains again, in a new experiment; every other file is untouched."""
    folder, _, run = grown
    gone = "synthetic-random-s1-c3"
    (folder / "trials" / f"{gone}.parquet").unlink()
    keep = {k: v for k, v in files(folder, *RESULTS).items() if gone not in k}
    assert main(run) == 0
    after = files(folder, *RESULTS)
    assert {k: after[k] for k in keep} == keep
    assert f"trials/{gone}.parquet" in after
    assert len(list((folder / "tune").glob("trials-*.stale-*"))) == 1
    records = json.loads((folder / "state" / "tune_experiments.json").read_text())["experiments"]
    assert sorted(sorted(r["trials"]) for r in records) == [["synthetic-random-s0-c3"], [gone]]
