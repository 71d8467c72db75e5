"""The search driver as the paper's code, on a scorer whose scores are a fixed
function of the masks (no networks): sequential per-group edge selection, resume inside it,
per-cell-count kernel settings in the specs, the digest and the searches rows."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import store
from harness.config import parse_config
from harness.search import EDGE_GROUPS
from harness.scoring import N_EDGES, N_OPS, Score, spec_from_config
from harness.search import (SEARCH_ROUNDS, SearchInterrupted, config_digest, edge_candidates, next_edge_group,
                            run_searches)


def fake_config(out, **search):
    return parse_config({
        "experiment": {"name": "fake", "seed": 0, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 6}},
        "search": {"methods": ["metantk", "random"], "seeds": [0], "cells": [3, 4], "init_channels": 4,
                   "kernel_by_cells": {"4": {"algorithm": "anil", "inner_time": 1.0, "reg": 1e-5}}, **search},
    }, source="fake")


class FakePool:
    """Scores = fixed random linear functions of the masks; records every job."""

    size, device_kind = 1, "fake"

    def __init__(self):
        rng = np.random.default_rng(0)
        self.w_cn, self.w_rn = rng.random((2, N_EDGES, N_OPS)), rng.random((2, N_EDGES, N_OPS))
        self.jobs = []

    def run(self, jobs, on_result):
        for job in jobs:
            self.jobs.append(job)
            on_result(job, "fake", [(ident, Score(cn_meta=1.0 + float((self.w_cn * m).sum()),
                                                  rn=100.0 + float((self.w_rn * m).sum())))
                                    for ident, m in job.items])


def test_edge_groups_come_in_the_reference_order_and_one_at_a_time():
    masks = np.zeros((2, N_EDGES, N_OPS), bool)
    masks[:, :, 0] = True  # every edge has one op left
    seen = []
    while (group := next_edge_group(masks)) is not None:
        c, lo, hi = group
        cands = edge_candidates(masks)
        assert [e for _, e, _ in cands] == list(range(lo, hi)) and {x for x, _, _ in cands} == {c}
        seen.append(group)
        masks[c, lo:hi - 2, :] = False  # prune all but the group's last 2 edges
        assert len([e for e in range(lo, hi) if masks[c, e].any()]) == 2
    assert seen == [(0, 2, 5), (0, 5, 9), (1, 2, 5), (1, 5, 9)]
    assert SEARCH_ROUNDS == 10 and [g for g in EDGE_GROUPS if g[1] - g[0] > 2] == [(2, 5), (5, 9)]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    cfg = fake_config(tmp_path_factory.mktemp("fake"))
    pool = FakePool()
    rows = run_searches(cfg, pool, progress=False)
    return cfg, pool, rows


def _origins(pool, search_id):
    """round -> origin masks of the first repeat."""
    out = {}
    for job in pool.jobs:
        if job.key[1] == search_id:
            for (ident, _), m in job.items:
                if ident == (search_id, "origin"):
                    out[job.key[2]] = m
    return out


def test_each_edge_group_is_ranked_alone_against_the_net_with_earlier_groups_pruned(fake_run):
    cfg, pool, rows = fake_run
    sid = "synthetic-metantk-s0-c3"
    origins = _origins(pool, sid)
    cands = store.read_table(cfg.results_dir, "candidates")
    cands = cands[cands["search_id"] == sid]
    for rnd, (cell, lo, hi) in zip(range(7, 11), [("normal", 2, 5), ("normal", 5, 9), ("reduce", 2, 5),
                                                  ("reduce", 5, 9)]):
        group = cands[cands["round"] == rnd]
        assert set(group["cell_type"]) == {cell} and sorted(group["edge"]) == list(range(lo, hi))
        assert int(group["pruned"].sum()) == hi - lo - 2
        assert group["rank_cn"].max() <= hi - lo  # ranked within the group only
        # The next round's origin is this round's origin without the edges pruned here.
        if rnd < 10:
            expected = origins[rnd - 1].copy()
            c = 0 if cell == "normal" else 1
            for e in group[group["pruned"]]["edge"]:
                expected[c, int(e), :] = False
            assert (origins[rnd] == expected).all()
    row = next(r for r in rows if r["search_id"] == sid)
    assert row["rounds"] == 10


def test_per_cell_count_kernel_settings_reach_the_scorer_and_the_rows(fake_run):
    cfg, pool, _ = fake_run
    kinds = {(job.spec.network.cells, job.spec.kernel.algorithm, job.spec.kernel.inner_time, job.spec.kernel.reg)
             for job in pool.jobs}
    assert kinds == {(3, "maml", math.inf, 1e-3), (4, "anil", 1.0, 1e-5)}
    assert spec_from_config(cfg, 4).kernel.algorithm == "anil" and spec_from_config(cfg, 3).kernel.algorithm == "maml"
    df = store.read_table(cfg.results_dir, "searches").set_index("search_id")
    assert df.loc["synthetic-metantk-s0-c4", ["algorithm", "inner_time", "reg"]].tolist() == ["anil", 1.0, 1e-5]
    assert df.loc["synthetic-metantk-s0-c3", ["algorithm", "inner_time", "reg"]].tolist() == ["maml", math.inf, 1e-3]
    assert df.loc["synthetic-random-s0-c4", "algorithm"] == "" and math.isnan(df.loc["synthetic-random-s0-c4", "reg"])


def test_resume_inside_edge_selection_gives_the_same_genotypes(fake_run, tmp_path):
    _, _, rows = fake_run
    cfg = fake_config(tmp_path)
    with pytest.raises(SearchInterrupted):
        run_searches(cfg, FakePool(), stop_after_round=8, progress=False)
    resumed = run_searches(cfg, FakePool(), resume=True, progress=False)
    assert [r["genotype"] for r in resumed] == [r["genotype"] for r in rows]


def test_the_resume_digest_covers_the_per_cells_kernel(tmp_path):
    a = fake_config(tmp_path)
    b = fake_config(tmp_path, kernel_by_cells={"4": {"algorithm": "anil", "inner_time": 1.0, "reg": 1e-4}})
    assert config_digest(a) != config_digest(b)
    assert config_digest(a) == config_digest(fake_config(tmp_path))


def test_reference_ranking_runs_and_differs_only_in_ranking(tmp_path):
    cfg = fake_config(tmp_path, ranking="reference", methods=["metantk"], cells=[3], kernel_by_cells={})
    rows = run_searches(cfg, FakePool(), progress=False)
    assert rows[0]["rounds"] == 10 and rows[0]["genotype"]
