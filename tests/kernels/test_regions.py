"""Linear regions: exact distinct sign patterns vs a brute-force set; hooks never leak."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import count_linear_regions, count_linear_regions_pairwise
from kernels.regions import pack_bits, sign_patterns




def _brute_force(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> int:
    """Python set of sign tuples, collected by hooks written independently here."""
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    patterns: set[tuple[bool, ...]] = set()
    try:
        step = batch_size or x.shape[0]
        with torch.no_grad():
            for start in range(0, x.shape[0], step):
                outs.clear()
                model(x[start:start + step])
                for n in range(outs[0].shape[0]):
                    patterns.add(tuple(v for o in outs for v in (o[n].flatten() > 0).tolist()))
    finally:
        for h in handles:
            h.remove()
    return len(patterns)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 1))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("n", [1, 7, 400])
def test_mlp_matches_brute_force(n):
    model = _mlp()
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(n))
    expected = _brute_force(model, x)
    assert count_linear_regions(model, x) == expected
    assert count_linear_regions_pairwise(model, x) == expected
    assert 1 <= expected <= n


def test_duplicates_are_one_region():
    model = _mlp()
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, x, x[:3]])
    assert count_linear_regions(model, x) == _brute_force(model, x)
    assert count_linear_regions(model, x) == count_linear_regions(model, x[:10])


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_thin_supernet_matches_brute_force(norm):
    """The reference's setting: thin supernet, train mode, 3x3 single-channel crops."""
    from search_spaces.supernet import thin_supernet

    torch.manual_seed(0)
    model = thin_supernet(in_channels=1, norm=norm)
    model.train()
    base = torch.randn(3, 80, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    # 20 repeated samples inside each batch of 100: same batch, same pattern
    x = torch.cat([torch.cat([b, b[:20]]) for b in base])
    expected = _brute_force(model, x, batch_size=100)
    assert expected <= 240
    assert count_linear_regions(model, x, batch_size=100) == expected
    assert count_linear_regions_pairwise(model, x, batch_size=100) == expected
    assert model.training  # mode untouched


def test_batch_size_matters_only_for_batch_coupled_models():
    model = _mlp()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    assert count_linear_regions(model, x, batch_size=7) == count_linear_regions(model, x)


def test_hooks_are_removed_and_never_duplicated():
    model = _mlp()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    first = count_linear_regions(model, x)
    assert _no_hooks(model)
    second = count_linear_regions(model, x)
    assert first == second and _no_hooks(model)
    # the pattern width stays the same: no ReLU recorded twice
    assert sign_patterns(model, x, packed=False).shape == (64, 11)


def test_hooks_removed_on_error():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.relu(x)
            raise RuntimeError("boom")

    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        count_linear_regions(model, torch.randn(3, 2))
    assert _no_hooks(model)


def test_inplace_relu_downstream_does_not_change_patterns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(inplace=True))
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(5))
    assert count_linear_regions(model, x) == _brute_force(model, x)


def test_pack_bits_preserves_row_equality():
    g = torch.Generator().manual_seed(6)
    for F in (1, 62, 63, 64, 130):
        bits = torch.rand(40, F, generator=g) > 0.5
        bits[5] = bits[3]
        words = pack_bits(bits)
        assert words.shape == (40, -(-F // 63))
        eq_bits = (bits[:, None, :] == bits[None, :, :]).all(-1)
        eq_words = (words[:, None, :] == words[None, :, :]).all(-1)
        assert torch.equal(eq_bits, eq_words)


def test_errors():
    with pytest.raises(ValueError, match="no nn.ReLU"):
        count_linear_regions(nn.Linear(2, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="non-empty"):
        count_linear_regions(_mlp(), torch.randn(0, 2))
    with pytest.raises(ValueError, match="batch_size"):
        count_linear_regions(_mlp(), torch.randn(3, 2), batch_size=0)
