"""Accuracy columns come from `[evaluate] shots`: one (acc_<K>shot, ci_<K>shot) pair per shot
count, made in one place (`store.accuracy_columns`), used by the store, trials, report,
leaderboard, study and figures. The default shots keep today's column names exactly."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness import report, store


def _trial_row(method: str, seed: int, accs: dict[int, float]) -> dict:
    sid = f"synthetic-{method}-s{seed}-c3"
    row = {"experiment": "e", "dataset": "synthetic", "method": method, "seed": seed, "cells": 3,
           "trial_id": f"trial-{sid}", "search_id": sid, "genotype": "g", "params": 1000,
           "search_seconds": 1.0, "train_seconds": 2.0, "epochs": 1, "final_loss": 0.5,
           "final_train_acc": 0.9, "ways": 5, "episodes": 10, "device_kind": "cpu", "config_json": "{}"}
    for k, acc in accs.items():
        row |= {store.accuracy_column(k): acc, store.interval_column(k): 0.01}
    return row


def test_default_shots_keep_the_stored_column_names() -> None:
    assert store.accuracy_columns() == ["acc_1shot", "ci_1shot", "acc_5shot", "ci_5shot"]
    names = store.SCHEMAS["trials"].names
    assert names[names.index("episodes") + 1:names.index("device_kind")] == store.accuracy_columns()
    assert store.table_schema("trials", [5, 1]).equals(store.SCHEMAS["trials"])
    assert store.table_schema("proxies", (1, 5)).equals(store.SCHEMAS["proxies"])


def test_columns_follow_the_shot_counts() -> None:
    assert store.accuracy_columns([5, 3, 1]) == ["acc_1shot", "ci_1shot", "acc_3shot", "ci_3shot",
                                                 "acc_5shot", "ci_5shot"]
    assert store.shots_of(["acc_2shot", "ci_2shot", "ci_2shot_kind", "accuracy"]) == (2,)
    names = store.table_schema("trials", (2,)).names
    assert "acc_2shot" in names and "ci_2shot" in names and "acc_1shot" not in names
    assert store.table_schema("episodes", (2,)).equals(store.SCHEMAS["episodes"])  # no accuracy block


def test_a_two_shot_table_round_trips_and_is_checked(tmp_path: Path) -> None:
    row = _trial_row("metantk", 0, {2: 0.7})
    store.write_rows(tmp_path, "trials", "t0", [row])
    frame = store.read_table(tmp_path, "trials")
    assert frame["acc_2shot"].tolist() == [0.7] and "acc_1shot" not in frame.columns
    with pytest.raises(ValueError, match="accuracy 70.0 outside"):
        store.write_rows(tmp_path, "trials", "t1", [{**row, "acc_2shot": 70.0}])
    with pytest.raises(ValueError, match=r"missing columns \['ci_2shot'\]"):
        store.write_rows(tmp_path, "trials", "t1", [{k: v for k, v in row.items() if k != "ci_2shot"}])


def test_files_of_different_shot_counts_read_as_the_union_of_their_columns(tmp_path: Path) -> None:
    # an experiment whose [evaluate] shots grew: the older trial's row keeps its shot counts
    store.write_rows(tmp_path, "trials", "a", [_trial_row("metantk", 0, {2: 0.7})])
    store.write_rows(tmp_path, "trials", "b", [_trial_row("metantk", 1, {1: 0.6, 5: 0.8})])
    frame = store.read_table(tmp_path, "trials")
    assert [c for c in frame.columns if c.startswith(("acc_", "ci_"))] == [
        "acc_1shot", "ci_1shot", "acc_2shot", "ci_2shot", "acc_5shot", "ci_5shot"]
    assert frame["acc_2shot"].tolist()[0] == 0.7 and math.isnan(frame["acc_2shot"].tolist()[1])
    assert math.isnan(frame["acc_1shot"].tolist()[0]) and frame["acc_5shot"].tolist()[1] == 0.8


def test_an_empty_table_has_the_requested_shots(tmp_path: Path) -> None:
    assert list(store.read_table(tmp_path, "trials", shots=(3,)).columns)[-5:-3] == ["acc_3shot", "ci_3shot"]


def test_trial_rows_carry_the_evaluated_shots() -> None:
    from harness.trials import accuracy_row

    row = accuracy_row((5, 3, 1), {1: (0.5, 0.1), 5: (0.7, 0.2)})
    assert list(row) == ["acc_1shot", "ci_1shot", "acc_3shot", "ci_3shot", "acc_5shot", "ci_5shot"]
    assert (row["acc_1shot"], row["ci_5shot"]) == (0.5, 0.2)
    assert math.isnan(row["acc_3shot"]) and math.isnan(row["ci_3shot"])  # not evaluated
    row = accuracy_row((2,), {2: (0.6, 0.05)})
    assert row == {"acc_2shot": 0.6, "ci_2shot": 0.05}


@pytest.fixture()
def three_shot_trials() -> pd.DataFrame:
    rows = [_trial_row("metantk", s, {1: 0.60 + s / 100, 3: 0.70, 5: 0.80}) for s in range(2)]
    rows += [_trial_row("random", s, {1: 0.50, 3: 0.60 + s / 100, 5: 0.70}) for s in range(2)]
    return pd.DataFrame(rows)


def test_report_tables_have_one_column_group_per_shot(three_shot_trials: pd.DataFrame) -> None:
    t1 = report.table1(three_shot_trials, pd.DataFrame())
    assert [c for c in t1.columns if c.startswith(("acc_", "ci_"))] == [
        "acc_1shot", "ci_1shot", "ci_1shot_kind", "acc_3shot", "ci_3shot", "ci_3shot_kind",
        "acc_5shot", "ci_5shot", "ci_5shot_kind"]
    t1 = t1.set_index("method")
    assert t1.loc["metantk", "acc_1shot"] == pytest.approx(0.605)
    assert t1.loc["random", "acc_3shot"] == pytest.approx(0.605)
    md = report.table1_markdown(t1.reset_index())
    assert md.index("1-shot (%)") < md.index("3-shot (%)") < md.index("5-shot (%)")
    assert "60.50 ± " in md
    t2 = report.table2(three_shot_trials).set_index("method")
    assert t2.loc["metantk", "delta_3shot"] == pytest.approx(0.70 - 0.605)
    assert t2.loc["metantk", "delta_5shot"] == pytest.approx(0.10)
    md2 = report.table2_markdown(t2.reset_index())
    assert "Δ 3-shot vs random" in md2 and "+9.50" in md2


def test_report_of_a_two_shot_results_folder(tmp_path: Path) -> None:
    for method, acc in (("metantk", 0.75), ("random", 0.70)):
        row = _trial_row(method, 0, {2: acc})
        store.write_rows(tmp_path, "trials", row["trial_id"], [row])
    from harness.pipeline import build_report

    text = build_report(tmp_path, n_boot=0).markdown
    assert "2-shot (%)" in text and "75.00" in text and "1-shot" not in text


def test_correlations_use_the_proxies_shots() -> None:
    rows = [{"dataset": "d", "cn_ntk": float(i + 1), "acc_3shot": 1 - i / 10, "ci_3shot": 0.0} for i in range(6)]
    corr = report.correlation_table(pd.DataFrame(rows), n_boot=0)
    assert corr["target"].tolist() == ["acc_3shot"] and corr["kendall_tau"].iloc[0] == pytest.approx(1.0)


def test_study_axis_label_comes_from_the_column() -> None:
    from harness.report import target_label

    assert target_label("acc_1shot") == "5-way 1-shot accuracy"
    assert target_label("acc_3shot") == "5-way 3-shot accuracy"
