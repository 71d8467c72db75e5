"""Fixed Network from every named genotype: forward/backward, drop-path, paper-size count."""
from __future__ import annotations

import pytest
import torch

from search_spaces.genotypes import GENOTYPES, Genotype, sample_genotype
from search_spaces.init import reinitialize
from search_spaces.network import FixedCell, Network, drop_path
from search_spaces.ops import NORMS, Identity
from search_spaces.supernet import parameter_count


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_named_genotype_forward_backward(name, norm):
    torch.manual_seed(0)
    net = Network(GENOTYPES[name], 4, 5, 3, drop_path_prob=0.2, norm=norm,
                  generator=torch.Generator().manual_seed(0))
    reinitialize(net, torch.Generator().manual_seed(0))
    assert [c.reduction for c in net.cells] == [False, True, True]  # 3 cells: reductions at 1 and 2
    x = torch.randn(4, 3, 8, 8)
    feats = net.forward_features(x)
    assert feats.shape == (4, net.feature_dim) == (4, 48)
    out = net(x)
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    out.square().sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    net.eval()
    assert torch.isfinite(net(x)).all()


def test_random_genotypes_build():
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        net = Network(sample_genotype(gen), 4, 3, 2)
        assert net(torch.randn(2, 3, 6, 6)).shape == (2, 3)


def test_cells_follow_genotype():
    g = GENOTYPES["metanas_og_v2"]
    net = Network(g, 4, 5, 5)
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    normal, reduce = net.cells[0], net.cells[1]
    assert normal.inputs == tuple(i for node in g.normal for _, i in node)
    assert isinstance(reduce.ops[0], torch.nn.Module) and not isinstance(reduce.ops[0], Identity)  # skip at stride 2
    assert all(m.affine for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_paper_parameter_count():
    """Paper Table 1: the searched 5-cell C=48 net has 1.77M parameters with a 64-way head."""
    net = Network(GENOTYPES["metanas_in_v2"], 48, 64, 5)
    n = parameter_count(net)
    print(f"metanas_in_v2, 5 cells, C=48, 64 classes: {n} parameters "
          f"({parameter_count(net, exclude_head=True)} without head)")
    assert net.feature_dim == 576
    assert 1.5e6 < n < 2.5e6
    assert n == 2_005_216  # pins the op semantics (conv_1x5_5x1 dense, conv_3x3 separable)


def test_drop_path_reproducible_and_only_in_training():
    torch.manual_seed(0)
    net = Network(GENOTYPES["metanas_in_v2"], 4, 5, 2, drop_path_prob=0.5)
    x = torch.randn(8, 3, 6, 6)
    outs = []
    for _ in range(2):
        net.generator = torch.Generator().manual_seed(11)
        outs.append(net(x))
    assert torch.equal(outs[0], outs[1])
    net.generator = torch.Generator().manual_seed(12)
    assert not torch.equal(net(x), outs[0])
    net.drop_path_prob = 0.0
    no_drop = net(x)
    assert not torch.allclose(no_drop, outs[0])
    net.eval()
    net.drop_path_prob = 0.5
    y1, y2 = net(x), net(x)
    assert torch.equal(y1, y2)


def test_drop_path_spares_identity():
    g = Genotype([[("skip_connect", 0), ("skip_connect", 1)]] * 3, (2, 3, 4),
                 [[("skip_connect", 0), ("skip_connect", 1)]] * 3, (2, 3, 4))
    cell = FixedCell(g, 2, 2, 2, reduction=False, reduction_prev=False).train()
    x = torch.randn(4, 2, 3, 3)
    base = cell(x, x, 0.0)
    assert torch.equal(cell(x, x, 0.9, torch.Generator().manual_seed(0)), base)


def test_drop_path_function():
    x = torch.ones(4000, 2, 1, 1)
    y = drop_path(x, 0.25, torch.Generator().manual_seed(0))
    kept = (y[:, 0, 0, 0] != 0).float()
    assert 0.72 < kept.mean().item() < 0.78
    assert torch.allclose(y[kept.bool()], torch.full_like(y[kept.bool()], 1 / 0.75))
    assert torch.equal(drop_path(x, 0.0), x)
    with pytest.raises(ValueError):
        drop_path(x, 1.0)


@pytest.mark.parametrize("value", [-0.1, 1.0, 2])
def test_drop_path_prob_validated(value):
    net = Network(GENOTYPES["pool_skip"], 4, 5, 1)
    with pytest.raises(ValueError, match="drop_path_prob"):
        net.drop_path_prob = value


def test_network_rejects_non_genotype():
    with pytest.raises(ValueError, match="Genotype"):
        Network("metanas_in_v2", 4, 5, 3)  # type: ignore[arg-type]
