"""Growth: units of work identified by exactly their settings; only new work runs; a change
to finished work is refused before anything is written; the config keeps its history."""
from __future__ import annotations

import argparse
import datetime as dt
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.config import parse_config
from harness.errors import UserError
from harness.growth import (accuracies_with_added_evaluations, check_growth, planned_units, record_units, refusal,
                            stale_units, units_on_disk)
from harness.identity import (Unit, changed_settings, evaluation_identity, search_identity,
                              trial_identity)
from harness.tune_records import plan_tune_runs

BASE = {
    "experiment": {"name": "g", "seed": 1},
    "dataset": {"name": "synthetic",
                "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 12}},
    "search": {"methods": ["metantk", "regions", "random"], "seeds": [0], "cells": [3], "init_channels": 4},
    "train": {"recipe": "synthetic", "epochs": 1, "batch_size": 32},
    "evaluate": {"ways": 3, "shots": [1], "queries": 4, "episodes": 6},
}


def config(out: Path | str = "results", **changes: dict) -> object:
    data = {table: dict(values) for table, values in BASE.items()}
    data["experiment"]["out"] = str(out)
    for table, values in changes.items():
        data.setdefault(table, {}).update(values)
    return parse_config(data, source="growth")


# ----------------------------------------------------------------------------- identities


def test_a_search_is_identified_by_its_own_settings_not_the_other_seeds_methods_or_cells():
    one = config()
    grown = config(search={"seeds": [0, 7], "methods": ["metantk", "regions", "random", "tenas"], "cells": [3, 5]})
    for method in ("metantk", "regions", "random"):
        assert search_identity(one, method, 0, 3) == search_identity(grown, method, 0, 3)
    assert search_identity(grown, "metantk", 7, 3) != search_identity(grown, "metantk", 0, 3)


@pytest.mark.parametrize("key, value, changes", [
    ("tasks", 5, {"metantk"}),                      # the kernel batch: not the regions or a random cell
    ("region_inputs", 60, {"metantk", "regions"}),  # the region inputs: not a random cell
    ("repeats", 1, {"metantk", "regions"}),
    ("init_channels", 6, {"metantk", "regions", "random"}),  # the width every searches row records
    ("candidates_per_job", 2, set()),               # only groups the work
])
def test_a_search_key_changes_exactly_the_searches_that_read_it(key, value, changes):
    before, after = config(), config(search={key: value})
    changed = {m for m in ("metantk", "regions", "random")
               if search_identity(before, m, 0, 3) != search_identity(after, m, 0, 3)}
    assert changed == changes


def test_a_per_cells_kernel_changes_only_the_searches_with_that_many_cells():
    before = config(search={"cells": [3, 5]})
    after = config(search={"cells": [3, 5], "kernel_by_cells": {"5": {"algorithm": "anil", "reg": 1e-5}}})
    assert search_identity(before, "metantk", 0, 3) == search_identity(after, "metantk", 0, 3)
    changes = changed_settings(search_identity(before, "metantk", 0, 5), search_identity(after, "metantk", 0, 5))
    assert changes == [("kernel.algorithm", "maml", "anil"), ("kernel.reg", 1e-3, 1e-5)]
    assert search_identity(before, "regions", 0, 5) == search_identity(after, "regions", 0, 5)


def test_a_trial_adds_its_training_and_an_evaluation_its_shot_count():
    before, after = config(), config(train={"epochs": 2})
    search = search_identity(before, "random", 0, 3)
    assert search == search_identity(after, "random", 0, 3)
    trial_a, trial_b = trial_identity(before, search, 0), trial_identity(after, search, 0)
    assert changed_settings(trial_a, trial_b) == [("train.epochs", 1, 2)]
    assert trial_identity(before, search, 1) != trial_a  # the training seed
    more_episodes = config(evaluate={"episodes": 9})
    assert trial_identity(more_episodes, search, 0) == trial_a
    assert (changed_settings(evaluation_identity(before, trial_a, 1), evaluation_identity(more_episodes, trial_a, 1))
            == [("evaluate.episodes", 6, 9)])
    assert evaluation_identity(before, trial_a, 1) != evaluation_identity(before, trial_a, 5)


def test_identities_are_plain_json_with_infinity_spelled_out():
    import json

    ident = search_identity(config(), "metantk", 0, 3)
    assert ident["kernel.inner_time"] == "inf"
    assert json.loads(json.dumps(ident, allow_nan=False)) == ident


def test_adding_seeds_and_shot_counts_only_adds_units():
    before = planned_units(config())
    after = planned_units(config(search={"seeds": [0, 1]}, evaluate={"shots": [1, 5]}))
    assert set(before) < set(after)
    assert all(after[k].identity == u.identity for k, u in before.items())
    added = set(after) - set(before)
    assert "trial:synthetic-random-s1-c3" in added and "evaluation:synthetic-random-s0-c3:5shot" in added


# ----------------------------------------------------------------------------- stale work


def _units() -> dict[str, Unit]:
    s = Unit("search:s", {"a": 1})
    t = Unit("trial:s", {"a": 1, "e": 2}, s.key)
    v = Unit("evaluation:s:1shot", {"a": 1, "e": 2, "k": 1}, t.key)
    return {u.key: u for u in (s, t, v)}


def test_stale_units_name_the_highest_changed_unit_and_hide_what_builds_on_it():
    planned = _units()
    recorded = {k: dict(u.identity) for k, u in planned.items()}
    everything = set(planned)
    assert stale_units(recorded, planned, everything) == []
    changed_trial = {**recorded, "trial:s": {"a": 1, "e": 3}, "evaluation:s:1shot": {"a": 1, "e": 3, "k": 1}}
    ((unit, changes),) = stale_units(changed_trial, planned, everything)
    assert unit.key == "trial:s" and changes == [("e", 3, 2)]
    # not on disk: new work, whatever its record says
    assert stale_units(changed_trial, planned, {"search:s"}) == []
    # no record at all (written by `train`, or before the ledger): taken as it is
    assert stale_units({}, planned, everything) == []


def test_the_refusal_is_one_line_naming_units_changes_and_ways_out(tmp_path):
    planned = _units()
    line = refusal(tmp_path, [(planned["trial:s"], [("train.epochs", 1, 2)])])
    assert "\n" not in line
    assert "trial s (train.epochs 1 -> 2)" in line
    assert "--fresh" in line and "experiment.name" in line


# ----------------------------------------------------------------------------- without Ray


def _tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _search_stage(cfg):
    from harness.pipeline import results_folder
    from harness.search import run_searches

    with results_folder(cfg, search=True, train=False):
        return run_searches(cfg, None, resume=True, progress=False)


def test_added_seeds_search_only_the_new_seed_and_leave_finished_files_alone(tmp_path):
    fixed = {"methods": ["random", "metanas"]}
    first = _search_stage(config(tmp_path, search=fixed))
    parquet = {k: v for k, v in _tree(tmp_path / "g").items() if k.startswith(("searches/", "cells/"))}
    rows = _search_stage(config(tmp_path, search={**fixed, "seeds": [0, 1]}))
    assert [r["search_id"] for r in rows] == ["synthetic-random-s0-c3", "synthetic-random-s1-c3",
                                              "synthetic-metanas-s0-c3", "synthetic-metanas-s1-c3"]
    after = _tree(tmp_path / "g")
    assert {k: after[k] for k in parquet} == parquet  # bytes and mtime
    assert {r["search_id"]: r["genotype"] for r in rows if r["seed"] == 0} == {r["search_id"]: r["genotype"]
                                                                               for r in first}
    # dropping the seed again keeps its rows and its saved state
    _search_stage(config(tmp_path, search=fixed))
    assert "searches/synthetic-random-s1-c3.parquet" in _tree(tmp_path / "g")


def test_a_changed_setting_of_a_finished_search_is_refused_before_anything_is_written(tmp_path):
    _search_stage(config(tmp_path, search={"methods": ["random"]}))
    before = _tree(tmp_path / "g")
    changed = config(tmp_path, experiment={"seed": 2}, search={"methods": ["random"], "seeds": [0, 1]})
    with pytest.raises(UserError) as info:
        _search_stage(changed)
    assert "search synthetic-random-s0-c3 (experiment.seed 1 -> 2)" in str(info.value)
    assert "--fresh" in str(info.value)
    assert _tree(tmp_path / "g") == before


def test_units_on_disk_come_from_every_table_and_the_search_state(tmp_path):
    from harness import store

    store.write_rows(tmp_path, "candidates", "x-metantk-s0-c3-r01", [])
    store.write_rows(tmp_path, "history", "x-random-s0-c3", [])
    store.write_rows(tmp_path, "episodes", "x-random-s0-c3", [
        {"experiment": "e", "trial_id": "x-random-s0-c3", "dataset": "x", "method": "random", "seed": 0, "cells": 3,
         "ways": 3, "shots": 5, "queries": 4, "episode": 0, "accuracy": 0.5}])
    (tmp_path / "episodes" / "broken.parquet").write_bytes(b"not parquet")
    store.write_json_atomic(tmp_path / "state" / "searches.json", {"searches": [
        {"search_id": "x-tenas-s0-c3", "round": 2, "stage": "ops"}, {"search_id": "x-tenas-s1-c3", "round": 0}]})
    assert units_on_disk(tmp_path) == {"search:x-metantk-s0-c3", "trial:x-random-s0-c3",
                                       "evaluation:x-random-s0-c3:5shot", "search:x-tenas-s0-c3"}


def test_a_folder_without_a_ledger_takes_its_settings_from_config_toml(tmp_path):
    from harness.config import to_toml
    from harness.growth import LEDGER_FILE

    cfg = config(tmp_path, search={"methods": ["random"]})
    _search_stage(cfg)
    (cfg.results_dir / LEDGER_FILE).unlink()  # as written before the ledger existed
    (cfg.results_dir / "config.toml").write_text(to_toml(cfg))
    from harness.growth import recorded_identities
    from harness.search import check_resumable as check

    def check_resumable(c):  # as the pipeline calls it: against the recorded identities
        check(c, recorded=recorded_identities(c.results_dir))

    wider = config(tmp_path, search={"methods": ["random"], "init_channels": 8})
    with pytest.raises(UserError, match=r"search.init_channels 4 -> 8"):
        check_growth(wider, search=True, train=True)
    with pytest.raises(UserError, match=r"different experiment config for search synthetic-random-s0-c3"):
        check_resumable(wider)
    grown = config(tmp_path, search={"methods": ["random"], "seeds": [0, 3]})
    check_growth(grown, search=True, train=True)
    check_resumable(grown)


def test_record_units_merges_into_the_ledger(tmp_path):
    from harness.growth import read_ledger

    record_units(tmp_path, [Unit("search:a", {"x": math.inf})])
    record_units(tmp_path, [Unit("search:b", {"x": 1})])
    assert read_ledger(tmp_path) == {"search:a": {"x": "inf"}, "search:b": {"x": 1}}


# ----------------------------------------------------------------------------- Tune experiments


def test_a_new_seed_runs_in_a_new_experiment_over_the_new_trials_alone():
    records = [{"name": "trials-old", "storage": "/s", "trials": {"a": "da", "b": "db"}}]
    runs = plan_tune_runs(records, "/s", {"a": "da", "b": "db", "c": "dc"}, {"c"}, lambda ids: "new-" + "+".join(ids))
    assert runs == [("new-c", ["c"], False)]


def test_an_interrupted_experiment_is_restored_when_its_specs_are_unchanged():
    records = [{"name": "trials-old", "storage": "/s", "trials": {"a": "da", "b": "db"}}]
    new = lambda ids: "new-" + "+".join(ids)  # noqa: E731
    assert plan_tune_runs(records, "/s", {"a": "da", "b": "db", "c": "dc"}, {"b", "c"}, new) == [
        ("trials-old", ["a", "b"], True), ("new-c", ["c"], False)]
    # b's spec changed (another shot count, a changed recipe): it starts over in the new grid
    assert plan_tune_runs(records, "/s", {"a": "da", "b": "db2"}, {"b"}, new) == [("new-b", ["b"], False)]
    # another storage holds none of these experiments
    assert plan_tune_runs(records, "/t", {"a": "da", "b": "db"}, {"b"}, new) == [("new-b", ["b"], False)]


# ----------------------------------------------------------------------------- added evaluations


def test_accuracies_of_added_shot_counts_come_from_the_episodes():
    trials = pd.DataFrame({"trial_id": ["t", "u"], "acc_1shot": [0.5, 0.25], "ci_1shot": [0.1, 0.1],
                           "acc_5shot": [math.nan, math.nan], "ci_5shot": [math.nan, math.nan]})
    episodes = pd.DataFrame({"trial_id": ["t"] * 4 + ["u"] * 2, "shots": [1, 1, 5, 5, 1, 1],
                             "accuracy": [0.9, 0.9, 0.6, 0.8, 0.1, 0.2]})
    out = accuracies_with_added_evaluations(trials, episodes)
    assert out["acc_1shot"].tolist() == [0.5, 0.25]  # the trial's own summary is kept
    assert out.loc[0, "acc_5shot"] == pytest.approx(0.7) and out.loc[0, "ci_5shot"] > 0
    assert math.isnan(out.loc[1, "acc_5shot"])
    assert math.isnan(trials.loc[0, "acc_5shot"])  # the input is not changed


# ----------------------------------------------------------------------------- config history


def test_the_config_keeps_its_history(tmp_path):
    from harness.config import to_toml
    from harness.config_history import CHANGES_FILE, HISTORY_DIR, record_config

    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    text = to_toml(config(tmp_path))
    first = record_config(tmp_path, text, now=t0)
    assert first.read_text() == text == (tmp_path / "config.toml").read_text()
    assert record_config(tmp_path, text.replace("# resolved from growth", "# resolved from elsewhere"),
                         now=t0 + dt.timedelta(hours=1)) is None  # same settings: nothing written
    grown = to_toml(config(tmp_path, search={"seeds": [0, 1]}))
    second = record_config(tmp_path, grown, now=t0 + dt.timedelta(hours=2))
    assert (tmp_path / "config.toml").read_text() == grown and first.read_text() == text
    lines = (tmp_path / HISTORY_DIR / CHANGES_FILE).read_text().splitlines()
    assert lines == [f"{first.stem}  first recorded config", f"{second.stem}  search.seeds: [0] -> [0, 1]"]


def test_a_config_from_before_the_history_is_kept_first(tmp_path):
    from harness.config import to_toml
    from harness.config_history import CHANGES_FILE, HISTORY_DIR, record_config

    old = to_toml(config(tmp_path))
    (tmp_path / "config.toml").write_text(old)
    record_config(tmp_path, to_toml(config(tmp_path, evaluate={"shots": [1, 5]})))
    copies = sorted((tmp_path / HISTORY_DIR).glob("*.toml"))
    assert len(copies) == 2 and copies[0].read_text() == old
    assert "evaluate.shots: [1] -> [1, 5]" in (tmp_path / HISTORY_DIR / CHANGES_FILE).read_text()


def test_a_fresh_search_start_rewrites_its_rows_a_resumed_one_does_not(tmp_path):
    from harness.search import run_searches

    cfg = config(tmp_path, search={"methods": ["random"]})
    run_searches(cfg, None, progress=False)
    row = cfg.results_dir / "searches" / "synthetic-random-s0-c3.parquet"
    stamp = row.stat().st_mtime_ns
    run_searches(cfg, None, resume=True, progress=False)
    assert row.stat().st_mtime_ns == stamp
    run_searches(cfg, None, resume=False, progress=False)  # `search` without --resume starts over
    assert row.stat().st_mtime_ns != stamp
