"""Our search networks are the paper's (YiteWang/MetaNTK-NAS, REFERENCE.md).

The paper's kernel network for one fixed mask is written here from the facts, with plain
modules (not the supernet code): stem conv3x3 + norm; cells of 9 edges (node i reads inputs
0..i+1), each edge the mean of its chosen ops, ops written out (pools + norm, identity or
factorized reduce, ReLU-conv-conv-norm, separable blocks); reductions at N and 2N+1 for
3N+2 cells; the final `lastact` = GroupNorm(min(16, C), C) + ReLU; GAP; linear head. The
thin region net likewise (C=1, no stem, a normal then a reduction cell, train-mode
BatchNorm, lastact BatchNorm + ReLU). Weights are copied from our supernet and the pooled
features, logits, sum-of-logits NTK and linear-region count must agree.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels import count_linear_regions, empirical_ntk
from kernels.regions import sign_patterns
from search_spaces.genotypes import EDGE_INPUTS, Genotype
from search_spaces.init import reinitialize
from search_spaces.network import Network
from search_spaces.ops import PRIMITIVES, make_op
from search_spaces.supernet import Supernet, thin_supernet

# ----------------------------------------------------------------------------- the paper's net, from the facts

EDGES = [(node, inp) for node in range(3) for inp in range(node + 2)]  # (node, input): 9 edges


def gn(C: int) -> nn.Module:
    return nn.GroupNorm(min(16, C), C, affine=False)


def bn(C: int) -> nn.Module:
    return nn.BatchNorm2d(C, affine=False)


def sep_block(C: int, stride: int, dilation: int, norm) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride, dilation, dilation=dilation, groups=C, bias=False),
                         nn.Conv2d(C, C, 1, bias=False), norm(C))


def relu_conv_norm(C_in: int, C_out: int, norm) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C_in, C_out, 1, bias=False), norm(C_out))


class PaperFactorizedReduce(nn.Module):
    """ReLU; 1x1 stride-2 convs on x and on x padded (0, 1, 0, 1) and shifted by one; concat; norm."""

    def __init__(self, C_in: int, C_out: int, norm) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.a = nn.Conv2d(C_in, C_out // 2, 1, 2, bias=False)
        self.b = nn.Conv2d(C_in, C_out - C_out // 2, 1, 2, bias=False)
        self.norm = norm(C_out)

    def forward(self, x):
        x = self.relu(x)
        return self.norm(torch.cat([self.a(x), self.b(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:])], 1))


def paper_op(name: str, C: int, stride: int, norm) -> nn.Module:
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), norm(C))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), norm(C))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else PaperFactorizedReduce(C, C, norm)
    if name == "conv_1x5_5x1":  # the stride on both axes in the 1x5 conv, stride 1 in the 5x1
        return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, (1, 5), stride, (0, 2), bias=False),
                             nn.Conv2d(C, C, (5, 1), 1, (2, 0), bias=False), norm(C))
    if name == "conv_3x3":
        return sep_block(C, stride, 1, norm)
    if name == "sep_conv_3x3":
        return nn.Sequential(sep_block(C, stride, 1, norm), sep_block(C, 1, 1, norm))
    if name == "dil_conv_3x3":
        return sep_block(C, stride, 2, norm)
    raise KeyError(name)


class PaperCell(nn.Module):
    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 chosen: list[list[str]], norm) -> None:
        super().__init__()
        self.pre0 = PaperFactorizedReduce(C_pp, C, norm) if reduction_prev else relu_conv_norm(C_pp, C, norm)
        self.pre1 = relu_conv_norm(C_p, C, norm)
        self.edges = nn.ModuleList(
            nn.ModuleList(paper_op(name, C, 2 if reduction and inp < 2 else 1, norm) for name in names)
            for (_, inp), names in zip(EDGES, chosen))

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(3):
            total = None
            for (n, inp), ops in zip(EDGES, self.edges):
                if n != node or len(ops) == 0:
                    continue  # a removed edge contributes nothing
                mean = ops[0](states[inp])
                for op in ops[1:]:
                    mean = mean + op(states[inp])
                mean = mean / len(ops) if len(ops) > 1 else mean
                total = mean if total is None else total + mean
            states.append(total)
        return torch.cat(states[2:], 1)


class PaperNet(nn.Module):
    def __init__(self, C: int, classes: int, cells: int, reductions: set[int], chosen: dict, norm, *,
                 stem: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), norm(C)) if stem else nn.Identity()
        C_pp = C_p = C if stem else in_channels
        C_cur, red_prev = C, False
        self.cells = nn.ModuleList()
        for i in range(cells):
            red = i in reductions
            C_cur *= 2 if red else 1
            self.cells.append(PaperCell(C_pp, C_p, C_cur, red, red_prev, chosen["reduce" if red else "normal"], norm))
            C_pp, C_p, red_prev = C_p, 3 * C_cur, red
        self.lastact = nn.Sequential(norm(C_p), nn.ReLU())
        self.head = nn.Linear(C_p, classes)

    def features(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.lastact(s1).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def reference_reductions(cells: int) -> set[int]:
    """The reference's layer list for 3N+2 cells: N normal, reduce, N normal, reduce, N normal."""
    N = (cells - 2) // 3
    assert 3 * N + 2 == cells
    return {N, 2 * N + 1}


# One fixed mask: every op on some edge, edges with 1, 2 and 3 ops, removed edges, and every
# op at stride 2 somewhere in the reduction cell.
CHOSEN = {
    "normal": [["conv_1x5_5x1", "skip_connect"], ["conv_3x3"], ["sep_conv_3x3"], [],
               ["avg_pool_3x3", "dil_conv_3x3"], ["max_pool_3x3"], [],
               ["skip_connect", "conv_3x3", "sep_conv_3x3"], ["dil_conv_3x3"]],
    "reduce": [["conv_1x5_5x1"], ["skip_connect", "max_pool_3x3"], ["avg_pool_3x3"],
               ["dil_conv_3x3", "sep_conv_3x3"], [], ["conv_3x3"], ["conv_1x5_5x1", "skip_connect"], [],
               ["max_pool_3x3"]],
}
CHOSEN = {t: [sorted(names, key=PRIMITIVES.index) for names in edges] for t, edges in CHOSEN.items()}


def chosen_masks() -> dict[str, torch.Tensor]:
    masks = {}
    for t, edges in CHOSEN.items():
        m = torch.zeros(9, len(PRIMITIVES), dtype=torch.bool)
        for e, names in enumerate(edges):
            for name in names:
                m[e, PRIMITIVES.index(name)] = True
        masks[t] = m
    return masks


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def copy_weights(sup: Supernet, paper: PaperNet) -> None:
    """Our supernet's weights into the paper net: the stem, each cell's preprocessing, the
    chosen ops of every edge, the head (norms have no parameters: affine=False)."""
    pairs = list(zip(convs(sup.stem), convs(paper.stem)))
    for s_cell, p_cell in zip(sup.cells, paper.cells, strict=True):
        pairs += zip(convs(s_cell.preprocess0), convs(p_cell.pre0), strict=True)
        pairs += zip(convs(s_cell.preprocess1), convs(p_cell.pre1), strict=True)
        for e, names in enumerate(CHOSEN[s_cell.cell_type]):
            for name, p_op in zip(names, p_cell.edges[e], strict=True):
                pairs += zip(convs(s_cell.edges[e].ops[PRIMITIVES.index(name)]), convs(p_op), strict=True)
    with torch.no_grad():
        for s, p in pairs:
            assert s.weight.shape == p.weight.shape and s.stride == p.stride and s.padding == p.padding
            p.weight.copy_(s.weight)
        paper.head.weight.copy_(sup.classifier.weight)
        paper.head.bias.copy_(sup.classifier.bias)
    n_paper = sum(1 for m in paper.modules() if isinstance(m, nn.Conv2d))
    assert len(pairs) == n_paper  # every conv of the paper net got a weight


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def plain_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J @ J.T, J = per-sample gradients of the sum of logits w.r.t. every conv/linear weight."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(model(x[i:i + 1]).sum(), weights)
        rows.append(torch.cat([g.flatten() for g in grads]))
    J = torch.stack(rows)
    return J @ J.T


# ----------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def kernel_pair():
    """Our 5-cell kernel supernet (C=4, GroupNorm, train mode) under the mask, and the paper net."""
    sup = Supernet(4, 5, 5, norm="group")
    reinitialize(sup, torch.Generator().manual_seed(0))
    sup.set_masks(chosen_masks())
    assert set(sup.reductions) == reference_reductions(5)
    paper = PaperNet(4, 5, 5, reference_reductions(5), CHOSEN, gn)
    copy_weights(sup, paper)
    sup, paper = sup.double().train(), paper.double().train()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return sup, paper, x


def test_kernel_supernet_features_and_logits_are_the_papers(kernel_pair):
    sup, paper, x = kernel_pair
    with torch.no_grad():
        feats, ref = sup.forward_features(x), paper.features(x)
        assert feats.shape == (6, 48) and (ref >= 0).all() and ref.abs().max() > 1e-3
        assert rel(feats, ref) < 1e-6
        assert rel(sup(x), paper(x)) < 1e-6


@pytest.mark.parametrize("backend", ["hooks", "func", "opacus"])
def test_kernel_supernet_ntk_is_the_papers(kernel_pair, backend):
    sup, paper, x = kernel_pair
    ours = empirical_ntk(sup, x, backend=backend)
    ref = plain_ntk(paper, x)
    assert rel(ours, ref) < 1e-6


def test_thin_region_net_patterns_and_count_are_the_papers():
    thin = thin_supernet(in_channels=1)
    reinitialize(thin, torch.Generator().manual_seed(2))
    thin.set_masks(chosen_masks())
    paper = PaperNet(1, 1, 2, {1}, CHOSEN, bn, stem=False, in_channels=1)
    copy_weights(thin, paper)
    thin, paper = thin.double().train(), paper.double().train()
    x = torch.randn(600, 1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    bits: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: bits.append((out > 0).flatten(1)))
             for m in paper.modules() if isinstance(m, nn.ReLU)]
    rows = []
    with torch.no_grad():
        for start in range(0, 600, 200):  # batches of 200: train-mode BatchNorm per batch
            bits.clear()
            paper(x[start:start + 200])
            rows.append(torch.cat(bits, 1))
    for h in hooks:
        h.remove()
    ref_bits = torch.cat(rows)
    ref_count = len({tuple(r.tolist()) for r in ref_bits})

    ours = sign_patterns(thin, x, batch_size=200, packed=False)
    assert torch.equal(ours, ref_bits)  # the same units (the lastact ReLU included), same order
    assert count_linear_regions(thin, x, batch_size=200) == ref_count
    assert 1 < ref_count <= 600


# ----------------------------------------------------------------------------- lastact


def test_kernel_supernet_ends_with_groupnorm_relu_before_pooling():
    sup = Supernet(48, 5, 5, norm="group")
    norm, relu = sup.lastact
    assert isinstance(norm, nn.GroupNorm) and (norm.num_groups, norm.num_channels) == (16, 576)
    assert isinstance(relu, nn.ReLU)
    sup = Supernet(4, 5, 3, norm="group")
    seen = []
    sup.cells[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    x = torch.randn(2, 3, 16, 16)
    feats = sup.forward_features(x)
    expected = F.relu(F.group_norm(seen[0], 16)).mean((2, 3))
    assert torch.allclose(feats, expected, atol=1e-6)


def test_thin_net_lastact_is_train_mode_batchnorm_relu_and_is_counted():
    thin = thin_supernet(in_channels=1).train()
    norm, relu = thin.lastact
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 6 and isinstance(relu, nn.ReLU)
    last = []
    relu.register_forward_hook(lambda m, i, out: last.append((out > 0).flatten(1)))
    x = torch.randn(64, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    bits = sign_patterns(thin, x, packed=False)
    width = last[-1].shape[1]
    assert width == 6 * 2 * 2  # 6 channels at 2x2 after the reduction
    assert torch.equal(bits[:, -width:], last[-1])  # its units are part of every pattern


def test_evaluation_network_has_no_lastact():
    g = Genotype(normal=[[("conv_3x3", 0), ("skip_connect", 1)]] * 3, normal_concat=[2, 3, 4],
                 reduce=[[("conv_1x5_5x1", 0), ("max_pool_3x3", 1)]] * 3, reduce_concat=[2, 3, 4])
    net = Network(g, 4, 5, 3)
    assert not hasattr(net, "lastact")
    seen = []
    net.cells[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    feats = net.forward_features(torch.randn(2, 3, 16, 16))
    assert torch.allclose(feats, seen[0].mean((2, 3)), atol=1e-6) and (feats < 0).any()


# ----------------------------------------------------------------------------- conv_1x5_5x1


@pytest.mark.parametrize("size", [8, 7, 3])
def test_conv_1x5_5x1_strides_both_axes_in_the_1x5_conv(size):
    op = make_op("conv_1x5_5x1", 4, 2, affine=False).train()
    first, second = convs(op)
    assert first.kernel_size == (1, 5) and first.stride == (2, 2) and first.padding == (0, 2)
    assert second.kernel_size == (5, 1) and second.stride == (1, 1) and second.padding == (2, 0)
    x = torch.randn(3, 4, size, size)
    y = op(x)
    half = math.ceil(size / 2)
    assert y.shape == (3, 4, half, half)
    h = F.conv2d(F.conv2d(F.relu(x), first.weight, stride=2, padding=(0, 2)), second.weight, padding=(2, 0))
    assert torch.allclose(y, F.batch_norm(h, None, None, training=True), atol=1e-5)
    assert make_op("conv_1x5_5x1", 4, 1)(x).shape == x.shape


def test_evaluation_network_uses_the_reference_conv_1x5_5x1():
    g = Genotype(normal=[[("conv_3x3", 0), ("skip_connect", 1)]] * 3, normal_concat=[2, 3, 4],
                 reduce=[[("conv_1x5_5x1", 0), ("max_pool_3x3", 1)]] * 3, reduce_concat=[2, 3, 4])
    net = Network(g, 4, 5, 3)
    strided = [c for c in net.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (1, 5) and c.stride != (1, 1)]
    assert strided and all(c.stride == (2, 2) for c in strided)
    assert not any(c.kernel_size == (5, 1) and c.stride != (1, 1) for c in net.modules() if isinstance(c, nn.Conv2d))
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 5)
