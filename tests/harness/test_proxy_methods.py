"""Every proxy is a search method: config names, oriented deltas, scorer measures,
and an Algorithm 1 search driven by a proxy whose best choice is known (Ray-free)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import PRUNING_METHODS, parse_config
from harness.errors import ConfigError
from harness.ranking import Candidate, choose_prunes, oriented_delta, rank_candidates, relative_delta
from harness.scoring import InlinePool, Scorer, generator, spec_from_config
from harness.search import SEARCH_ROUNDS, measure_delta, op_candidates, plan_searches, pruned, run_searches
from kernels.proxy_names import PROXY_NAMES


def tiny_config(out, methods=("synflow",), name="proxy-tiny"):
    return parse_config({
        "experiment": {"name": name, "seed": 3, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 6}},
        "search": {"methods": list(methods), "seeds": [0], "cells": [3], "init_channels": 4, "tasks": 2, "ways": 3,
                   "kernel_image_size": 8, "repeats": 1, "region_inputs": 40, "region_batches": 1,
                   "candidates_per_job": 64},
    }, source="tiny")


# ----------------------------------------------------------------------------- config


def test_every_proxy_is_a_method_alone_and_with_regions() -> None:
    for name in PROXY_NAMES:
        if name == "regions":  # already a method of its own (regions only)
            assert PRUNING_METHODS["regions"] == ("rn",)
            continue
        assert PRUNING_METHODS[name] == (f"proxy:{name}",)
        assert PRUNING_METHODS[f"{name}+regions"] == (f"proxy:{name}", "rn")


def test_config_accepts_proxy_methods_and_names_them_in_errors(tmp_path) -> None:
    cfg = tiny_config(tmp_path, methods=("synflow", "snip+regions", "metantk"))
    assert [p.search_id for p in plan_searches(cfg)] == [
        "synthetic-synflow-s0-c3", "synthetic-snip-regions-s0-c3", "synthetic-metantk-s0-c3"]
    with pytest.raises(ConfigError, match="unknown method 'synflw'.*synflow\\+regions"):
        tiny_config(tmp_path, methods=("synflw",))


# ----------------------------------------------------------------------------- oriented deltas


@pytest.mark.parametrize("origin,pruned", [(10.0, 4.0), (4.0, 10.0), (math.inf, 7.0), (7.0, math.inf),
                                           (math.inf, math.inf), (3.0, 3.0)])
def test_oriented_delta_of_a_lower_is_better_score_is_the_cn_delta(origin, pruned) -> None:
    assert oriented_delta(origin, pruned, higher_is_better=False) == relative_delta(origin, pruned)


def test_oriented_delta_of_a_higher_is_better_score() -> None:
    assert oriented_delta(10.0, 8.0, True) == pytest.approx(-0.2)     # lost 20 %: less prunable
    assert oriented_delta(10.0, 12.0, True) == pytest.approx(0.2)     # gained: most prunable
    assert oriented_delta(-10.0, -8.0, True) == pytest.approx(0.2)    # negative scores: |origin|
    assert oriented_delta(0.0, -0.5, True) == -0.5                    # zero origin: the difference
    assert oriented_delta(-math.inf, 1.0, True) == 1.0                # worst -> finite
    assert oriented_delta(1.0, -math.inf, True) == -math.inf          # finite -> worst
    with pytest.raises(ValueError, match="NaN"):
        oriented_delta(math.nan, 1.0, True)
    assert measure_delta("proxy:synflow", 10.0, 8.0) == oriented_delta(10.0, 8.0, True)
    assert measure_delta("proxy:cn_ntk", 10.0, 8.0) == relative_delta(10.0, 8.0)
    assert measure_delta("rn", 10.0, 8.0) == relative_delta(10.0, 8.0)
    with pytest.raises(ValueError, match="proxy:jacov: oriented_delta got NaN"):
        measure_delta("proxy:jacov", math.nan, 1.0)


def test_the_config_stays_torch_free() -> None:
    """The method names come from kernels.proxy_names, so `--help` and config checks need no torch."""
    import subprocess
    import sys

    code = "import sys, harness.config, harness.leaderboard; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_ranking_prunes_the_op_that_costs_a_higher_is_better_proxy_least() -> None:
    # proxy 100 on the current net; removing op 0 leaves 90, op 1 leaves 99, op 2 leaves 50
    cands = [Candidate(0, 0, op, oriented_delta(100.0, left, True), None) for op, left in enumerate((90., 99., 50.))]
    assert choose_prunes(rank_candidates(cands))[(0, 0)].op == 1


# ----------------------------------------------------------------------------- scorer


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> Scorer:
    cfg = tiny_config(tmp_path_factory.mktemp("s"))
    return Scorer(spec_from_config(cfg, 3))


def test_scorer_proxies_are_the_registry_on_the_kernel_batch_and_weights(scorer) -> None:
    from kernels.proxies import ProxyBatch, compute_proxy
    from harness.scoring import proxy_settings

    masks = np.ones((2, 9, 7), bool)
    masks[0, 3, 2] = False
    key = (3, "sid", 0, 0)
    names = ("proxy:synflow", "proxy:snip", "proxy:regions", "proxy:cn_metantk_maml", "proxy:zen", "proxy:cn_ntk")
    sc = scorer.score(masks, key, ("cn_meta", "cn_ntk", "rn", *names))
    assert set(sc.proxies) == set(names) and all(sc.proxy_seconds[n] >= 0 for n in names)
    # the MetaNTK proxy with the search's settings is the search's own CN; regions likewise;
    # and the NTK proxy is TE-NAS's score: its plain batch under the base-class head
    assert scorer.spec.kernel.ntk_batch == "plain" and scorer.ntk_net is not scorer.net
    assert sc.proxies["proxy:cn_metantk_maml"] == pytest.approx(sc.cn_meta, rel=1e-9)
    assert sc.proxies["proxy:cn_ntk"] == pytest.approx(sc.cn_ntk, rel=1e-9)
    assert sc.proxies["proxy:regions"] == sc.rn
    # recomputed by hand from the scorer's batch (labels are the batch's task-local classes)
    assert torch.equal(scorer.labels, torch.arange(3).repeat(4))
    batch = ProxyBatch(scorer.x, scorer.labels, scorer.tasks, 3, scorer.region_x)
    for n in ("synflow", "snip", "zen"):
        expected = compute_proxy(n, scorer.net, batch, proxy_settings(scorer.spec), generator(*key, "proxy", n))
        assert sc.proxies[f"proxy:{n}"] == expected
    # same key, same values (common random numbers for origin and candidates)
    assert scorer.score(masks, key, names).proxies == sc.proxies


def test_batched_scoring_keeps_the_proxies(scorer) -> None:
    masks = [np.ones((2, 9, 7), bool) for _ in range(2)]
    masks[1][1, 0, 4] = False
    measures = ("cn_meta", "proxy:grad_norm", "rn")
    batched = scorer.score_many(masks, (1, "b", 0, 0), measures, batch=2)
    single = [scorer.score(m, (1, "b", 0, 0), measures) for m in masks]
    for b, s in zip(batched, single):
        assert b.proxies == s.proxies and b.rn == s.rn
        assert b.cn_meta == pytest.approx(s.cn_meta, rel=1e-3)  # float32 sums in another order


def test_unknown_measure_lists_the_proxy_measures(scorer) -> None:
    with pytest.raises(KeyError, match="proxy:synflow"):
        scorer.score(np.ones((2, 9, 7), bool), (0,), ("proxy:synflw",))


# ----------------------------------------------------------------------------- a whole search


@pytest.mark.slow
def test_a_params_search_keeps_the_largest_op_on_every_edge(tmp_path) -> None:
    """The parameter count drops by exactly the pruned op's parameters, so Algorithm 1 with
    `params` (higher is better) must prune the smallest op each round and keep the op with
    the most parameters on every edge."""
    from search_spaces.genotypes import Genotype
    from search_spaces.ops import PRIMITIVES, make_op

    cfg = tiny_config(tmp_path, methods=("params",))
    rows = run_searches(cfg, InlinePool("cpu"), progress=False)
    sizes = {op: sum(p.numel() for p in make_op(op, 4, 1, "group").parameters()) for op in PRIMITIVES}
    largest = max(sizes, key=sizes.get)
    assert list(sizes.values()).count(sizes[largest]) == 1
    by_method = {r["method"]: r for r in rows}
    g = Genotype.from_str(by_method["params"]["genotype"])
    assert {op for node in g.normal + g.reduce for op, _ in node} == {largest}
    assert by_method["params"]["rounds"] == SEARCH_ROUNDS  # 6 op rounds + 4 edge-group rounds
    from harness import store

    cands = store.read_table(cfg.results_dir, "candidates")
    first = cands[(cands["method"] == "params") & (cands["round"] == 1)]
    # the candidate rows carry the proxy in the CN columns: origin minus the op's parameters
    row = first[(first["cell_type"] == "normal") & (first["edge"] == 0) & (first["op"] == largest)].iloc[0]
    assert row["cn_origin"] - row["cn_pruned"] == sizes[largest]
    assert (first["rank_rn"] == 0).all() and (first["rank_cn"] > 0).all()


def test_pruning_a_conv_lowers_params_and_a_pool_does_not(scorer) -> None:
    from search_spaces.ops import PRIMITIVES

    masks = np.ones((2, 9, 7), bool)
    key = (5, "m", 0, 0)
    origin = scorer.score(masks, key, ("proxy:params",)).value("proxy:params")
    conv, pool = PRIMITIVES.index("conv_3x3"), PRIMITIVES.index("max_pool_3x3")
    assert (0, 0, conv) in op_candidates(masks)
    assert scorer.score(pruned(masks, (0, 0, conv)), key, ("proxy:params",)).value("proxy:params") < origin
    assert scorer.score(pruned(masks, (0, 0, pool)), key, ("proxy:params",)).value("proxy:params") == origin


def test_a_proxy_with_regions_ranks_both(tmp_path) -> None:
    """One op round of `synflow+regions` on two edges' worth of candidates, through the same
    ranking the driver uses: both slots are ranked and the importance is their sum."""
    from harness.search import primary_measure

    measures = PRUNING_METHODS["synflow+regions"]
    assert primary_measure(measures) == "proxy:synflow"
    cands = [Candidate(0, 0, op, measure_delta("proxy:synflow", 10.0, v), measure_delta("rn", 50.0, r))
             for op, (v, r) in enumerate([(9.0, 50.0), (9.5, 40.0), (8.0, 49.0)])]
    ranked = rank_candidates(cands)
    assert [c.rank_cn for c in ranked] == [2, 1, 3] and [c.rank_rn for c in ranked] == [1, 3, 2]
    assert choose_prunes(ranked)[(0, 0)].op == 0  # importance 3 vs 4 vs 5
