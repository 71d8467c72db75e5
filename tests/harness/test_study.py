"""Proxy-quality study: init-time scores, their checkpoint, the join with trials, plots, report."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from harness import scoring, store
from harness.config import parse_config
from harness.errors import UserError
from harness.scoring import generator
from harness.pipeline import finish_proxy_study
from harness.study import (INIT_FILE, PLOT_FILE, PROXY_COLUMNS, aggregate,
                           geometric_mean_cn, load_init, proxy_specs, score_proxies)


def tiny_config(out, name="study", repeats=2, **study):
    # A small kernel batch (2 tasks x 2 ways x (1 + 1) images, 8x8) on a 3-cell C=8 supernet: wide
    # enough that the pooled features are far from rounding noise (groups of >= 2 channels),
    # so the condition numbers are well defined and comparable across calls.
    return parse_config({
        "experiment": {"name": name, "seed": 5, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 6}},
        "search": {"methods": ["random"], "seeds": [0, 1, 2], "cells": [3], "init_channels": 8, "tasks": 2,
                   "ways": 2, "kernel_image_size": 8, "repeats": 1, "region_inputs": 30, "region_batches": 1,
                   "candidates_per_job": 2},
        "study": {"proxies": True, "repeats": repeats, "n_boot": 50, **study},
    }, source="tiny-study")


def search_rows(cfg, seeds=(0, 1, 2)):
    """Rows like the `searches` table's for uniformly sampled genotypes."""
    from search_spaces.genotypes import sample_genotype

    return [{"search_id": f"synthetic-random-s{s}-c3", "method": "random", "seed": s, "cells": 3,
             "genotype": sample_genotype(generator(cfg.experiment.seed, s)).to_str()} for s in seeds]


class InlinePool(scoring.InlinePool):
    """The in-process pool, recording the jobs it ran."""

    def __init__(self):
        super().__init__("cpu")
        self.jobs = []

    def run(self, jobs, on_result):
        self.jobs += list(jobs)
        super().run(jobs, on_result)


class RefusingPool:
    def run(self, jobs, on_result):
        if jobs:
            raise AssertionError(f"nothing should be scored, got {len(jobs)} jobs")


@pytest.fixture(scope="module")
def pool():
    return InlinePool()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, pool):
    cfg = tiny_config(tmp_path_factory.mktemp("a"))
    rows = search_rows(cfg)
    return cfg, rows, score_proxies(cfg, rows, progress=False, pool=pool)


def _values(results):
    return [[r[c] for c in PROXY_COLUMNS] for r in results]


def test_scores_are_finite_and_positive(scored):
    cfg, rows, results = scored
    assert [r["search_id"] for r in results] == [r["search_id"] for r in rows]
    for r in results:
        for c in PROXY_COLUMNS:
            assert math.isfinite(r[c]) and r[c] > 0, (c, r[c])
        assert r["cn_metantk_maml"] >= 1 and r["cn_ntk"] >= 1 and r["regions"] >= 1
        assert r["seconds"] > 0
    # Different architectures give different kernels.
    assert len({r["cn_ntk"] for r in results}) == len(results)


def _raw(results_dir, search_id, repeat="0"):
    """Per-kernel scores of one repeat from the checkpoint (timings left out)."""
    entry = load_init(results_dir)[search_id]
    return {k: {m: v for m, v in entry["repeats"][k][repeat].items() if m != "seconds"} for k in entry["repeats"]}


def test_scores_are_deterministic_and_independent_of_the_search_id(scored, pool, tmp_path):
    cfg, rows, results = scored
    # Other order, a genotype under another id, a fresh results folder: the same numbers.
    twin = dict(rows[0], search_id="synthetic-twin-c3")
    cfg1 = tiny_config(tmp_path, repeats=1)
    score_proxies(cfg1, [rows[2], twin], progress=False, pool=pool)
    assert _raw(cfg1.results_dir, rows[2]["search_id"]) == _raw(cfg.results_dir, rows[2]["search_id"])
    assert _raw(cfg1.results_dir, twin["search_id"]) == _raw(cfg.results_dir, rows[0]["search_id"])


def test_checkpoint_is_written_and_a_rerun_scores_nothing(scored):
    cfg, rows, results = scored
    init = load_init(cfg.results_dir)
    assert set(init) == {r["search_id"] for r in rows}
    entry = init[rows[0]["search_id"]]
    assert set(entry["repeats"]["maml"]) == {"0", "1"} and set(entry["repeats"]["anil"]) == {"0", "1"}
    assert _values(score_proxies(cfg, rows, progress=False, pool=RefusingPool())) == _values(results)


def test_a_partial_checkpoint_scores_only_what_is_missing(scored, tmp_path):
    cfg, rows, results = scored
    cfg2 = tiny_config(tmp_path)
    data = json.loads((cfg.results_dir / INIT_FILE).read_text())
    del data["entries"][rows[1]["search_id"]]["repeats"]["anil"]["1"]
    store.write_json_atomic(cfg2.results_dir / INIT_FILE, data)
    pool = InlinePool()
    assert _values(score_proxies(cfg2, rows, progress=False, pool=pool)) == _values(results)
    assert [(job.spec.kernel.algorithm, job.key[-1], [i for i, _ in job.items]) for job in pool.jobs] == [
        ("anil", 1, [(rows[1]["search_id"], "anil", 1)])]


def test_a_changed_spec_is_rescored_only_where_it_matters(scored, pool, tmp_path):
    cfg, rows, results = scored
    cfg2 = tiny_config(tmp_path, anil_reg=0.1)
    (cfg2.results_dir / "state").mkdir(parents=True)
    (cfg2.results_dir / INIT_FILE).write_text((cfg.results_dir / INIT_FILE).read_text())
    before = len(pool.jobs)
    (again,) = score_proxies(cfg2, rows[:1], progress=False, pool=pool)
    # Only the ANIL kernel depends on study.anil_reg: its 2 repeats are rescored, nothing else.
    assert [(j.spec.kernel.algorithm, j.spec.kernel.reg) for j in pool.jobs[before:]] == [("anil", 0.1)] * 2
    assert again["cn_metantk_anil"] != results[0]["cn_metantk_anil"]
    same = ("cn_metantk_maml", "cn_ntk", "regions")
    assert [again[c] for c in same] == [results[0][c] for c in same]


def test_a_changed_genotype_is_rescored(scored, pool, tmp_path):
    cfg, rows, _ = scored
    cfg1 = tiny_config(tmp_path, repeats=1)
    (cfg1.results_dir / "state").mkdir(parents=True)
    (cfg1.results_dir / INIT_FILE).write_text((cfg.results_dir / INIT_FILE).read_text())
    before = len(pool.jobs)
    score_proxies(cfg1, [dict(rows[0], genotype=rows[1]["genotype"])], progress=False, pool=pool)
    assert sum(len(j.items) for j in pool.jobs[before:]) == 2  # 2 kernels x 1 repeat
    assert _raw(cfg1.results_dir, rows[0]["search_id"]) == _raw(cfg.results_dir, rows[1]["search_id"])


def test_maml_and_anil_specs_differ_only_in_the_inner_loop(tmp_path):
    cfg = tiny_config(tmp_path)
    specs = proxy_specs(cfg, 3)
    assert specs["maml"].kernel.algorithm == "maml" and specs["anil"].kernel.algorithm == "anil"
    assert specs["maml"].model_key == specs["anil"].model_key
    assert specs["anil"].kernel.inner_time == cfg.study.anil_inner_time and specs["anil"].kernel.reg == cfg.study.anil_reg


@pytest.mark.parametrize("values, expected", [
    ([10.0, 1000.0], 100.0), ([5.0], 5.0), ([10.0, math.inf], math.inf), ([10.0, math.nan], math.nan), ([], math.nan),
])
def test_geometric_mean_of_condition_numbers(values, expected):
    got = geometric_mean_cn(values)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_geometric_mean_refuses_non_positive():
    with pytest.raises(ValueError, match="> 0"):
        geometric_mean_cn([0.0, 2.0])


def test_aggregate_maps_measures_to_columns():
    per = {"maml": [{"cn_meta": 10.0, "cn_ntk": 100.0, "rn": 4.0}, {"cn_meta": 1000.0, "cn_ntk": 100.0, "rn": 6.0}],
           "anil": [{"cn_meta": 2.0}, {"cn_meta": 8.0}]}
    out = aggregate(per)
    assert out == pytest.approx({"cn_metantk_maml": 100.0, "cn_metantk_anil": 4.0, "cn_ntk": 100.0, "regions": 5.0})


def write_trials(cfg, rows, accs):
    for row, (a1, a5) in zip(rows, accs):
        store.write_rows(cfg.results_dir, "trials", row["search_id"], [{
            "experiment": cfg.experiment.name, "dataset": "synthetic", "method": "random", "seed": row["seed"],
            "cells": 3, "trial_id": row["search_id"], "search_id": row["search_id"], "genotype": row["genotype"],
            "params": 1000 + row["seed"], "search_seconds": 0.0, "train_seconds": 1.5, "epochs": 1,
            "final_loss": 1.0, "final_train_acc": 0.5, "ways": 5, "episodes": 10, "acc_1shot": a1, "ci_1shot": 0.01,
            "acc_5shot": a5, "ci_5shot": 0.02, "device_kind": "cpu", "config_json": "{}"}])


def test_finish_writes_proxy_rows_plots_and_the_report_shows_them(scored):
    from harness.pipeline import build_report

    cfg, rows, results = scored
    accs = [(0.4, 0.6), (0.5, 0.7), (0.3, 0.55)]
    write_trials(cfg, rows, accs)
    plot = finish_proxy_study(cfg)
    table = store.read_table(cfg.results_dir, "proxies").sort_values("genotype_id").reset_index(drop=True)
    expected = pd.DataFrame(results).sort_values("search_id").reset_index(drop=True)
    assert list(table["genotype_id"]) == list(expected["search_id"])
    assert list(table["genotype"]) == list(expected["genotype"])
    for c in PROXY_COLUMNS:
        np.testing.assert_array_equal(table[c].to_numpy(), expected[c].to_numpy())
    by_seed = dict(zip(table["seed"], zip(table["acc_1shot"], table["acc_5shot"])))
    assert by_seed == {r["seed"]: a for r, a in zip(rows, accs)}
    assert (table["params"] == 1000 + table["seed"]).all() and (table["train_seconds"] == 1.5).all()
    assert plot == cfg.results_dir / "plots" / PLOT_FILE
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size < 300_000
    report = build_report(cfg.results_dir, n_boot=20)
    assert "## Proxy quality" in report.markdown and "cn_metantk_anil" in report.markdown
    assert f"plots/{PLOT_FILE}" in report.markdown
    assert set(report.tables["correlations"]["proxy"]) == set(PROXY_COLUMNS) | {"params"}


def test_finish_refuses_trials_without_scores(scored, tmp_path):
    cfg, rows, _ = scored
    cfg2 = tiny_config(tmp_path)
    write_trials(cfg2, rows, [(0.4, 0.6)] * 3)
    with pytest.raises(UserError, match="proxies were not scored"):
        finish_proxy_study(cfg2)
    (cfg2.results_dir / "state").mkdir(parents=True, exist_ok=True)
    data = json.loads((cfg.results_dir / INIT_FILE).read_text())
    del data["entries"][rows[2]["search_id"]]
    store.write_json_atomic(cfg2.results_dir / INIT_FILE, data)
    with pytest.raises(UserError, match=rows[2]["search_id"]):
        finish_proxy_study(cfg2)


def test_infinite_condition_numbers_are_plotted_and_kept(tmp_path):
    from harness.figures import plot_proxies

    frame = pd.DataFrame({
        "dataset": "d", "cn_metantk_maml": [10.0, math.inf, 100.0, 50.0], "cn_metantk_anil": [1.0, 2.0, 3.0, 4.0],
        "cn_ntk": [1e3, 1e4, 1e5, 1e6], "regions": [5.0, 6.0, 7.0, 8.0],
        "acc_1shot": [0.5, 0.2, 0.4, 0.45], "acc_5shot": [0.7, 0.3, 0.6, 0.65]})
    path = plot_proxies(frame, tmp_path / "p.png", n_boot=10)
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_ray_pool_gives_the_inline_scores(scored, ray_session, tmp_path):
    """Through `harness.pipeline.start_pool` (Ray actors), as `metantk-nas run` does."""
    from harness.pipeline import proxy_stage

    cfg, rows, results = scored
    cfg2 = tiny_config(tmp_path).replace("resources", workers=2)
    got = np.array(_values(proxy_stage(cfg2, rows[:2], progress=False)))
    # Equal up to float summation order: Ray workers run torch with one thread.
    np.testing.assert_allclose(got, np.array(_values(results[:2])), rtol=1e-3)
