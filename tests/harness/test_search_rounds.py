"""Searches advance round by round on their own: a search submits its next round as soon as
its own round's last score arrives, never waiting for another search's round, and the order
in which a pool answers changes no result (scores are pure functions of their inputs)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness import store
from harness.config import parse_config
from harness.scoring import N_EDGES, N_OPS, JobFeed, Score
from harness.search import SEARCH_ROUNDS, run_searches

TIMING = ["seconds", "worker"]


def tiny_config(out):
    return parse_config({
        "experiment": {"name": "rounds", "seed": 0, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 6}},
        "search": {"methods": ["metantk", "regions"], "seeds": [0], "cells": [3], "init_channels": 4,
                   "candidates_per_job": 5},
    }, source="rounds")


class LinearScores:
    """Scores = fixed random linear functions of the masks (no networks)."""

    size, device_kind = 1, "fake"

    def __init__(self):
        rng = np.random.default_rng(0)
        self.w_cn, self.w_rn = rng.random((2, N_EDGES, N_OPS)), rng.random((2, N_EDGES, N_OPS))
        self.order: list[tuple[str, int]] = []  # (search id, round) of each job, as answered

    def answer(self, job, on_result):
        self.order.append((job.key[1], job.key[2]))
        on_result(job, "fake", [(ident, Score(cn_meta=1.0 + float((self.w_cn * m).sum()),
                                              rn=100.0 + float((self.w_rn * m).sum())))
                                for ident, m in job.items])


class FifoPool(LinearScores):
    def run(self, jobs, on_result):
        for job in jobs:  # a JobFeed keeps yielding what the handler adds
            self.answer(job, on_result)


class FavouritePool(LinearScores):
    """Answers the favourite search's jobs first whenever it has one waiting (as a pool does
    when one search's candidates are quick to score and another's slow)."""

    def __init__(self, favourite: str):
        super().__init__()
        self.favourite = favourite

    def run(self, jobs, on_result):
        assert isinstance(jobs, JobFeed)
        waiting = []
        while jobs or waiting:
            waiting.extend(jobs)
            pick = next((j for j in waiting if j.key[1] == self.favourite), waiting[0])
            waiting.remove(pick)
            self.answer(pick, on_result)


def _candidates(results_dir) -> pd.DataFrame:
    df = store.read_table(results_dir, "candidates").drop(columns=TIMING)
    return df.sort_values(["search_id", "round", "cell_type", "edge", "op"]).reset_index(drop=True)


def test_a_quick_search_finishes_every_round_before_a_slow_one_finishes_its_first(tmp_path):
    cfg = tiny_config(tmp_path / "fav")
    quick = "synthetic-regions-s0-c3"
    pool = FavouritePool(quick)
    rows = run_searches(cfg, pool, progress=False)
    first_slow = next(i for i, (sid, _) in enumerate(pool.order) if sid != quick)
    # with a round barrier the slow search's first round would come before the quick one's second
    assert {r for sid, r in pool.order[:first_slow] if sid == quick} == set(range(SEARCH_ROUNDS))
    assert all(sid != quick for sid, _ in pool.order[first_slow:])
    assert {r["search_id"]: r["rounds"] for r in rows} == {quick: SEARCH_ROUNDS, "synthetic-metantk-s0-c3": SEARCH_ROUNDS}

    # the same searches answered first-in first-out: identical genotypes and candidate rows
    cfg_fifo = tiny_config(tmp_path / "fifo")
    fifo_rows = run_searches(cfg_fifo, FifoPool(), progress=False)
    assert [(r["search_id"], r["genotype"]) for r in fifo_rows] == [(r["search_id"], r["genotype"]) for r in rows]
    pd.testing.assert_frame_equal(_candidates(cfg.results_dir), _candidates(cfg_fifo.results_dir))


def test_each_search_times_its_own_rounds(tmp_path):
    cfg = tiny_config(tmp_path)
    quick = "synthetic-regions-s0-c3"
    rows = {r["search_id"]: r for r in run_searches(cfg, FavouritePool(quick), progress=False)}
    # every round of the quick search ran inside the slow one's first round: with one shared
    # round clock both would report the same wall time
    assert 0 < rows[quick]["wall_seconds"] < rows["synthetic-metantk-s0-c3"]["wall_seconds"]
