"""The Scorer's kernel inputs as the reference's search: CIFAR-10-normalised kernel images and,
for the plain NTK (tenas), 30-style plain images under a head over the base classes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.config import parse_config
from harness.errors import ConfigError
from harness.scoring import Scorer, spec_from_config
from kernels import condition_number, empirical_ntk
from kernels.ntk import select_parameters
from search_spaces.supernet import HeadedSupernet

BASE_CLASSES = 8


def _cfg(**search):
    return parse_config({
        "experiment": {"name": "paper-scoring", "seed": 0},
        "dataset": {"name": "synthetic", "options": {"train_classes": BASE_CLASSES, "images_per_class": 4}},
        "search": {"cells": [3], "init_channels": 8, "tasks": 2, "ways": 3, "kernel_image_size": 16,
                   "region_inputs": 50, "region_batches": 1, **search},
    }, source="paper-scoring")


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(spec_from_config(_cfg(), 3))


def test_reference_defaults_in_the_spec():
    spec = spec_from_config(_cfg(), 3)
    assert spec.kernel.kernel_normalization == "cifar" and spec.kernel.ntk_batch == "plain"
    with pytest.raises(ConfigError, match="ntk_batch"):
        _cfg(ntk_batch="episodes")
    with pytest.raises(ConfigError, match="kernel_normalization"):
        _cfg(kernel_normalization="imagenet")


def test_tenas_kernel_batch_is_plain_images_under_a_base_class_head(scorer):
    key = (0, "paper", 0, 0)
    masks = np.ones((2, 9, 7), bool)
    got = scorer.score(masks, key, ("cn_meta", "cn_ntk"))
    n = 2 * 3 * (1 + 1)  # tasks x ways x (shots + queries): sample counts match the MetaNTK's
    assert scorer.ntk_x.shape == scorer.x.shape == (n, 3, 16, 16)
    assert not torch.equal(scorer.ntk_x, scorer.x)
    net = scorer.ntk_net
    assert isinstance(net, HeadedSupernet)
    assert net.classifier.out_features == BASE_CLASSES and scorer.net.classifier.out_features == 3
    # The base-class head is differentiated, the MetaNTK's `ways` head is not part of it.
    ids = {id(p) for p in select_parameters(net)}
    assert id(net.classifier.weight) in ids and id(scorer.net.classifier.weight) not in ids
    # The body is the kernel supernet's (same weights, same masks).
    assert net.stem is scorer.net.stem and net.cells is scorer.net.cells
    with torch.no_grad():
        assert torch.allclose(net.forward_features(scorer.ntk_x), scorer.net.forward_features(scorer.ntk_x))
    assert got.cn_ntk == pytest.approx(condition_number(empirical_ntk(net, scorer.ntk_x)), rel=1e-9)
    assert got.cn_meta > 1 and got.cn_ntk != got.cn_meta


def test_tasks_ntk_batch_keeps_the_task_batch_and_ways_head():
    s = Scorer(spec_from_config(_cfg(ntk_batch="tasks"), 3))
    got = s.score(np.ones((2, 9, 7), bool), (0, "paper", 0, 0), ("cn_ntk",))
    assert s.ntk_net is s.net and s.ntk_x is s.x
    assert got.cn_ntk == pytest.approx(condition_number(empirical_ntk(s.net, s.x)), rel=1e-9)


@pytest.mark.parametrize("rule", ["cifar", "dataset"])
def test_kernel_images_use_the_chosen_normalisation(rule):
    from harness.scoring import generator
    from trainers.episodes import kernel_normalization, sample_kernel_batch

    s = Scorer(spec_from_config(_cfg(kernel_normalization=rule), 3))
    s.score(np.ones((2, 9, 7), bool), (0, "paper", 0, 1), ("cn_ntk",))
    mean, std = kernel_normalization(rule, s.split)
    q = torch.cat([q for q, _ in s.tasks])
    ref = sample_kernel_batch(s.split, tasks=2, ways=3, image_size=16, normalization=(mean, std),
                              generator=generator(0, "paper", 0, 1, "kernel-batch"))
    assert torch.equal(s.x[q], ref.images[q])
    m = torch.tensor(mean).view(1, -1, 1, 1)
    sd = torch.tensor(std).view(1, -1, 1, 1)
    unit = s.x[q] * sd + m
    assert float(unit.min()) >= -1e-5 and float(unit.max()) <= 1 + 1e-5


def test_batched_plain_ntk_matches_one_by_one(scorer):
    key = (0, "paper", 2, 0)
    full = np.ones((2, 9, 7), bool)
    one_op = full.copy()
    one_op[0, 3, 4] = False
    single = np.zeros((2, 9, 7), bool)
    single[:, :, 5] = True
    cands = [full, one_op, single]
    s = Scorer(dataclasses.replace(scorer.spec))
    one = [s.score(m, key, ("cn_ntk",)).cn_ntk for m in cands]
    many = [x.cn_ntk for x in s.score_many(cands, key, ("cn_ntk",), batch=3)]
    assert many == pytest.approx(one, rel=1e-4)
