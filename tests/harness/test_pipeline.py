"""End to end: search, Tune trials, report; a failing trial is retried without duplicated rows."""
from __future__ import annotations

import pytest

from harness import store
from harness.config import parse_config
from tune_faults import failing_once_after_epoch_1

pytestmark = pytest.mark.slow


def pipeline_config(out, name="e2e"):
    return parse_config({
        "experiment": {"name": name, "seed": 1, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 12}},
        "search": {"methods": ["metanas", "random"], "seeds": [0], "cells": [3], "init_channels": 4},
        "train": {"recipe": "synthetic", "epochs": 2, "batch_size": 32},
        "evaluate": {"ways": 3, "shots": [1, 5], "queries": 4, "episodes": 6},
        "resources": {"max_failures": 2},
    }, source="e2e")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    from harness import trials
    from harness.search import run_searches
    from harness.trials import run_trials, trial_label, trial_specs

    cfg = pipeline_config(tmp_path_factory.mktemp("e2e"))
    searches = run_searches(cfg, None, progress=False)
    specs = trial_specs(cfg, searches)
    # The first trial raises once after epoch 1: Tune must restart it from that checkpoint.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trials, "run_trial", failing_once_after_epoch_1(trial_label(specs[0])))
        run_trials(cfg, specs, verbose=0)
    return cfg, specs


def test_every_table_is_written(finished):
    cfg, specs = finished
    trials = store.read_table(cfg.results_dir, "trials")
    assert sorted(trials["trial_id"]) == sorted(s.trial_id for s in specs)
    assert (trials["epochs"] == 2).all()
    assert trials["acc_1shot"].between(0, 1).all() and trials["acc_5shot"].between(0, 1).all()
    assert (trials["params"] > 0).all()
    episodes = store.read_table(cfg.results_dir, "episodes")
    assert len(episodes) == len(specs) * 2 * 6  # trials x shot settings x episodes
    searches = store.read_table(cfg.results_dir, "searches")
    assert set(searches["method"]) == {"metanas", "random"}
    assert len(list((cfg.results_dir / "models").glob("*.pt"))) == len(specs)
    history = store.read_table(cfg.results_dir, "history")  # the retried trial's epochs too, once each
    assert sorted(zip(history["trial_id"], history["epoch"])) == sorted((s.trial_id, e) for s in specs
                                                                        for e in (1, 2))


def test_failed_trial_was_retried_without_duplicate_rows(finished):
    cfg, specs = finished
    # the failure really happened: Tune recorded the trial's error before it restored it
    errors = [p.read_text() for p in (cfg.results_dir / "tune").glob("*/*/error.txt")]
    assert any("injected failure after epoch 1" in text for text in errors)
    episodes = store.read_table(cfg.results_dir, "episodes")
    dup = episodes.duplicated(["trial_id", "shots", "episode"]).sum()
    assert dup == 0
    trials = store.read_table(cfg.results_dir, "trials")
    assert trials["trial_id"].is_unique


def test_rerun_does_no_work(finished, monkeypatch):
    from harness import trials as trials_mod

    cfg, specs = finished
    called = []
    monkeypatch.setattr("harness.ray_session.ensure_ray", lambda *a, **k: called.append(1))
    before = {p: p.stat().st_mtime_ns for p in (cfg.results_dir / "trials").glob("*.parquet")}
    trials_mod.run_trials(cfg, specs, verbose=0)
    after = {p: p.stat().st_mtime_ns for p in (cfg.results_dir / "trials").glob("*.parquet")}
    assert before == after and not called


def test_report_from_the_run(finished, capsys):
    from harness.cli import main

    cfg, _ = finished
    assert main(["report", str(cfg.results_dir)]) == 0
    out = capsys.readouterr().out
    assert "metanas" in out and "random" in out
    assert (cfg.results_dir / "report" / "table1.csv").is_file()


def test_evaluate_command_on_a_trained_model(finished, capsys):
    from harness.cli import main

    cfg, specs = finished
    model = cfg.results_dir / "models" / f"{specs[0].trial_id}.pt"
    code = main(["evaluate", "--checkpoint", str(model), "--dataset", "synthetic", "--ways", "3", "--shots", "1",
                 "--queries", "3", "--episodes", "4", "--no-progress"])
    assert code == 0
    assert "3-way 1-shot, 4 episodes" in capsys.readouterr().out


def test_evaluate_with_only_the_checkpoint_reproduces_each_trial(finished):
    from harness.pipeline import evaluate_model_file
    from harness.trials import EvalOverrides

    cfg, specs = finished
    trials = store.read_table(cfg.results_dir, "trials").set_index("trial_id")
    for spec in specs:
        _, summary = evaluate_model_file(cfg.results_dir / "models" / f"{spec.trial_id}.pt", EvalOverrides(), "cpu")
        row = trials.loc[spec.trial_id]
        assert summary[1] == (row["acc_1shot"], row["ci_1shot"])
        assert summary[5] == (row["acc_5shot"], row["ci_5shot"])


def test_evaluate_command_rejects_a_foreign_file(tmp_path, capsys):
    from harness.cli import main

    bogus = tmp_path / "x.pt"
    import torch

    torch.save({"weights": 1}, bogus)
    assert main(["evaluate", "--checkpoint", str(bogus), "--dataset", "synthetic"]) == 2
    assert "not a metantk-nas model file" in capsys.readouterr().err


def test_trial_specs_resolve_a_relative_dataset_root(tmp_path, monkeypatch):
    """Tune runs trials in their own working directory: a relative --root must be made absolute."""
    from harness.scoring import spec_from_config
    from harness.trials import trial_specs

    monkeypatch.chdir(tmp_path)
    cfg = pipeline_config(tmp_path).replace("dataset", root="data/omniglot")
    row = {"search_id": "x", "method": "random", "seed": 0, "cells": 3, "genotype": "g", "device_seconds": 0.0}
    (spec,) = trial_specs(cfg, [row])
    assert spec.data.root == str(tmp_path / "data" / "omniglot")
    assert spec_from_config(cfg, 3).data.root == str(tmp_path / "data" / "omniglot")


def test_trial_network_is_seeded_with_torchs_default_init(tmp_path):
    """Same trial -> the same weights bit for bit; another trial differs; the global RNG is untouched;
    and the weights follow torch's default init (|w| <= 1/sqrt(fan_in)), not the search's He-normal."""
    import math
    from dataclasses import replace

    import torch

    from harness.trials import seeded_network, trial_specs

    cfg = pipeline_config(tmp_path)
    row = {"search_id": "synthetic-metanas-s0-c3", "method": "metanas", "seed": 0, "cells": 3,
           "genotype": "metanas_in_v2", "device_seconds": 0.0}
    from search_spaces.genotypes import resolve_genotype

    row["genotype"] = resolve_genotype("metanas_in_v2").to_str()
    (spec,) = trial_specs(cfg, [row])
    state = torch.random.get_rng_state()
    a, b = seeded_network(spec, 6, 3), seeded_network(spec, 6, 3)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = seeded_network(replace(spec, trial_id="another"), 6, 3)
    pa, pb, po = (dict(m.named_parameters()) for m in (a, b, other))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], po[k]) for k in pa)
    stem = a.stem[0].weight
    fan_in = stem.shape[1] * stem.shape[2] * stem.shape[3]
    assert stem.abs().max() <= 1 / math.sqrt(fan_in)
