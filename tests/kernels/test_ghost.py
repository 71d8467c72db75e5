"""Ghost Gram (kernels._ghost) and diagonal Gram blocks: exact against "hooks" and "loop"."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import empirical_ntk
from kernels._ghost import (LayerShape, ghost_cost, ghost_is_cheaper, layer_shape,
                            materialize_cost)
from kernels._gram import accumulate_gram, accumulate_gram_blocks
from kernels._persample import per_sample_gram_hooks
from kernels.ntk import select_parameters
from search_spaces.init import reinitialize
from search_spaces.ops import PRIMITIVES, make_op
from search_spaces.supernet import Supernet

F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _hooks(model: nn.Module, x: torch.Tensor, gram: str, params: str = "all", blocks: int = 1) -> torch.Tensor:
    return per_sample_gram_hooks(model, x, select_parameters(model, params), "sum", blocks=blocks, gram=gram)


# --- the cost rule -------------------------------------------------------------------

def test_cost_formulas_count_multiply_adds():
    s = LayerShape(n=30, blocks=1, positions=1, d_in=576, d_out=5)
    assert ghost_cost(s) == 30 * 30 * (576 + 5 + 1)
    assert materialize_cost(s) == 30 * 576 * 5 + 30 * 30 * 576 * 5
    g = LayerShape(n=2, blocks=3, positions=4, d_in=9, d_out=1, groups=8)
    assert ghost_cost(g) == 3 * 8 * 8 * 8 * 11
    assert materialize_cost(g) == 3 * 2 * 4 * 72 + 3 * 2 * 2 * 72


def test_rule_picks_ghost_for_the_head_and_materialises_convolutions():
    # The paper supernet's head: 30 samples, one position, 576 -> 5.
    assert ghost_is_cheaper(LayerShape(30, 1, 1, 576, 5))
    # A 1x1 conv of 192 channels at 8x8 and a depthwise 3x3 at 32x32: materialise.
    assert not ghost_is_cheaper(LayerShape(30, 1, 64, 192, 192))
    assert not ghost_is_cheaper(LayerShape(30, 1, 1024, 9, 1, groups=48))
    # 4 positions of a narrow layer: materialise; the memory cap refuses a huge intermediate.
    assert not ghost_is_cheaper(LayerShape(30, 1, 4, 4, 4))
    assert not ghost_is_cheaper(LayerShape(30, 1, 1, 576, 5), max_elements=100)


def test_layer_shape_of_conv_and_linear():
    conv = nn.Conv2d(8, 12, (3, 1), groups=4)
    a, y = torch.Size([6, 8, 5, 5]), torch.Size([6, 12, 3, 5])
    assert layer_shape(conv, [a, a], [y, y], blocks=2) == LayerShape(3, 2, 30, 6, 3, 4)
    lin = nn.Linear(7, 2)
    assert layer_shape(lin, [torch.Size([4, 3, 7])], [torch.Size([4, 3, 2])], 1) == LayerShape(4, 1, 3, 7, 2)


# --- exactness ------------------------------------------------------------------------

CONVS = [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
    nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4),
    nn.Conv2d(4, 6, (1, 3), stride=(2, 1), padding=(0, 1), groups=2, padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2),
]


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: repr(c))
def test_ghost_conv_matches_materialised_in_float64(conv):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(conv.out_channels, 3)).to(F64)
    x = torch.randn(5, 4, 7, 6, generator=g, dtype=F64)
    ref = _hooks(model, x, "materialize")
    assert _rel(_hooks(model, x, "ghost"), ref) <= 1e-10
    loop = empirical_ntk(model, x, params="all", backend="loop")
    assert _rel(_hooks(model, x, "ghost"), loop) <= 1e-10


def test_ghost_linear_with_middle_dims_and_a_module_called_twice():
    """A Linear over (N, L, D) and one Linear applied twice: the ghost route sums both calls."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.shared, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.shared(torch.tanh(self.a(x))))
            h = torch.tanh(self.shared(h))
            return self.head(h.mean(1))

    torch.manual_seed(0)
    model = Net().to(F64)
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    loop = empirical_ntk(model, x, params="all", backend="loop")
    assert _rel(_hooks(model, x, "ghost"), loop) <= 1e-10
    assert _rel(_hooks(model, x, "ghost"), _hooks(model, x, "materialize")) <= 1e-10


@pytest.mark.parametrize("op", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_ghost_matches_hooks_and_loop_on_every_op(op, stride):
    g = torch.Generator().manual_seed(2)
    body = make_op(op, 4, stride, norm="group", affine=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), body, nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).to(F64)
    reinitialize(model, torch.Generator().manual_seed(3))
    x = torch.randn(4, 3, 6, 6, generator=g, dtype=F64)
    ghost = _hooks(model, x, "ghost")
    assert _rel(ghost, _hooks(model, x, "materialize")) <= 1e-10
    assert _rel(ghost, empirical_ntk(model, x, params="all", backend="loop")) <= 1e-10


@pytest.fixture(scope="module")
def tiny_supernet():
    model = Supernet(C=8, num_classes=3, cells=2, norm="group", reductions=(1,)).to(F64)
    reinitialize(model, torch.Generator().manual_seed(4))
    masks = model.get_masks()
    masks["normal"][0, :4] = False
    masks["reduce"][3, 2:] = False
    model.set_masks(masks)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=F64)
    return model.train(), x


@pytest.mark.parametrize("gram", ["ghost", "auto"])
def test_ghost_matches_on_a_masked_supernet(tiny_supernet, gram):
    model, x = tiny_supernet
    ref = empirical_ntk(model, x, backend="loop")
    out = per_sample_gram_hooks(model, x, select_parameters(model, "weights"), "sum", gram=gram)
    assert _rel(out, ref) <= 1e-10
    assert _rel(empirical_ntk(model, x, backend="ghost"), empirical_ntk(model, x, backend="hooks")) <= 1e-10


def test_ghost_backend_in_float32_agrees_with_hooks():
    model, x = Supernet(C=8, num_classes=3, cells=2, norm="group", reductions=(1,)), None
    reinitialize(model, torch.Generator().manual_seed(6))
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    assert _rel(empirical_ntk(model, x, backend="ghost"), empirical_ntk(model, x, backend="loop")) < 1e-5


# --- diagonal blocks (batched candidates) -----------------------------------------------

def test_accumulate_gram_blocks_is_the_diagonal_of_the_full_gram():
    G = torch.randn(6, 10, generator=torch.Generator().manual_seed(8))
    full = torch.zeros(6, 6, dtype=F64)
    accumulate_gram(full, G, block=3)
    blocks = torch.zeros(3, 2, 2, dtype=F64)
    accumulate_gram_blocks(blocks, G, block=3)
    for b in range(3):
        assert torch.allclose(blocks[b], full[2 * b:2 * b + 2, 2 * b:2 * b + 2], rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", ["hooks", "ghost", "opacus"])
def test_blocks_are_each_candidates_kernel(tiny_supernet, backend):
    """Batched candidates (sample masks): block b of blocks=3 is the diagonal block of the
    full kernel (1e-10 in float64) and candidate b's own kernel (to the float32 rounding of
    the supernet's per-sample op weights 1/k, ~1e-8)."""
    model, x = tiny_supernet
    masks = torch.ones(3, 2, 9, 7, dtype=torch.bool)
    masks[1, 0, 1, :] = False
    masks[2, 1, 4, 3:] = False
    model.sample_masks = masks
    try:
        out = empirical_ntk(model, x.repeat(3, 1, 1, 1), backend=backend, blocks=3)
        # per-sample backends ("loop", "func") cannot run batched candidates: "hooks" in full
        full = empirical_ntk(model, x.repeat(3, 1, 1, 1), backend="hooks")
    finally:
        model.sample_masks = None
    assert out.shape == (3, 4, 4)
    saved = model.get_masks()
    try:
        for b in range(3):
            assert _rel(out[b], full[4 * b:4 * b + 4, 4 * b:4 * b + 4]) <= 1e-10
            model.set_masks({"normal": masks[b, 0], "reduce": masks[b, 1]})
            assert _rel(out[b], empirical_ntk(model, x, backend="loop")) <= 1e-7
    finally:
        model.set_masks(saved)


@pytest.mark.parametrize("kwargs, match", [
    ({"blocks": 3}, "dividing"), ({"blocks": 0}, "dividing"), ({"blocks": 2, "output": "full"}, "output='sum'"),
])
def test_bad_blocks_raise(kwargs, match):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=match):
        empirical_ntk(model, torch.randn(4, 4), **kwargs)


def test_bad_gram_mode_raises():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="gram must be one of"):
        per_sample_gram_hooks(model, torch.randn(4, 4), list(model.parameters()), "sum", gram="fast")


# --- the same ranking on a tiny search round --------------------------------------------

@pytest.mark.slow
def test_ghost_backend_gives_the_same_round_ranking_as_hooks():
    """Round 1 of a tiny search (origin + single-op removals of one edge per cell type, one
    key): the "ghost" backend's MetaNTK condition numbers equal "hooks"' to 1e-8 and rank the
    candidates' CN deltas identically (dense ranks, as the search)."""
    import numpy as np

    from harness.config import parse_config
    from harness.ranking import dense_rank, relative_delta
    from harness.scoring import Scorer
    from harness.specs import spec_from_config

    cfg = parse_config({
        "experiment": {"name": "ghost-rank", "seed": 0},
        "dataset": {"name": "synthetic", "options": {"train_classes": 6, "val_classes": 2, "test_classes": 2,
                                                     "images_per_class": 6}},
        "search": {"methods": ["metantk"], "cells": [3], "init_channels": 4, "kernel_image_size": 8, "tasks": 1,
                   "ways": 3, "repeats": 1, "region_inputs": 20, "region_batches": 1},
    }, source="test")
    spec = spec_from_config(cfg, 3)
    full = np.ones((2, 9, 7), bool)
    masks = [full]
    for t, e in ((0, 2), (1, 5)):
        for o in range(7):
            m = full.copy()
            m[t, e, o] = False
            masks.append(m)
    key = (0, "ghost-rank", 1, 0)
    cns = {}
    for backend in ("hooks", "ghost"):
        scorer = Scorer(spec.with_kernel(kernel_backend=backend))
        cns[backend] = [scorer.score(m, key, ("cn_meta",)).cn_meta for m in masks]
    assert np.allclose(cns["ghost"], cns["hooks"], rtol=1e-8, atol=0)
    ranks = {b: dense_rank([relative_delta(v[0], x) for x in v[1:]], descending=True) for b, v in cns.items()}
    assert ranks["ghost"] == ranks["hooks"]
    assert len(set(ranks["hooks"])) > 3  # the candidates really differ


def test_config_accepts_the_ghost_backend():
    from harness.config import parse_config
    from harness.errors import ConfigError

    cfg = parse_config({"experiment": {"name": "g"}, "search": {"kernel_backend": "ghost"}}, source="test")
    assert cfg.search.kernel_backend == "ghost"
    with pytest.raises(ConfigError, match="ghost"):
        parse_config({"experiment": {"name": "g"}, "search": {"kernel_backend": "fast"}}, source="test")
