"""Fast tests of harness.pipeline: the order of the stages, what `train` writes for given
genotypes, and failures injected with monkeypatch (no Ray, no training)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import pipeline, store
from harness.config import parse_config
from harness.errors import UserError
from search_spaces.genotypes import resolve_genotype


def _cfg(tmp_path: Path, **study):
    return parse_config({
        "experiment": {"name": "unit", "seed": 0, "out": str(tmp_path)},
        "dataset": {"name": "synthetic", "options": {"train_classes": 6, "test_classes": 5, "images_per_class": 8}},
        "search": {"methods": ["random"], "seeds": [0, 1], "cells": [3], "init_channels": 4},
        "train": {"recipe": "synthetic", "epochs": 1},
        "evaluate": {"ways": 3, "shots": [1], "queries": 2, "episodes": 2},
        "study": study,
    }, source="unit")


@pytest.fixture()
def stages(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every stage of `run_experiment` replaced by a recorder."""
    calls: list = []
    monkeypatch.setattr(pipeline, "check_cluster_storage", lambda cfg: calls.append("cluster"))
    monkeypatch.setattr(pipeline, "search_stage", lambda cfg, **kw: calls.append(("search", kw)) or [{"s": 1}])
    monkeypatch.setattr(pipeline, "streamed_stage", lambda cfg, **kw: calls.append(("stream", kw)) or [{"s": 1}])
    monkeypatch.setattr(pipeline, "proxy_stage", lambda cfg, rows, **kw: calls.append(("proxies", rows)))
    monkeypatch.setattr(pipeline, "trial_stage", lambda cfg, rows, **kw: calls.append(("trials", rows, kw)))
    monkeypatch.setattr(pipeline, "finish_proxy_study", lambda cfg: calls.append("study"))
    monkeypatch.setattr(pipeline, "report_stage", lambda cfg: calls.append("report") or "files")
    return calls


def test_run_goes_search_trials_report(tmp_path: Path, stages: list) -> None:
    assert pipeline.run_experiment(_cfg(tmp_path), progress=False) == "files"
    # the searches with their trials streamed, then any trial an interrupted run left
    assert stages == ["cluster", ("stream", {"progress": False}),
                      ("trials", [{"s": 1}], {"verbose": 0}), "report"]


def test_the_proxy_study_wraps_the_trials(tmp_path: Path, stages: list) -> None:
    pipeline.run_experiment(_cfg(tmp_path, proxies=True), progress=True)
    names = [c if isinstance(c, str) else c[0] for c in stages]
    assert names == ["cluster", "search", "proxies", "trials", "study", "report"]
    assert stages[3][2] == {"verbose": 1}


def test_a_failed_stage_stops_the_run(tmp_path: Path, stages: list, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cfg, rows, **kw):
        raise RuntimeError("2 trial(s) failed after 2 retries")

    monkeypatch.setattr(pipeline, "trial_stage", broken)
    with pytest.raises(RuntimeError, match="trial"):
        pipeline.run_experiment(_cfg(tmp_path), progress=False)
    assert "report" not in stages  # no report of a half-finished run


def test_train_writes_searches_rows_of_the_given_genotypes(tmp_path: Path, stages: list) -> None:
    cfg = _cfg(tmp_path)
    genotypes = [("metanas_in_v2", resolve_genotype("metanas_in_v2"))]
    text = resolve_genotype("metanas_og_v2").to_str()
    genotypes.append((text, resolve_genotype(text)))
    assert pipeline.train_genotypes(cfg, genotypes, progress=False) == "files"
    rows = store.read_table(cfg.results_dir, "searches")
    assert sorted(rows["search_id"]) == ["synthetic-genotype-custom1-s0-c3", "synthetic-genotype-custom1-s1-c3",
                                         "synthetic-genotype-metanas_in_v2-s0-c3",
                                         "synthetic-genotype-metanas_in_v2-s1-c3"]
    assert set(rows["method"]) == {"genotype:metanas_in_v2", "genotype:custom1"}
    assert (rows["rounds"] == 0).all() and (rows["params"] > 0).all()
    (trials,) = [c for c in stages if isinstance(c, tuple) and c[0] == "trials"]
    assert [r["search_id"] for r in trials[1]] == [r["search_id"] for r in pipeline.genotype_rows(cfg, genotypes)]


def test_results_folder_refuses_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.preflight

    def refuse(cfg, **kw):
        raise UserError("dataset too small")

    monkeypatch.setattr(harness.preflight, "preflight", refuse)
    cfg = _cfg(tmp_path)
    with pytest.raises(UserError, match="too small"):
        with pipeline.results_folder(cfg, search=True, train=True):
            pytest.fail("the body must not run")
    assert not (cfg.results_dir / "config.toml").exists()


def test_results_folder_writes_the_resolved_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pipeline.results_folder(cfg, search=True, train=True):
        assert (cfg.results_dir / "config.toml").is_file() and (cfg.results_dir / "git_sha.txt").is_file()


def test_the_proxy_stage_starts_a_pool_only_for_missing_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    monkeypatch.setattr(pipeline, "start_pool", lambda cfg: started.append(cfg) or pytest.fail("no pool needed"))
    assert pipeline.proxy_stage(_cfg(tmp_path, proxies=True), [], progress=False) == []
    assert started == []
