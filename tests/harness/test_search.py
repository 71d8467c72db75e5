"""The pruning driver on a tiny supernet: validity, determinism across workers, kills, resume."""
from __future__ import annotations

import math
import os
import signal

import numpy as np
import pandas as pd
import pytest

from harness import store
from harness.config import parse_config
from harness.search import SearchInterrupted, run_searches

pytestmark = pytest.mark.slow


def tiny_config(out, name="tiny", methods=("metantk", "random"), workers=1):
    """Two stacked cells (normal, reduce): the pruning rounds and edge selection are those of
    any cell count, at half the scoring time of three."""
    return parse_config({
        "experiment": {"name": name, "seed": 3, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 6}},
        "search": {"methods": list(methods), "seeds": [0], "cells": [2], "init_channels": 4, "tasks": 2, "ways": 3,
                   "kernel_image_size": 16, "repeats": 1, "region_inputs": 60, "region_batches": 1,
                   "candidates_per_job": 24},
        "resources": {"workers": workers},
    }, source="tiny")


class Pools:
    """One live pool at a time: the test Ray has 2 CPUs and each actor takes one."""

    def __init__(self):
        self.current = None

    def __getitem__(self, workers):
        from harness.scorers import ScorerPool

        if self.current is None or self.current.size != workers:
            self.close()
            # 16 candidates per kernel pass: per-op overhead dominates these tiny nets on a CPU
            # (half the time of one at a time); every test here compares like with like.
            self.current = ScorerPool(workers=workers, batch=16)
        return self.current

    def close(self):
        if self.current is not None:
            self.current.shutdown()
            self.current = None


@pytest.fixture(scope="module")
def pools(ray_session):
    made = Pools()
    yield made
    made.close()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, pools):
    cfg = tiny_config(tmp_path_factory.mktemp("one"))
    rows = run_searches(cfg, pools[1], progress=False)
    return cfg, rows


def _scores(cfg) -> pd.DataFrame:
    df = store.read_table(cfg.results_dir, "candidates")
    cols = ["search_id", "round", "cell_type", "edge", "op", "cn_origin", "cn_pruned", "rn_origin", "rn_pruned",
            "delta_cn", "delta_rn", "rank_cn", "rank_rn", "importance", "pruned"]
    return df[cols].sort_values(["search_id", "round", "cell_type", "edge", "op"]).reset_index(drop=True)


def test_smoke_search_reaches_a_valid_genotype_in_6_rounds(baseline):
    from search_spaces.genotypes import Genotype

    cfg, rows = baseline
    by_method = {r["method"]: r for r in rows}
    g = Genotype.from_str(by_method["metantk"]["genotype"])  # validates
    assert len(g.normal) == 3 and len(g.reduce) == 3
    assert by_method["metantk"]["rounds"] == 10  # 6 pruning rounds + 4 node groups of edge selection
    assert by_method["random"]["rounds"] == 0
    cands = store.read_table(cfg.results_dir, "candidates")
    per_round = cands.groupby("round").size().to_dict()
    # Edge selection, one node group per round: normal (2,5), (5,9), then reduce (2,5), (5,9).
    assert per_round == {1: 126, 2: 108, 3: 90, 4: 72, 5: 54, 6: 36, 7: 3, 8: 4, 9: 3, 10: 4}
    groups = cands[cands["round"] > 6].groupby("round").agg(cell=("cell_type", "unique"), edges=("edge", "unique"))
    assert [(list(r.cell), sorted(r.edges)) for r in groups.itertuples()] == [
        (["normal"], [2, 3, 4]), (["normal"], [5, 6, 7, 8]), (["reduce"], [2, 3, 4]), (["reduce"], [5, 6, 7, 8])]
    # One op pruned per edge per round, and the scores are real numbers.
    pruned = cands[(cands["pruned"]) & (cands["round"] <= 6)].groupby(["round", "cell_type", "edge"]).size()
    assert (pruned == 1).all() and len(pruned) == 6 * 18
    assert np.isfinite(cands["rn_pruned"]).all() and (cands["cn_origin"] >= 1).all()
    # Edge selection keeps 2 inputs per node: 3 of the 7 candidate edges dropped per cell type.
    assert cands[(cands["round"] > 6)].groupby("cell_type")["pruned"].sum().to_dict() == {"normal": 3, "reduce": 3}
    assert searches_kernel(cfg) == {"metantk": ("maml", math.inf, 1e-3), "random": ("", None, None)}
    searches = store.read_table(cfg.results_dir, "searches")
    assert sorted(searches["method"]) == ["metantk", "random"]
    for sid in searches["search_id"]:
        assert (cfg.results_dir / "cells" / f"{sid}_normal.svg").is_file()
        assert (cfg.results_dir / "cells" / f"{sid}_reduce.svg").is_file()


def searches_kernel(cfg) -> dict:
    """The kernel columns of the searches table per method (NaN as None)."""
    df = store.read_table(cfg.results_dir, "searches")
    return {r.method: (r.algorithm, None if math.isnan(r.inner_time) else r.inner_time,
                       None if math.isnan(r.reg) else r.reg) for r in df.itertuples()}


class KillingPool:
    """Kills (SIGKILL) one scorer actor's process after the first result of round 2 (the
    pool is run once; each search feeds it its next round as its own round ends)."""

    def __init__(self, pool):
        self.pool, self.size, self.device_kind = pool, pool.size, pool.device_kind
        self.killed = False

    def run(self, jobs, on_result):
        import ray

        def wrapped(job, label, results):
            on_result(job, label, results)
            if job.key[2] == 1 and not self.killed:  # key: (experiment seed, search id, round, repeat)
                pid = ray.get(self.pool.actors[0].info.remote())["pid"]
                os.kill(pid, signal.SIGKILL)
                self.killed = True

        self.pool.run(jobs, wrapped)


def test_two_workers_and_a_killed_actor_give_identical_scores_and_genotype(baseline, pools, tmp_path):
    """Same scores and genotype with 1 or 2 workers, even when an actor is SIGKILLed mid-round."""
    cfg1, rows1 = baseline
    cfg = tiny_config(tmp_path)
    killer = KillingPool(pools[2])
    rows = run_searches(cfg, killer, progress=False)
    assert killer.killed
    assert [r["genotype"] for r in rows] == [r["genotype"] for r in rows1]
    pd.testing.assert_frame_equal(_scores(cfg1), _scores(cfg))
    assert store.read_table(cfg.results_dir, "searches")["workers"].max() == 2


def test_interrupted_driver_resumes_to_the_same_genotype(baseline, pools, tmp_path):
    cfg1, rows1 = baseline
    cfg = tiny_config(tmp_path)
    with pytest.raises(SearchInterrupted):
        run_searches(cfg, pools[2], stop_after_round=5, progress=False)
    assert sorted({int(r) for r in store.read_table(cfg.results_dir, "candidates")["round"]}) == [1, 2, 3, 4, 5]
    rows = run_searches(cfg, pools[1], resume=True, progress=False)
    assert [r["genotype"] for r in rows] == [r["genotype"] for r in rows1]
    pd.testing.assert_frame_equal(_scores(cfg1), _scores(cfg))


def test_resume_refuses_a_changed_config(baseline, pools):
    from harness.errors import UserError

    cfg1, _ = baseline
    changed = cfg1.replace("search", region_inputs=61)
    with pytest.raises(UserError, match="different experiment config"):
        run_searches(changed, pools[1], resume=True, progress=False)
