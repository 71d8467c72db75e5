"""Scoring several candidates in one batched pass equals scoring them one by one."""
from __future__ import annotations

import numpy as np
import pytest

from harness.config import parse_config
from harness.scoring import InlinePool, Job, Scorer, spec_from_config


@pytest.fixture(scope="module")
def scorer():
    cfg = parse_config({
        "experiment": {"name": "batched", "seed": 0},
        "dataset": {"name": "synthetic", "options": {"train_classes": 5, "images_per_class": 4}},
        "search": {"cells": [3], "init_channels": 16, "tasks": 2, "ways": 3, "kernel_image_size": 16,
                   "region_inputs": 50, "region_batches": 1},
    }, source="batched")
    return Scorer(spec_from_config(cfg, 3))


def _candidates():
    full = np.ones((2, 9, 7), bool)
    one_op = full.copy()
    one_op[0, 3, 4] = False
    edge = full.copy()
    edge[1, 6, :] = False  # a whole edge removed (edge selection)
    single = np.zeros((2, 9, 7), bool)
    single[:, :, 5] = True  # one op per edge
    return [full, one_op, edge, single]


@pytest.mark.parametrize("algorithm", ["maml", "anil"])
def test_batched_condition_numbers_match_one_by_one(scorer, algorithm):
    s = Scorer(scorer.spec.with_kernel(algorithm=algorithm))
    key = (0, "batched", 1, 0)
    cands = _candidates()
    one = [s.score(m, key, ("cn_meta", "cn_ntk", "rn")) for m in cands]
    many = s.score_many(cands, key, ("cn_meta", "cn_ntk", "rn"), batch=3)
    for a, b in zip(one, many):
        assert b.cn_meta == pytest.approx(a.cn_meta, rel=1e-4)
        assert b.cn_ntk == pytest.approx(a.cn_ntk, rel=1e-4)
        assert b.rn == a.rn
    # The candidates really differ, so the blocks are not all the same network.
    assert len({round(x.cn_ntk, 3) for x in one}) == len(cands)


def test_inline_pool_runs_jobs_like_the_scorer(scorer):
    pool = InlinePool("cpu", batch=2)
    cands = _candidates()
    job = Job(scorer.spec, (0, "pool", 0, 0), ("cn_meta",), tuple(((i, 0), m) for i, m in enumerate(cands)))
    got = {}
    pool.run([job], lambda j, label, res: got.update({ident: sc for ident, sc in res}))
    assert sorted(got) == [(i, 0) for i in range(len(cands))]
    for i, m in enumerate(cands):
        assert got[(i, 0)].cn_meta == pytest.approx(scorer.score(m, (0, "pool", 0, 0), ("cn_meta",)).cn_meta, rel=1e-4)


def test_sample_masks_must_match_the_batch(scorer):
    import torch

    net = scorer.net
    net.sample_masks = torch.ones(3, 2, 9, 7, dtype=torch.bool)
    try:
        with pytest.raises(ValueError, match="equal groups"):
            net(torch.zeros(4, 3, 16, 16))
    finally:
        net.sample_masks = None


def test_inline_pool_scores_with_one_thread_like_the_actors(scorer):
    """A multi-threaded caller gets the actors' (one-thread) scores exactly, and its thread count back."""
    import torch

    cands = _candidates()[:2]
    key = (0, "threads", 0, 0)
    expected = [scorer.score(m, key, ("cn_meta",)).cn_meta for m in cands]  # tests run with one thread
    pool = InlinePool("cpu", batch=1)
    seen = []
    job = Job(scorer.spec, key, ("cn_meta",), tuple(((i, 0), m) for i, m in enumerate(cands)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool.run([job], lambda j, label, res: seen.extend((torch.get_num_threads(), sc.cn_meta) for _, sc in res))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert [t for t, _ in seen] == [1, 1]
    assert [v for _, v in seen] == expected
