"""MAML's gradient-descent filter and the MetaNTK's inner-loop transfer are one formula."""
from __future__ import annotations

import pytest
import torch

from kernels.meta import support_transfer
from trainers.maml import gd_filter


def _psd(n: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return a @ a.T


@pytest.mark.parametrize("rank", [5, 3])  # full rank, and singular (limit lr * steps)
@pytest.mark.parametrize("steps", [0, 1, 4, 50])
def test_gd_filter_gives_the_numbers_of_kernels_meta(rank: int, steps: int) -> None:
    m = _psd(5, rank, seed=rank + steps)
    lr = 0.5 / float(torch.linalg.eigvalsh(m).max())
    ours = gd_filter(m, lr, steps)
    theirs = support_transfer(m[None], reg=0.0, inner_lr=lr, inner_steps=steps)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)


def test_gd_filter_on_a_zero_matrix_is_lr_times_steps() -> None:
    torch.testing.assert_close(gd_filter(torch.zeros(3, 3, dtype=torch.float64), 0.1, 7),
                               0.7 * torch.eye(3, dtype=torch.float64))
