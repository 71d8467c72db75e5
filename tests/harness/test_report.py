"""Tests of the report: tables from hand-made rows with known numbers, correlations, CLI."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import report, store
from harness.cli import main
from harness.pipeline import build_report, write_report

T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom


def trial(method: str, seed: int, acc1: float, acc5: float, *, cells: int = 5,
          dataset: str = "omniglot", params: int = 1_500_000, ci1: float = 0.004,
          ci5: float = 0.003, experiment: str = "exp") -> dict:
    """One valid `trials` row."""
    sid = f"{dataset}-{method}-s{seed}-c{cells}"
    return {
        "experiment": experiment, "dataset": dataset, "method": method, "seed": seed,
        "cells": cells, "trial_id": f"trial-{sid}", "search_id": sid, "genotype": "g",
        "params": params, "search_seconds": 1.0, "train_seconds": 2.0, "epochs": 3,
        "final_loss": 0.5, "final_train_acc": 0.9, "ways": 5, "episodes": 100,
        "acc_1shot": acc1, "ci_1shot": ci1, "acc_5shot": acc5, "ci_5shot": ci5,
        "device_kind": "cpu", "config_json": "{}",
    }


def search(method: str, seed: int, device_seconds: float, *, cells: int = 5,
           dataset: str = "omniglot", experiment: str = "exp") -> dict:
    """One valid `searches` row matching `trial`'s search_id."""
    return {
        "experiment": experiment, "dataset": dataset, "method": method, "seed": seed,
        "cells": cells, "search_id": f"{dataset}-{method}-s{seed}-c{cells}", "genotype": "g",
        "rounds": 6, "candidates": 500, "wall_seconds": 2 * device_seconds,
        "device_seconds": device_seconds, "workers": 2, "device_kind": "cpu", "params": 1,
        "algorithm": "maml", "inner_time": float("inf"), "reg": 1e-3,
    }


def proxy_row(i: int, *, cn: float, regions: float, acc1: float, acc5: float,
              params: int = 1000) -> dict:
    """One valid `proxies` row."""
    return {
        "experiment": "corr", "dataset": "omniglot", "genotype_id": f"g{i:02d}",
        "genotype": "g", "seed": 0, "cells": 3, "cn_metantk_maml": cn,
        "cn_metantk_anil": 2 * cn, "cn_ntk": cn, "regions": regions, "params": params,
        "acc_1shot": acc1, "ci_1shot": 0.01, "acc_5shot": acc5, "ci_5shot": 0.01,
        "train_seconds": 1.0,
    }


@pytest.fixture()
def trials_frame() -> pd.DataFrame:
    rows = [trial("metantk", s, a, a + 0.15) for s, a in enumerate((0.60, 0.62, 0.64))]
    rows += [trial("random", s, a, a + 0.10) for s, a in enumerate((0.58, 0.59, 0.63))]
    rows += [trial("tenas", 0, 0.61, 0.77, ci1=0.011, ci5=0.007)]
    return pd.DataFrame(rows)


@pytest.fixture()
def results_dir(tmp_path: Path, trials_frame: pd.DataFrame) -> Path:
    """A results folder with hand-made Parquet tables, a plot and a cell render."""
    root = tmp_path / "exp"
    for row in trials_frame.to_dict("records"):
        store.write_rows(root, "trials", row["trial_id"], [row])
    for s, sec in enumerate((100.0, 200.0, 300.0)):
        store.write_rows(root, "searches", f"metantk-{s}", [search("metantk", s, sec)])
    (root / "plots").mkdir()
    (root / "plots" / "scatter.png").write_bytes(b"png")
    (root / "cells").mkdir()
    (root / "cells" / "metantk_normal.svg").write_text("<svg/>")
    return root


def test_t_halfwidth_known_value() -> None:
    assert report.t_halfwidth([0.60, 0.62, 0.64]) == pytest.approx(T_975_2 * 0.02 / math.sqrt(3))
    assert math.isnan(report.t_halfwidth([0.6]))


def test_summarize_seeds_uses_episode_ci_for_one_seed() -> None:
    one = report.summarize_seeds(np.array([0.7]), np.array([0.01]))
    assert (one.n, one.mean, one.ci, one.kind) == (1, 0.7, 0.01, report.CI_EPISODES)
    # A seed whose evaluation did not run (NaN) is left out, not counted.
    two = report.summarize_seeds(np.array([0.6, math.nan, 0.64]), np.zeros(3))
    assert (two.n, two.kind) == (2, report.CI_SEEDS) and two.mean == pytest.approx(0.62)
    assert report.summarize_seeds(np.array([math.nan]), np.array([0.1])).kind == report.CI_NONE


def test_table1_known_numbers(trials_frame: pd.DataFrame) -> None:
    searches = pd.DataFrame([search("metantk", s, sec) for s, sec in
                             enumerate((100.0, 200.0, 300.0))])
    t1 = report.table1(trials_frame, searches)
    assert list(t1["method"]) == ["metantk", "tenas", "random"]  # METHOD_ORDER
    m = t1.set_index("method")
    assert m.loc["metantk", "seeds"] == 3
    assert m.loc["metantk", "acc_1shot"] == pytest.approx(0.62)
    assert m.loc["metantk", "ci_1shot"] == pytest.approx(T_975_2 * 0.02 / math.sqrt(3))
    assert m.loc["metantk", "acc_5shot"] == pytest.approx(0.77)
    assert m.loc["metantk", "ci_1shot_kind"] == report.CI_SEEDS
    assert m.loc["metantk", "params_m"] == pytest.approx(1.5)
    assert m.loc["metantk", "search_device_seconds"] == pytest.approx(200.0)
    assert math.isnan(m.loc["random", "search_device_seconds"])  # no search rows
    # One seed: the trial's own episode interval, flagged.
    assert m.loc["tenas", "ci_1shot"] == pytest.approx(0.011)
    assert m.loc["tenas", "ci_5shot_kind"] == report.CI_EPISODES
    md = report.table1_markdown(t1)
    assert "62.00 ± 4.97" in md and "61.00 ± 1.10 †" in md and "3.3 min" in md


def test_table1_searches_join_on_experiment(trials_frame: pd.DataFrame) -> None:
    searches = pd.DataFrame([search("metantk", 0, 50.0, experiment="other")])
    t1 = report.table1(trials_frame, searches).set_index("method")
    assert math.isnan(t1.loc["metantk", "search_device_seconds"])
    empty = store.read_table(Path("/nonexistent"), "searches")
    assert report.table1(trials_frame, empty)["search_device_seconds"].isna().all()


def test_table1_rows_per_dataset_and_cells() -> None:
    rows = [trial("metantk", 0, 0.6, 0.8, cells=c, dataset=d)
            for d in ("b_set", "a_set") for c in (8, 5)]
    t1 = report.table1(pd.DataFrame(rows), pd.DataFrame())
    assert list(zip(t1["dataset"], t1["cells"])) == [("a_set", 5), ("a_set", 8),
                                                     ("b_set", 5), ("b_set", 8)]


def test_table2_delta_to_random(trials_frame: pd.DataFrame) -> None:
    t2 = report.table2(trials_frame).set_index("method")
    assert set(t2.index) == {"metantk", "random", "tenas"}
    assert t2.loc["metantk", "delta_1shot"] == pytest.approx(0.62 - 0.60)
    diffs = np.array([0.60 - 0.58, 0.62 - 0.59, 0.64 - 0.63])  # paired by seed
    assert t2.loc["metantk", "delta_1shot_ci"] == pytest.approx(
        T_975_2 * diffs.std(ddof=1) / math.sqrt(3))
    assert t2.loc["random", "delta_5shot"] == pytest.approx(0.0)
    assert math.isnan(t2.loc["tenas", "delta_1shot_ci"])  # only one shared seed
    assert t2.loc["tenas", "delta_1shot"] == pytest.approx(0.61 - 0.60)
    md = report.table2_markdown(report.table2(trials_frame))
    assert "+2.00 ± " in md and "Δ 1-shot vs random" in md and "(baseline)" in md


def test_table2_without_random_has_no_delta(trials_frame: pd.DataFrame) -> None:
    t2 = report.table2(trials_frame[trials_frame["method"] != "random"])
    assert t2["delta_1shot"].isna().all() and t2["delta_5shot"].isna().all()


def test_tables_reject_frames_without_needed_columns(trials_frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"trials table lacks columns \['acc_5shot'\]"):
        report.table2(trials_frame.drop(columns="acc_5shot"))


def _monotone_proxies(n: int = 12) -> pd.DataFrame:
    acc = np.linspace(0.4, 0.9, n)
    rows = [proxy_row(i, cn=float(1000.0 / (i + 1)), regions=float(10 + i), acc1=float(a),
                      acc5=float(min(1.0, a + 0.05)), params=1000 + 10 * i)
            for i, a in enumerate(acc)]
    rows[0]["cn_ntk"] = math.inf  # worst architecture: infinite CN must rank worst
    return pd.DataFrame(rows)


def test_correlation_perfectly_monotone_proxies() -> None:
    corr = report.correlation_table(_monotone_proxies(), n_boot=200, seed=0)
    assert len(corr) == (4 + 1) * 2  # 4 proxies and the params baseline, 2 targets
    assert np.allclose(corr["kendall_tau"], 1.0) and np.allclose(corr["spearman_rho"], 1.0)
    # Every bootstrap resample of a perfectly monotone relation is perfectly monotone too.
    assert np.allclose(corr[["kendall_lo", "kendall_hi", "spearman_lo", "spearman_hi"]], 1.0)
    by = corr.set_index(["proxy", "target"])
    assert by.loc[("cn_ntk", "acc_1shot"), "n_inf"] == 1
    assert by.loc[("cn_metantk_maml", "acc_1shot"), "n"] == 12
    assert by.loc[("regions", "acc_5shot"), "orientation"] == "higher is better"
    assert by.loc[("params", "acc_1shot"), "orientation"] == "higher is better (baseline)"
    assert list(corr["proxy"].unique()) == [*report.PROXIES, "params"]  # baseline last


def test_params_baseline_leaves_the_proxies_numbers_unchanged() -> None:
    rng = np.random.default_rng(4)
    frame = pd.concat([_monotone_proxies(10).assign(dataset=d) for d in ("a_set", "b_set")],
                      ignore_index=True)
    frame["acc_1shot"] = rng.uniform(0.3, 0.9, size=len(frame))
    frame["params"] = rng.integers(1000, 2000, size=len(frame))
    with_params = report.correlation_table(frame, n_boot=50, seed=2)
    without = report.correlation_table(frame.drop(columns="params"), n_boot=50, seed=2)
    assert "params" not in set(without["proxy"])
    pd.testing.assert_frame_equal(
        with_params[with_params["proxy"] != "params"].reset_index(drop=True), without)
    base = with_params[with_params["proxy"] == "params"].set_index(["dataset", "target"])
    assert len(base) == 2 * 2
    sub = frame[frame["dataset"] == "b_set"]
    assert base.loc[("b_set", "acc_1shot"), "kendall_tau"] == pytest.approx(
        stats.kendalltau(sub["params"], sub["acc_1shot"]).statistic)  # not negated
    assert np.isfinite(base["kendall_lo"]).all()
    md = report.correlations_markdown(with_params)
    assert "| params (baseline) |" in md and "naive baseline" in md
    assert "naive baseline" not in report.correlations_markdown(without)


def test_correlation_sign_for_condition_numbers() -> None:
    frame = _monotone_proxies()
    # CN growing with accuracy is a bad proxy: the oriented correlation is -1.
    frame["cn_metantk_maml"] = np.arange(len(frame), dtype=float)
    frame["regions"] = -np.arange(len(frame), dtype=float)
    by = report.correlation_table(frame, n_boot=0).set_index(["proxy", "target"])
    assert by.loc[("cn_metantk_maml", "acc_1shot"), "kendall_tau"] == pytest.approx(-1.0)
    assert by.loc[("regions", "acc_1shot"), "spearman_rho"] == pytest.approx(-1.0)
    assert math.isnan(by.loc[("regions", "acc_1shot"), "kendall_lo"])  # n_boot=0


def test_correlation_drops_nan_and_handles_constant() -> None:
    frame = _monotone_proxies(6)
    frame.loc[2, "acc_5shot"] = math.nan
    frame["cn_metantk_anil"] = 5.0
    by = report.correlation_table(frame, n_boot=20).set_index(["proxy", "target"])
    assert by.loc[("cn_ntk", "acc_5shot"), "n"] == 5
    assert math.isnan(by.loc[("cn_metantk_anil", "acc_1shot"), "kendall_tau"])


def test_correlation_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(1)
    frame = _monotone_proxies(15)
    frame["acc_1shot"] = rng.uniform(0.3, 0.9, size=15)
    a = report.correlation_table(frame, n_boot=100, seed=7)
    b = report.correlation_table(frame, n_boot=100, seed=7)
    c = report.correlation_table(frame, n_boot=100, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["kendall_lo"].equals(c["kendall_lo"])
    assert ((a["kendall_lo"] <= a["kendall_tau"]) & (a["kendall_tau"] <= a["kendall_hi"])).all()


def _noise_vs_monotone(n: int = 20) -> pd.DataFrame:
    """cn_metantk_maml (and _anil) a perfect monotone function of accuracy; cn_ntk noise."""
    frame = _monotone_proxies(n)
    frame["cn_ntk"] = np.random.default_rng(11).permutation(n).astype(float)
    return frame


def test_proxy_difference_perfect_proxy_beats_noise() -> None:
    diff = report.proxy_difference_table(_noise_vs_monotone(), n_boot=300, seed=0)
    by = diff.set_index(["proxy_a", "proxy_b", "target"])
    row = by.loc[("cn_metantk_maml", "cn_ntk", "acc_1shot")]
    assert row["n"] == 20 and row["tau_a"] == pytest.approx(1.0)
    assert abs(row["tau_b"]) < 0.5 and row["tau_diff"] == pytest.approx(1.0 - row["tau_b"])
    assert 0 < row["diff_lo"] <= row["tau_diff"] <= row["diff_hi"]  # interval excludes 0
    assert row["frac_positive"] == 1.0
    # Reversed pair: the same evidence, the other sign.
    back = report.proxy_difference_table(_noise_vs_monotone(), pairs=[("cn_ntk", "cn_metantk_maml")],
                                         n_boot=300, seed=0)
    assert back.loc[0, "tau_diff"] == pytest.approx(-row["tau_diff"])
    assert back.loc[0, "diff_hi"] < 0 and back.loc[0, "frac_positive"] == 0.0
    md = report.proxy_differences_markdown(diff)
    assert "## " not in md and "P(τ(a) > τ(b))" in md and "excludes 0" in md
    assert f"| omniglot | acc_1shot | cn_metantk_maml | cn_ntk | 20 | +1.000 | {row['tau_b']:+.3f} |" in md
    assert "| cn_metantk_maml | params (baseline) |" in md


def test_proxy_difference_identical_proxies_is_exactly_zero() -> None:
    frame = _noise_vs_monotone(15)
    frame["acc_1shot"] = np.random.default_rng(2).uniform(0.3, 0.9, size=15)
    frame["cn_metantk_anil"] = 3 * frame["cn_metantk_maml"] + 1  # same ranking
    diff = report.proxy_difference_table(frame, pairs=[("cn_metantk_maml", "cn_metantk_anil")],
                                         n_boot=200, seed=5)
    assert len(diff) == 2
    assert (diff["tau_diff"] == 0.0).all()
    assert (diff["diff_lo"] == 0.0).all() and (diff["diff_hi"] == 0.0).all()
    assert (diff["frac_positive"] == 0.0).all()
    assert np.isfinite(diff["tau_a"]).all() and not np.allclose(diff["tau_a"], 1.0)


def test_proxy_difference_matches_a_manual_paired_bootstrap() -> None:
    frame = _noise_vs_monotone(12)
    frame["acc_1shot"] = np.random.default_rng(8).uniform(0.3, 0.9, size=12)
    frame.loc[3, "cn_ntk"] = math.nan      # dropped for pairs with cn_ntk only
    frame.loc[5, "cn_ntk"] = math.inf      # kept, ranks worst
    frame.loc[7, "acc_1shot"] = math.nan   # dropped for acc_1shot only
    n_boot = 40
    diff = report.proxy_difference_table(frame, n_boot=n_boot, seed=9)
    first = diff.iloc[0]  # first dataset, first pair, first target: the first draw
    assert (first["proxy_a"], first["proxy_b"], first["target"]) == (
        "cn_metantk_maml", "cn_ntk", "acc_1shot")
    keep = frame["cn_ntk"].notna() & frame["acc_1shot"].notna()
    sub = frame[keep]
    a = -sub["cn_metantk_maml"].to_numpy()
    b = np.where(np.isinf(sub["cn_ntk"]), -np.inf, -sub["cn_ntk"].to_numpy())
    y = sub["acc_1shot"].to_numpy()
    assert first["n"] == len(sub) == 10
    assert first["tau_a"] == pytest.approx(stats.kendalltau(a, y).statistic)
    assert first["tau_b"] == pytest.approx(stats.kendalltau(b, y).statistic)
    idx = np.random.default_rng(9).integers(0, len(sub), size=(n_boot, len(sub)))
    boot = np.array([stats.kendalltau(a[i], y[i]).statistic - stats.kendalltau(b[i], y[i]).statistic
                     for i in idx])  # both taus on the same resample
    assert first["diff_lo"] == pytest.approx(np.percentile(boot, 2.5))
    assert first["diff_hi"] == pytest.approx(np.percentile(boot, 97.5))
    assert first["frac_positive"] == pytest.approx((boot > 0).mean())
    by = diff.set_index(["proxy_a", "proxy_b", "target"])["n"]
    assert by[("cn_metantk_maml", "cn_ntk", "acc_5shot")] == 11
    assert by[("cn_metantk_maml", "cn_metantk_anil", "acc_1shot")] == 11
    assert by[("cn_metantk_maml", "cn_metantk_anil", "acc_5shot")] == 12


def test_proxy_difference_skips_pairs_with_a_missing_column() -> None:
    frame = _noise_vs_monotone(10).drop(columns=["params", "cn_metantk_anil"])
    diff = report.proxy_difference_table(frame, n_boot=10)
    assert list(zip(diff["proxy_a"], diff["proxy_b"])) == [("cn_metantk_maml", "cn_ntk")] * 2
    assert list(diff["target"]) == list(report.TARGETS)
    none = report.proxy_difference_table(frame, pairs=[("regions", "params")], n_boot=10)
    assert none.empty and "tau_diff" in none.columns
    with pytest.raises(ValueError, match="unknown proxy 'cn_typo'"):
        report.proxy_difference_table(frame, pairs=[("cn_typo", "params")])
    with pytest.raises(ValueError, match="n_boot must be >= 0"):
        report.proxy_difference_table(frame, n_boot=-1)


def test_proxy_difference_bootstrap_is_seeded() -> None:
    frame = _noise_vs_monotone(15)
    frame["acc_5shot"] = np.random.default_rng(6).uniform(0.3, 0.9, size=15)
    a = report.proxy_difference_table(frame, n_boot=100, seed=7)
    b = report.proxy_difference_table(frame, n_boot=100, seed=7)
    c = report.proxy_difference_table(frame, n_boot=100, seed=8)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_series_equal(a["tau_diff"], c["tau_diff"])  # point estimates: no rng
    assert not a["diff_lo"].equals(c["diff_lo"]) or not a["diff_hi"].equals(c["diff_hi"])
    fin = a[np.isfinite(a["diff_lo"])]
    assert len(fin) > 0
    assert ((fin["diff_lo"] <= fin["diff_hi"]) & fin["frac_positive"].between(0, 1)).all()
    none = report.proxy_difference_table(frame, n_boot=0)
    assert none["diff_lo"].isna().all() and none["frac_positive"].isna().all()
    pd.testing.assert_series_equal(none["tau_diff"], a["tau_diff"])


def test_format_helpers() -> None:
    assert report.format_seconds(45) == "45.0 s"
    assert report.format_seconds(738) == "12.3 min"
    assert report.format_seconds(1.54 * 3600) == "1.54 h"
    assert report.format_seconds(math.nan) == "–"
    assert report.format_delta(-0.0133, math.nan) == "-1.33"
    assert report.markdown_table(["a", "b"], [("x|y", 1)], "lr").splitlines()[2] == "| x\\|y | 1 |"


def test_write_report_files(results_dir: Path) -> None:
    files = write_report(results_dir, n_boot=50, figures=False)  # figures: test_report_figures.py
    out = results_dir / "report"
    assert dict(files) == {"report.md": out / "report.md", "table1.csv": out / "table1.csv",
                           "table2.csv": out / "table2.csv"}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md == files.markdown
    assert "62.00 ± 4.97" in md and "## Table 2" in md and "## Searches" in md
    assert "No `proxies` rows" in md
    assert "(../plots/scatter.png)" in md and "cells/metantk_normal.svg" in md
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.loc[t1["method"] == "metantk", "acc_1shot"].item() == pytest.approx(0.62)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_write_report_with_proxies_and_out_dir(results_dir: Path, tmp_path: Path) -> None:
    for row in _monotone_proxies(8).to_dict("records"):
        store.write_rows(results_dir, "proxies", row["genotype_id"], [row])
    files = write_report(results_dir, tmp_path / "elsewhere", n_boot=20)
    assert files["correlations.csv"] == tmp_path / "elsewhere" / "correlations.csv"
    corr = pd.read_csv(files["correlations.csv"])
    assert len(corr) == (4 + 1) * 2 and np.allclose(corr["kendall_tau"], 1.0)
    assert "Kendall τ" in files.markdown and "params (baseline)" in files.markdown
    assert files["proxy_differences.csv"] == tmp_path / "elsewhere" / "proxy_differences.csv"
    diff = pd.read_csv(files["proxy_differences.csv"])
    assert set(zip(diff["proxy_a"], diff["proxy_b"])) == set(report.DEFAULT_PAIRS)
    assert len(diff) == len(report.DEFAULT_PAIRS) * 2
    assert np.allclose(diff["tau_diff"], 0.0)  # every proxy here is perfectly monotone
    md = files.markdown
    assert md.index("## Proxy quality") < md.index("## Proxy comparison: paired difference")
    assert "excludes 0" in md


def test_report_with_searches_only_notes_missing_trials(tmp_path: Path) -> None:
    store.write_rows(tmp_path, "searches", "s", [search("metantk", 0, 30.0)])
    rep = build_report(tmp_path)
    assert "No `trials` rows" in rep.markdown and set(rep.tables) == set()
    assert "30.0 s" in rep.markdown


def test_empty_or_missing_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no Parquet results under .*metantk-nas run"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "report").exists()


def test_cli_report_prints_tables(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(results_dir), "--n-boot", "10"]) == 0
    out = capsys.readouterr().out
    assert "62.00 ± 4.97" in out and "Written:" in out
    assert str(results_dir / "report" / "table1.csv") in out


def test_cli_report_no_write(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(results_dir), "--no-write"]) == 0
    assert "## Table 1" in capsys.readouterr().out
    assert not (results_dir / "report").exists()


def test_cli_report_empty_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metantk-nas report: error:" in err and "metantk-nas run" in err


def test_cli_report_takes_n_boot_from_the_runs_config(tmp_path: Path) -> None:
    from harness.cmd_report import default_n_boot

    assert default_n_boot(tmp_path) == 1000                       # no config.toml: the default
    (tmp_path / "config.toml").write_text("[experiment]\nname = 'x'\n\n[study]\nn_boot = 37\n")
    assert default_n_boot(tmp_path) == 37
    (tmp_path / "config.toml").write_text("not toml [")
    assert default_n_boot(tmp_path) == 1000
