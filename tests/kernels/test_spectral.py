"""Condition number: known spectra, and every degenerate case is an explicit inf."""
from __future__ import annotations

import math

import pytest
import torch

from kernels import condition_number
from kernels.spectral import eigenvalues


@pytest.mark.parametrize("spectrum", [[1.0, 2.0, 4.0], [3.0], [1e-6, 1.0, 1e6], [5.0, 5.0]])
def test_known_diagonal_spectrum(spectrum):
    K = torch.diag(torch.tensor(spectrum, dtype=torch.float64))
    assert condition_number(K) == pytest.approx(max(spectrum) / min(spectrum), rel=1e-12)


def test_rotated_spectrum_float32_input_uses_float64():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    lam = torch.tensor([1.0, 2.0, 3.0, 10.0, 100.0, 1000.0], dtype=torch.float64)
    K = Q @ torch.diag(lam) @ Q.T
    assert condition_number(K) == pytest.approx(1000.0, rel=1e-9)
    assert condition_number(K.float()) == pytest.approx(1000.0, rel=1e-3)
    assert eigenvalues(K.float()).dtype == torch.float64


@pytest.mark.parametrize("K", [
    torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)),          # singular
    torch.ones(3, 3, dtype=torch.float64),                                  # rank one
    torch.diag(torch.tensor([-1e-3, 1.0, 2.0], dtype=torch.float64)),       # indefinite
    torch.tensor([[1.0, math.nan], [math.nan, 1.0]], dtype=torch.float64),  # NaN
    torch.tensor([[1.0, 0.0], [0.0, math.inf]], dtype=torch.float64),       # inf
])
def test_degenerate_kernels_give_inf(K):
    assert condition_number(K) == math.inf


@pytest.mark.parametrize("bad", [torch.ones(2, 3), torch.ones(3), torch.ones(2, 2, 2),
                                 torch.ones(0, 0), torch.ones(2, 2, dtype=torch.long)])
def test_non_square_or_non_float_raises(bad):
    with pytest.raises(ValueError, match="K"):
        condition_number(bad)


def test_not_a_tensor_raises():
    with pytest.raises(ValueError, match="torch.Tensor"):
        condition_number([[1.0, 0.0], [0.0, 1.0]])
