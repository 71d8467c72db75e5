"""Every op of the registry: shapes, forward/backward, gradients, norms, error messages."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces.ops import NORMS, OPS, PRIMITIVES, FactorizedReduce, Identity, group_count, make_op


def test_primitives_order_is_the_mask_index():
    assert PRIMITIVES == ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "conv_1x5_5x1",
                          "conv_3x3", "sep_conv_3x3", "dil_conv_3x3")
    assert tuple(OPS) == PRIMITIVES


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", PRIMITIVES)
def test_op_forward_backward(name, stride, norm):
    torch.manual_seed(0)
    C = 4
    op = make_op(name, C, stride, norm, affine=True)
    for hw in (5, 6):  # odd and even sizes
        x = torch.randn(3, C, hw, hw, requires_grad=True)
        y = op(x)
        expect = hw if stride == 1 else (hw + 1) // 2
        assert y.shape == (3, C, expect, expect)
        assert torch.isfinite(y).all()
        y.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        for pname, p in op.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{name}: parameter {pname} got a zero gradient"
        op.zero_grad()


@pytest.mark.parametrize("name", PRIMITIVES)
def test_relus_are_modules_not_inplace(name):
    op = make_op(name, 4, 2)
    relus = [m for m in op.modules() if isinstance(m, nn.ReLU)]
    assert all(not r.inplace for r in relus)
    if name not in ("max_pool_3x3", "avg_pool_3x3"):
        assert relus, f"{name} should expose its ReLU as a module"


def test_skip_connect_semantics():
    assert isinstance(make_op("skip_connect", 4, 1), Identity)
    assert isinstance(make_op("skip_connect", 4, 2), FactorizedReduce)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(make_op("skip_connect", 4, 1)(x), x)


def test_conv_3x3_is_separable():
    convs = [m for m in make_op("conv_3x3", 8, 1).modules() if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [8, 1]
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1)]
    sep = [m for m in make_op("sep_conv_3x3", 8, 2).modules() if isinstance(m, nn.Conv2d)]
    assert len(sep) == 4 and [c.stride for c in sep] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    dil = [m for m in make_op("dil_conv_3x3", 8, 1).modules() if isinstance(m, nn.Conv2d)]
    assert dil[0].dilation == (2, 2) and dil[0].padding == (2, 2)


def test_avg_pool_excludes_padding():
    op = make_op("avg_pool_3x3", 1, 1, affine=False).eval()
    pool = op.pool
    y = pool(torch.ones(1, 1, 4, 4))
    assert torch.allclose(y, torch.ones_like(y))  # counting the padding would lower the border


@pytest.mark.parametrize("C,groups", [(1, 1), (4, 4), (16, 16), (24, 12), (40, 10), (48, 16), (96, 16),
                                      (576, 16), (12, 12), (2, 2)])
def test_group_count(C, groups):
    """The reference's min(16, C) groups where that divides C, else the largest divisor below."""
    assert group_count(C) == groups
    norm = [m for m in make_op("conv_3x3", C, 1, "group").modules() if isinstance(m, nn.GroupNorm)]
    assert norm[0].num_groups == groups


def test_group_norm_is_sample_independent():
    torch.manual_seed(0)
    op = make_op("sep_conv_3x3", 4, 1, "group")
    x = torch.randn(4, 4, 5, 5)
    assert torch.allclose(op(x)[:1], op(x[:1]), atol=1e-6)


def test_unknown_op_lists_valid_names():
    with pytest.raises(KeyError) as info:
        make_op("conv_9x9", 4, 1)
    assert "conv_9x9" in str(info.value) and "sep_conv_3x3" in str(info.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=3), "stride"),
    (dict(norm="layer"), "norm"),
    (dict(C=0), "channel"),
])
def test_bad_op_arguments(kwargs, match):
    args = dict(name="conv_3x3", C=4, stride=1, norm="batch") | kwargs
    with pytest.raises(ValueError, match=match):
        make_op(**args)


def test_small_group_norm_supernet_has_nonzero_pooled_features():
    """One channel per group zeroes every channel's mean; the final norm + ReLU (`lastact`)
    keeps the pooled features informative (without it they are exactly 0)."""
    from search_spaces.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(4, 3, 3, norm="group")
    x = torch.randn(4, 3, 16, 16)
    feats = net.forward_features(x)
    assert feats.abs().max() > 1e-3 and (feats >= 0).all()
    bare = Supernet(4, 3, 3, norm="group", lastact=False)
    bare.load_state_dict(net.state_dict(), strict=False)
    assert bare.forward_features(x).abs().max() < 1e-5
