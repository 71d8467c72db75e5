"""reinitialize: deterministic from the generator, really changes weights, right scales."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from search_spaces.init import reinitialize
from search_spaces.supernet import Supernet


def _net():
    return Supernet(4, 5, 2, norm="batch", affine=True)


def test_same_seed_same_weights_and_changes_them():
    a, b = _net(), _net()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    reinitialize(a, torch.Generator().manual_seed(7))
    reinitialize(b, torch.Generator().manual_seed(7))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    conv_keys = [k for k, v in sa.items() if k.endswith("weight") and v.dim() == 4]
    assert all(not torch.equal(sa[k], before[k]) for k in conv_keys)
    reinitialize(b, torch.Generator().manual_seed(8))
    assert not torch.equal(a.classifier.weight, b.classifier.weight)


def test_scales_and_norms():
    model = nn.Sequential(nn.Conv2d(64, 256, 3, bias=True), nn.BatchNorm2d(256), nn.Linear(400, 300),
                          nn.GroupNorm(4, 8))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
        model[1].weight.fill_(5.0)
    reinitialize(model, torch.Generator().manual_seed(0))
    conv_std = model[0].weight.std().item()
    assert conv_std == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    assert model[2].weight.std().item() == pytest.approx(1 / math.sqrt(400), rel=0.02)
    assert torch.all(model[0].bias == 0) and torch.all(model[2].bias == 0)
    assert torch.all(model[1].weight == 1) and torch.all(model[1].running_mean == 0)
    assert torch.all(model[3].weight == 1) and torch.all(model[3].bias == 0)


def test_depthwise_fan_in():
    conv = nn.Conv2d(32, 32, 3, groups=32, bias=False)
    reinitialize(conv, torch.Generator().manual_seed(0))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.1)


def test_dtype_independent_values():
    a, b = _net(), _net().double()
    reinitialize(a, torch.Generator().manual_seed(1))
    reinitialize(b, torch.Generator().manual_seed(1))
    assert b.classifier.weight.dtype == torch.float64
    assert torch.equal(a.classifier.weight.double(), b.classifier.weight)


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))


def test_unknown_parametrised_module_raises():
    with pytest.raises(ValueError, match="_Custom"):
        reinitialize(nn.Sequential(nn.Linear(2, 2), _Custom()), torch.Generator().manual_seed(0))


def test_bad_generator():
    with pytest.raises(ValueError, match="torch.Generator"):
        reinitialize(_net(), 0)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gets_cpu_values():
    a, b = _net(), _net().to(torch.device("cuda"))
    reinitialize(a, torch.Generator().manual_seed(2))
    reinitialize(b, torch.Generator().manual_seed(2))
    assert torch.equal(a.classifier.weight, b.classifier.weight.cpu())
    with pytest.raises(ValueError, match="CPU"):
        reinitialize(a, torch.Generator(device="cuda"))
