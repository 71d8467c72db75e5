"""Supernet: macro structure, masks (mean over active ops, masked ops never run), thin variant."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces.genotypes import GENOTYPES, edge_index
from search_spaces.network import Network
from search_spaces.ops import NORMS, PRIMITIVES
from search_spaces.supernet import (
    CELL_TYPES, EDGE_INPUTS, EDGES_PER_CELL, MixedEdge, Supernet, full_masks, genotype_masks,
    parameter_count, reduction_indices, thin_supernet,
)


def _net(norm="batch", cells=3, C=4, **kw):
    torch.manual_seed(0)
    return Supernet(C, 5, cells, norm=norm, **kw)


def test_contract_constants():
    assert EDGES_PER_CELL == 9 and CELL_TYPES == ("normal", "reduce")
    assert EDGE_INPUTS[:2] == ((0, 0), (0, 1)) and EDGE_INPUTS[5:] == ((2, 0), (2, 1), (2, 2), (2, 3))
    m = full_masks()
    assert set(m) == {"normal", "reduce"} and m["normal"].shape == (9, 7) and m["normal"].dtype == torch.bool


@pytest.mark.parametrize("cells,expected", [(1, (0,)), (2, (0, 1)), (5, (1, 3)), (8, (2, 5))])
def test_reduction_indices(cells, expected):
    assert reduction_indices(cells) == expected


@pytest.mark.parametrize("norm", NORMS)
def test_shapes_and_feature_dim(norm):
    net = _net(norm, cells=5)
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    assert net.feature_dim == 3 * 4 * 4  # 3 nodes x 4C after two reductions (576 at C=48)
    x = torch.randn(2, 3, 8, 8)
    feats = net.forward_features(x)
    assert feats.shape == (2, 48)
    out = net(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert isinstance(net.classifier, nn.Linear) and torch.allclose(net.classifier(feats), out)
    out.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_masking_an_op_changes_output():
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    base = net(x)
    masks = full_masks()
    masks["normal"][3, PRIMITIVES.index("sep_conv_3x3")] = False
    net.set_masks(masks)
    assert not torch.allclose(net(x), base)
    assert torch.equal(net.get_masks()["normal"], masks["normal"])
    masks["normal"][:] = True  # get/set copy: the module's masks are not aliased
    assert not net.get_masks()["normal"][3, 5]


def test_per_call_masks_do_not_change_stored_masks():
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    masks = full_masks()
    masks["reduce"][:, 0] = False
    y_call = net(x, masks)
    assert net.get_masks()["reduce"].all()
    net.set_masks(masks)
    assert torch.allclose(net(x), y_call)


def test_masked_ops_are_not_executed_and_contribute_nothing():
    net = _net(cells=3)
    masks = full_masks()
    masks["normal"][:, PRIMITIVES.index("conv_1x5_5x1")] = False
    net.set_masks(masks)
    calls = []
    for cell in net.cells:
        if cell.cell_type == "normal":
            for edge in cell.edges:
                edge.ops[3].register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 8, 8)
    y = net(x)
    assert not calls and net.cells[0].cell_type == "normal"
    with torch.no_grad():  # wrecking a masked op's weights changes nothing
        for cell in net.cells:
            if cell.cell_type == "normal":
                for edge in cell.edges:
                    for p in edge.ops[3].parameters():
                        p.fill_(1e3)
    assert torch.equal(net(x), y)


def test_mixed_edge_is_mean_of_active_ops():
    torch.manual_seed(0)
    edge = MixedEdge(4, 1, "group", False)
    x = torch.randn(2, 4, 5, 5)
    expected = (edge.ops[1](x) + edge.ops[4](x) + edge.ops[6](x)) / 3
    assert torch.allclose(edge(x, [1, 4, 6]), expected, atol=1e-6)
    assert torch.equal(edge(x, [5]), edge.ops[5](x))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("op", PRIMITIVES)
def test_single_op_supernet_equals_manual_composition(op, norm):
    """One normal cell, only `op` on every edge: compare with running the op modules directly."""
    torch.manual_seed(0)
    net = Supernet(4, 3, 1, norm=norm, reductions=())
    o = PRIMITIVES.index(op)
    masks = full_masks()
    for t in CELL_TYPES:
        masks[t][:] = False
        masks[t][:, o] = True
    net.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    cell = net.cells[0]
    s = net.stem(x)
    states = [cell.preprocess0(s), cell.preprocess1(s)]
    for node in range(3):
        edges = [e for e, (n, _) in enumerate(EDGE_INPUTS) if n == node]
        states.append(sum(cell.edges[e].ops[o](states[EDGE_INPUTS[e][1]]) for e in edges))
    manual = torch.cat(states[2:], 1)
    active = [[o]] * EDGES_PER_CELL
    assert torch.allclose(cell(s, s, active), manual, atol=1e-5)
    pooled = net.lastact(manual).mean((2, 3))  # the final norm + ReLU, then GAP
    assert torch.allclose(net(x), net.classifier(pooled), atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    ({"normal": torch.ones(9, 7, dtype=torch.bool)}, "expected keys"),
    ({"normal": torch.ones(9, 7, dtype=torch.bool), "reduce": torch.ones(9, 6, dtype=torch.bool)}, "shape"),
    ({"normal": torch.ones(9, 7), "reduce": torch.ones(9, 7, dtype=torch.bool)}, "bool tensor"),
    ({"normal": [[True] * 7] * 9, "reduce": torch.ones(9, 7, dtype=torch.bool)}, "bool tensor"),
    ("all", "expected a dict"),
])
def test_invalid_masks_raise(bad, match):
    net = _net(cells=1)
    with pytest.raises(ValueError, match=match):
        net.set_masks(bad)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(1, 3, 4, 4), bad)


def test_node_without_edges_raises():
    net = _net(cells=1)
    masks = full_masks()
    masks["reduce"][2:5] = False
    with pytest.raises(ValueError, match=r"node 1 has no active op on any of its edges 2..4"):
        net.set_masks(masks)
    assert net.get_masks()["reduce"].all()  # rejected masks leave the stored ones untouched


def test_removed_edge_contributes_nothing():
    """An edge with no active op is removed (the search's edge-selection step)."""
    net = _net(cells=3)  # cell 0 normal, cells 1 and 2 reduce
    masks = full_masks()
    masks["normal"][6] = False
    net.set_masks(masks)
    x = torch.randn(2, 3, 8, 8)
    y = net(x)
    with torch.no_grad():
        for cell in net.cells:
            if cell.cell_type == "normal":
                for p in cell.edges[6].parameters():
                    p.fill_(1e3)
    assert torch.equal(net(x), y)
    net.set_masks(full_masks())
    assert not torch.allclose(net(x), y)


def test_genotype_masks_select_its_edges():
    g = GENOTYPES["metanas_in_v2"]
    m = genotype_masks(g)
    assert int(m["normal"].sum()) == 6 and int(m["reduce"].sum()) == 6
    assert m["normal"][0, PRIMITIVES.index("conv_1x5_5x1")] and not m["normal"][3].any()


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_genotype_masked_supernet_equals_network(name):
    """Every edge but the genotype's masked, one op each: the supernet IS the genotype network
    (weights copied op by op into a fixed Network). The evaluation network has no final
    norm + ReLU, so the supernet is built without its `lastact` here."""
    g = GENOTYPES[name]
    torch.manual_seed(0)
    sup = Supernet(4, 5, 3, norm="batch", lastact=False)
    sup.set_masks(genotype_masks(g))
    net = Network(g, 4, 5, 3)
    net.stem.load_state_dict(sup.stem.state_dict(), strict=False)  # affine params stay 1 / 0
    net.classifier.load_state_dict(sup.classifier.state_dict())
    for fixed, search in zip(net.cells, sup.cells):
        cell_type = search.cell_type
        fixed.preprocess0.load_state_dict(search.preprocess0.state_dict(), strict=False)
        fixed.preprocess1.load_state_dict(search.preprocess1.state_dict(), strict=False)
        pairs = [pair for node in getattr(g, cell_type) for pair in node]
        nodes = [i for i in range(3) for _ in range(2)]
        for k, ((op, inp), node) in enumerate(zip(pairs, nodes)):
            source = search.edges[edge_index(node, inp)].ops[PRIMITIVES.index(op)]
            missing, unexpected = fixed.ops[k].load_state_dict(source.state_dict(), strict=False)
            assert not unexpected and all(k.endswith(("weight", "bias")) for k in missing)
    x = torch.randn(3, 3, 8, 8)
    assert torch.allclose(sup(x), net(x), atol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_thin_supernet(norm):
    net = thin_supernet(1, norm)
    assert net.C == 1 and len(net.cells) == 2 and [c.reduction for c in net.cells] == [False, True]
    assert isinstance(net.stem, nn.Identity)
    relu_inputs = []
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out: relu_inputs.append(inp[0].dim()))
    net.train()
    y = net(torch.randn(16, 1, 3, 3))
    assert y.shape == (16, 1) and torch.isfinite(y).all()
    assert relu_inputs and all(d == 4 for d in relu_inputs)


def test_parameter_count():
    net = _net(cells=2)
    assert parameter_count(net) == sum(p.numel() for p in net.parameters())
    head = net.classifier.weight.numel() + net.classifier.bias.numel()
    assert parameter_count(net, exclude_head=True) == parameter_count(net) - head
