"""Proxy leaderboard: statistics against hand-computed values, the report section,
the figures, and the study's `train_seeds` / `zero_cost` that feed it."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import leaderboard as L
from harness import figures, store
from harness.config import parse_config
from harness.errors import ConfigError


def _scores(values: dict[str, list[list[float]]], seconds: float = 0.5) -> pd.DataFrame:
    """proxy -> per genotype the list of per-repeat values -> `proxy_scores` rows."""
    rows = []
    for proxy, per_genotype in values.items():
        for g, reps in enumerate(per_genotype):
            rows += [{"experiment": "e", "dataset": "d", "genotype_id": f"g{g}", "genotype": "x", "cells": 3,
                      "proxy": proxy, "repeat": r, "value": v, "seconds": seconds} for r, v in enumerate(reps)]
    return pd.DataFrame(rows)


def _proxies(acc1: list[float], acc5: list[float], params: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"genotype_id": [f"g{i}" for i in range(len(acc1))], "dataset": "d", "params": params,
                         "acc_1shot": acc1, "acc_5shot": acc5})


# ----------------------------------------------------------------------------- statistics by hand


def test_icc_by_hand() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])
    # row means 1.5, 3.5, 6; grand mean 11/3
    msb = 2 * ((1.5 - 11 / 3) ** 2 + (3.5 - 11 / 3) ** 2 + (6 - 11 / 3) ** 2) / 2
    msw = (0.25 + 0.25 + 0.25 + 0.25 + 1 + 1) / 3
    icc1, icck = L.icc_oneway(x)
    assert icc1 == pytest.approx((msb - msw) / (msb + msw)) and icck == pytest.approx((msb - msw) / msb)
    assert L.icc_oneway(np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]])) == (1.0, 1.0)
    assert all(math.isnan(v) for v in L.icc_oneway(np.ones((1, 3))))


def test_partial_spearman_by_hand() -> None:
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(3, 12))
    r = lambda a, b: np.corrcoef(stats.rankdata(a), stats.rankdata(b))[0, 1]  # noqa: E731
    expected = (r(x, y) - r(x, z) * r(y, z)) / math.sqrt((1 - r(x, z) ** 2) * (1 - r(y, z) ** 2))
    assert L.partial_spearman(x, y, z) == pytest.approx(expected)
    assert math.isnan(L.partial_spearman(x[:2], y[:2], z[:2]))


def test_proxy_matrix_uses_the_geometric_mean_for_condition_numbers() -> None:
    m = L.proxy_matrix(_scores({"synflow": [[1.0, 3.0], [2.0, 2.0]], "cn_ntk": [[10.0, 1000.0], [5.0, 5.0]]}))
    assert list(m.columns) == ["cn_ntk", "synflow"]  # leaderboard order
    assert m.loc["g0", "cn_ntk"] == pytest.approx(100.0) and m.loc["g0", "synflow"] == 2.0
    with pytest.raises(ValueError, match="unknown proxies \\['synflw'\\]"):
        L.proxy_matrix(_scores({"synflw": [[1.0]]}))


def test_redraw_reliability() -> None:
    same = _scores({"snip": [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]})
    flipped = _scores({"snip": [[1.0, 30.0], [2.0, 20.0], [3.0, 10.0]]})
    one = _scores({"snip": [[1.0], [2.0]]})
    assert L.redraw_reliability(same)["snip"] == pytest.approx(1.0)
    assert L.redraw_reliability(flipped)["snip"] == pytest.approx(-1.0)
    assert math.isnan(L.redraw_reliability(one)["snip"])


def test_target_reliability_between_trainings() -> None:
    acc = {"a": (0.5, 0.6), "b": (0.6, 0.5), "c": (0.7, 0.8), "d": (0.8, 0.9)}
    trials = pd.DataFrame([{"search_id": g, "trial_id": f"{g}-t{t}", "acc_1shot": a[t], "acc_5shot": a[t]}
                           for g, a in acc.items() for t in range(2)])
    rel = L.target_reliability(trials).set_index("target")
    x = np.array(list(acc.values()))
    assert rel.loc["acc_1shot", "trainings"] == 2 and rel.loc["acc_1shot", "n"] == 4
    assert rel.loc["acc_1shot", "retest_tau"] == pytest.approx(stats.kendalltau(x[:, 0], x[:, 1]).statistic)
    assert rel.loc["acc_1shot", "icc1"] == pytest.approx(L.icc_oneway(x)[0])
    single = L.target_reliability(trials[trials["trial_id"].str.endswith("t0")])
    assert single["trainings"].tolist() == [1, 1] and single["retest_tau"].isna().all()


# ----------------------------------------------------------------------------- the table


@pytest.fixture()
def study_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    acc1 = [0.40, 0.50, 0.45, 0.60, 0.55, 0.70]
    acc5 = [0.60, 0.65, 0.62, 0.80, 0.70, 0.85]
    params = [6, 5, 4, 3, 2, 1]                       # anti-predictive size
    scores = _scores({
        "synflow": [[a, a] for a in acc1],            # perfect for 1-shot
        "cn_metantk_maml": [[1 / a, 1 / a] for a in acc1],  # perfect too (lower is better)
        "snip": [[1.0, 2.0], [2.0, 1.0], [1.5, 1.5], [3.0, 3.0], [0.5, 4.0], [2.0, 2.5]],
    })
    return _proxies(acc1, acc5, params), scores


def test_leaderboard_orients_and_compares(study_frames) -> None:
    proxies, scores = study_frames
    table = L.leaderboard_table(proxies, scores, n_boot=50)
    one = table[table["target"] == "acc_1shot"].set_index("proxy")
    assert list(one.index) == ["cn_metantk_maml", "synflow", "snip"]  # registry order
    assert one.loc["synflow", "kendall_tau"] == pytest.approx(1.0)
    assert one.loc["cn_metantk_maml", "kendall_tau"] == pytest.approx(1.0)
    assert one.loc["synflow", "dtau_metantk"] == pytest.approx(0.0)
    assert math.isnan(one.loc["cn_metantk_maml", "dtau_metantk"])
    tau_params = stats.kendalltau(proxies["params"], proxies["acc_1shot"]).statistic  # -0.73
    assert one.loc["synflow", "dtau_params"] == pytest.approx(1.0 - tau_params)
    assert one.loc["synflow", "redraw_tau"] == pytest.approx(1.0) and one.loc["synflow", "seconds"] == 0.5
    assert one.loc["synflow", "kendall_lo"] <= 1.0 and one.loc["synflow", "n"] == 6
    # the same statistic as the report's correlation table (one implementation)
    from harness.report import correlation_table

    frame = proxies.assign(cn_metantk_maml=[1 / a for a in proxies["acc_1shot"]])
    ref = correlation_table(frame, n_boot=0).set_index(["proxy", "target"])
    assert one.loc["cn_metantk_maml", "kendall_tau"] == ref.loc[("cn_metantk_maml", "acc_1shot"), "kendall_tau"]


def test_leaderboard_section_and_markdown(study_frames) -> None:
    proxies, scores = study_frames
    trials = pd.DataFrame([{"search_id": g, "trial_id": f"{g}-t{t}", "acc_1shot": a + 0.01 * t, "acc_5shot": a}
                           for g, a in zip(proxies["genotype_id"], proxies["acc_1shot"]) for t in range(2)])
    lines, tables = L.leaderboard_section({"proxy_scores": scores, "proxies": proxies, "trials": trials}, n_boot=20)
    text = "\n".join(lines)
    assert "## Proxy leaderboard" in text and "Ceiling for acc_1shot: retest τ between 2 trainings = +1.00" in text
    assert set(tables) == {"leaderboard", "target_reliability"}
    assert L.leaderboard_section({"proxy_scores": scores.iloc[:0], "proxies": proxies}) == ([], {})


def test_figures_are_written_with_the_object_api(study_frames, tmp_path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    proxies, scores = study_frames
    paths = figures.leaderboard_figures(proxies, scores, tmp_path / "plots", title="t")
    assert [p.name for p in paths] == [figures.HEATMAP_FILE, figures.SCATTER_FILE]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert matplotlib.get_backend() == backend
    corr = L.proxy_correlations(L.joined_frame(proxies, scores))
    assert corr.loc["synflow", "cn_metantk_maml"] == pytest.approx(1.0) and corr.loc["snip", "snip"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- study: train_seeds, zero_cost


def tiny_config(out, ntk_batch="plain", **study):
    return parse_config({
        "experiment": {"name": "lb", "seed": 5, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 6}},
        "search": {"methods": ["random"], "seeds": [0, 1, 2], "cells": [3], "init_channels": 8, "tasks": 2,
                   "ways": 2, "kernel_image_size": 8, "repeats": 1, "region_inputs": 30, "region_batches": 1,
                   "candidates_per_job": 3, "ntk_batch": ntk_batch},
        "study": {"proxies": True, "repeats": 2, "n_boot": 20, **study},
    }, source="tiny-lb")


def test_study_keys_are_validated(tmp_path) -> None:
    with pytest.raises(ConfigError, match="study.zero_cost contains unknown proxy 'synflw'"):
        tiny_config(tmp_path, zero_cost=["synflw"])
    with pytest.raises(ConfigError, match="needs \\[study\\] proxies = true"):
        tiny_config(tmp_path, zero_cost=["snip"], proxies=False)
    with pytest.raises(ConfigError, match="study.train_seeds must list distinct"):
        tiny_config(tmp_path, train_seeds=[1, 1])


def test_train_seeds_give_one_trial_per_seed(tmp_path) -> None:
    from harness.trials import trial_specs

    row = {"search_id": "synthetic-random-s0-c3", "method": "random", "seed": 0, "cells": 3, "genotype": "g",
           "device_seconds": 0.0}
    plain = trial_specs(tiny_config(tmp_path), [row])
    assert [(s.trial_id, s.train["seed"]) for s in plain] == [("synthetic-random-s0-c3", 0)]
    specs = trial_specs(tiny_config(tmp_path, train_seeds=[10, 11]), [row])
    assert [(s.trial_id, s.seed, s.train["seed"]) for s in specs] == [
        ("synthetic-random-s0-c3-t10", 0, 10), ("synthetic-random-s0-c3-t11", 0, 11)]


def _write_trials(cfg, rows, accs):
    for row, per_training in zip(rows, accs):
        for t, a in zip(cfg.study.train_seeds, per_training):
            tid = f"{row['search_id']}-t{t}"
            store.write_rows(cfg.results_dir, "trials", tid, [{
                "experiment": cfg.experiment.name, "dataset": "synthetic", "method": "random", "seed": row["seed"],
                "cells": 3, "trial_id": tid, "search_id": row["search_id"], "genotype": row["genotype"],
                "params": 1000 + row["seed"], "search_seconds": 0.0, "train_seconds": 1.0, "epochs": 1,
                "final_loss": 1.0, "final_train_acc": 0.5, "ways": 5, "episodes": 10, "acc_1shot": a,
                "ci_1shot": 0.01, "acc_5shot": a + 0.1, "ci_5shot": 0.02, "device_kind": "cpu", "config_json": "{}"}])


def test_zero_cost_study_end_to_end_without_ray(tmp_path) -> None:
    """Score 3 genotypes with two registry proxies, join 2 trainings each, write the long
    table, the figures and the report's leaderboard."""
    from harness.pipeline import build_report, finish_proxy_study
    from harness.scoring import InlinePool, generator
    from harness.study import SCORES_TABLE, load_init, score_proxies
    from search_spaces.genotypes import sample_genotype

    # "tasks": the study's cn_ntk on the MetaNTK's own task batch, as the registry's proxy is
    # (with the default "plain" TE-NAS batch the two are different measures)
    cfg = tiny_config(tmp_path, ntk_batch="tasks", zero_cost=["synflow", "cn_ntk"], train_seeds=[0, 1])
    rows = [{"search_id": f"synthetic-random-s{s}-c3", "method": "random", "seed": s, "cells": 3,
             "genotype": sample_genotype(generator(5, s)).to_str()} for s in range(3)]
    results = score_proxies(cfg, rows, progress=False, pool=InlinePool("cpu"))
    entry = load_init(cfg.results_dir)[rows[0]["search_id"]]["repeats"]["maml"]["0"]
    assert set(entry["proxy_seconds"]) == {"proxy:synflow", "proxy:cn_ntk"}
    # the registry's NTK condition number is the study's own cn_ntk (same weights and batch)
    assert entry["proxy:cn_ntk"] == pytest.approx(entry["cn_ntk"], rel=1e-9)
    _write_trials(cfg, rows, [(0.4, 0.5), (0.6, 0.8), (0.5, 0.5)])
    finish_proxy_study(cfg)
    table = store.read_table(cfg.results_dir, "proxies").set_index("genotype_id")
    assert table.loc[rows[1]["search_id"], "acc_1shot"] == pytest.approx(0.7)  # mean of the 2 trainings
    assert table.loc[rows[1]["search_id"], "train_seconds"] == 2.0
    long = store.read_table(cfg.results_dir, SCORES_TABLE)
    # genotypes x repeats x (4 columns + synflow): the timed registry cn_ntk replaces the column's
    assert len(long) == 3 * 2 * 5
    assert long[long["proxy"].isin(["synflow", "cn_ntk"])]["seconds"].gt(0).all()
    assert long[long["proxy"] == "regions"]["seconds"].isna().all()
    assert (cfg.results_dir / "plots" / figures.HEATMAP_FILE).is_file()
    assert results[0]["cn_ntk"] > 1
    report = build_report(cfg.results_dir, n_boot=20)
    assert "## Proxy leaderboard" in report.markdown and "retest τ between 2 trainings" in report.markdown
    board = report.tables["leaderboard"]
    assert set(board["proxy"]) == {"cn_metantk_maml", "cn_metantk_anil", "cn_ntk", "regions", "synflow"}
    # the leaderboard's figures are in the HTML report, drawn from the same tables
    from harness.pipeline import write_report

    files = write_report(cfg.results_dir, n_boot=20)
    page = files["index.html"].read_text(encoding="utf-8")
    for stem in ("proxy-heatmap", "proxy-scatter-grid"):
        assert f'src="figures/{stem}.svg"' in page
        assert (cfg.results_dir / "report" / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


def test_a_training_missing_is_refused(tmp_path) -> None:
    from harness.errors import UserError
    from harness.scoring import InlinePool, generator
    from harness.pipeline import finish_proxy_study
    from harness.study import score_proxies
    from search_spaces.genotypes import sample_genotype

    cfg = tiny_config(tmp_path, train_seeds=[0, 1], repeats=1)
    rows = [{"search_id": "synthetic-random-s0-c3", "method": "random", "seed": 0, "cells": 3,
             "genotype": sample_genotype(generator(5, 0)).to_str()}]
    score_proxies(cfg, rows, progress=False, pool=InlinePool("cpu"))
    _write_trials(cfg, rows, [(0.4,)])
    with pytest.raises(UserError, match="1 of 2 trainings"):
        finish_proxy_study(cfg)


# ----------------------------------------------------------------------------- the shipped experiment


@pytest.mark.slow
def test_proxies_omniglot_runs_end_to_end_at_a_tiny_scale(repo_root, omniglot_root, ray_session, tmp_path, capsys):
    """experiments/proxies_omniglot.toml through `metantk-nas run` on the real Omniglot data,
    reduced to 2 genotypes x 2 trainings of 1 epoch of a 2-cell, 4-channel network on 16x16
    images (kernel batch 8x8, 20 region inputs), 1 redraw and 10 episodes: every proxy of the
    registry is scored, trained twice, joined, and the report has the leaderboard."""
    from harness.cli import main
    from harness.config import load_config, to_toml
    from kernels.proxy_names import PROXY_NAMES

    shipped = load_config(repo_root / "experiments" / "proxies_omniglot.toml")
    assert set(shipped.study.zero_cost) == set(PROXY_NAMES) and shipped.study.train_seeds == (0, 1)
    assert len(shipped.search.seeds) == 48
    cfg = load_config(repo_root / "experiments" / "proxies_omniglot.toml", {
        "dataset": {"image_size": 16},
        "search": {"seeds": [0, 1], "cells": [2], "init_channels": 4, "kernel_image_size": 8, "region_inputs": 20},
        "study": {"repeats": 1, "n_boot": 20},
        "train": {"epochs": 1, "lr_decay_epochs": []}, "evaluate": {"episodes": 10}, "resources": {"workers": 1}})
    path = tmp_path / "proxies_tiny.toml"
    path.write_text(to_toml(cfg))
    assert main(["run", str(path), "--root", str(omniglot_root), "--out", str(tmp_path), "--no-progress"]) == 0
    results = tmp_path / "proxies_omniglot"
    trials = store.read_table(results, "trials")
    assert sorted(trials["trial_id"]) == [f"omniglot-random-s{s}-c2-t{t}" for s in range(2) for t in (0, 1)]
    scores = store.read_table(results, "proxy_scores")
    assert set(scores["proxy"]) == set(PROXY_NAMES) and len(scores) == 2 * len(PROXY_NAMES)
    assert scores["seconds"].gt(0).all()
    board = pd.read_csv(results / "report" / "leaderboard.csv")
    assert set(board["proxy"]) == set(PROXY_NAMES) and len(board) == 2 * len(PROXY_NAMES)
    assert (results / "plots" / figures.HEATMAP_FILE).is_file() and (results / "plots" / figures.SCATTER_FILE).is_file()
    assert "## Proxy leaderboard" in capsys.readouterr().out
