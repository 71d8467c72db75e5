"""Analytic ReLU NNGP / NTK (kernels.analytic): closed forms, Monte-Carlo, wide networks."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.analytic import analytic_meta_ntk, analytic_nngp, analytic_ntk, relu_nngp_ntk
from kernels.meta import meta_ntk
from kernels.ntk import empirical_ntk
from trainers.maml import ReLUMLP


def _inputs(n: int = 6, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_depth1_nngp_is_the_arccos_kernel() -> None:
    """Depth 1, no bias: Sigma^2 = w * (w/d)|x||x'| (sin t + (pi - t) cos t) / (2 pi) (Cho & Saul)."""
    x, w = _inputs(), 1.7
    got = analytic_nngp(x, x, 1, weight_var=w)
    norms = x.norm(dim=1)
    cos = ((x @ x.T) / (norms[:, None] * norms[None, :])).clamp(-1, 1)
    t = torch.arccos(cos)
    want = w * (w / x.shape[1]) * norms[:, None] * norms[None, :] * (torch.sin(t) + (math.pi - t) * cos) / (2 * math.pi)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias_var", [0.0, 0.3])
def test_depth1_nngp_matches_monte_carlo(bias_var: float) -> None:
    """E_w[f(x) f(x')] over 400k hidden units: Monte-Carlo error ~ 1/sqrt(4e5) ~ 2e-3."""
    x, w = _inputs(4, 3, seed=1), 2.0
    gen = torch.Generator().manual_seed(2)
    n = 400_000
    W = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    h = torch.relu(math.sqrt(w / 3) * x @ W.T + math.sqrt(bias_var) * b)  # (4, n)
    mc = w * (h @ h.T) / n + bias_var
    got = analytic_nngp(x, None, 1, weight_var=w, bias_var=bias_var)
    assert float((mc - got).norm() / got.norm()) < 0.02


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_diagonal_on_the_sphere(depth: int) -> None:
    """|x|^2 = d, weight_var 2, no bias: Sigma(x,x) = 2 per layer, so Theta(x,x) = 2 (depth + 1)."""
    x = _inputs(5, 7)
    x = x * (math.sqrt(7) / x.norm(dim=1, keepdim=True))
    nngp, ntk = relu_nngp_ntk(x, None, depth)
    torch.testing.assert_close(torch.diagonal(nngp), torch.full((5,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(torch.diagonal(ntk), torch.full((5,), 2.0 * (depth + 1), dtype=torch.float64))


def test_shapes_symmetry_psd_and_cross_blocks() -> None:
    x1, x2 = _inputs(5, 4, seed=3), _inputs(3, 4, seed=4)
    nngp, ntk = relu_nngp_ntk(x1, x2, 2, bias_var=0.1)
    assert nngp.shape == ntk.shape == (5, 3) and ntk.dtype == torch.float64
    full = analytic_ntk(torch.cat([x1, x2]), None, 2, bias_var=0.1)
    torch.testing.assert_close(full[:5, 5:], ntk, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full, full.T)
    assert float(torch.linalg.eigvalsh(full).min()) > -1e-10


def test_linear_model_ntk_is_exact() -> None:
    """depth 0 is a linear model: its empirical NTK equals the analytic one for any draw."""
    x = _inputs(6, 5)
    model = ReLUMLP(5, 1, 0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(empirical_ntk(model, x, params="all"), analytic_ntk(x, None, 0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth,width", [(1, 1024), (2, 512), (3, 512)])
def test_matches_wide_network_within_monte_carlo_tolerance(depth: int, width: int) -> None:
    """The empirical NTK averaged over `seeds` networks fluctuates as c (depth+1)/sqrt(width*seeds)
    around the limit; c <= 1.3 was measured over 16 draws, we allow 3."""
    x, seeds = _inputs(6, 5), 4
    emp = sum(empirical_ntk(ReLUMLP(5, width, depth, generator=torch.Generator().manual_seed(s)), x, params="all")
              for s in range(seeds)) / seeds
    ref = analytic_ntk(x, None, depth)
    err = float((emp - ref).norm() / ref.norm())
    assert err < 3 * (depth + 1) / math.sqrt(width * seeds), err


def test_bias_gradients_are_part_of_the_ntk() -> None:
    x, seeds, width = _inputs(5, 4, seed=5), 4, 1024
    emp = sum(empirical_ntk(ReLUMLP(4, width, 1, bias_var=0.5, generator=torch.Generator().manual_seed(s)), x,
                            params="all", backend="func") for s in range(seeds)) / seeds
    ref = analytic_ntk(x, None, 1, bias_var=0.5)
    assert float((emp - ref).norm() / ref.norm()) < 3 * 2 / math.sqrt(width * seeds)


def test_analytic_meta_ntk_is_meta_ntk_of_the_analytic_ntk() -> None:
    x = _inputs(8, 4, seed=6)
    tasks = [(torch.tensor([0, 1]), torch.tensor([2, 3])), (torch.tensor([4, 5]), torch.tensor([6, 7]))]
    got = analytic_meta_ntk(x, tasks, 2, inner_lr=0.05, inner_steps=3, reg=0.0)
    want = meta_ntk(analytic_ntk(x, None, 2), tasks, inner_lr=0.05, inner_steps=3, reg=0.0)
    torch.testing.assert_close(got, want)
    # No inner step: the MetaNTK is the NTK over the queries.
    plain = analytic_meta_ntk(x, tasks, 2, inner_time=0.0)
    q = torch.tensor([0, 1, 4, 5])
    torch.testing.assert_close(plain, analytic_ntk(x[q], None, 2))


@pytest.mark.parametrize("kwargs,match", [
    (dict(x1=torch.zeros(3)), "x1 must be a"),
    (dict(x1=torch.zeros(3, 2), x2=torch.zeros(3, 4)), "x2 must be"),
    (dict(x1=torch.zeros(3, 2), depth=-1), "depth"),
    (dict(x1=torch.zeros(3, 2), weight_var=0.0), "weight_var"),
    (dict(x1=torch.zeros(3, 2), bias_var=-1.0), "bias_var"),
])
def test_bad_input_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        relu_nngp_ntk(**kwargs)


def test_zero_input_row_is_finite() -> None:
    """A zero input has zero variance without bias: kernels are 0 there, never NaN."""
    x = torch.cat([torch.zeros(1, 3, dtype=torch.float64), _inputs(2, 3)])
    nngp, ntk = relu_nngp_ntk(x, None, 2)
    assert torch.isfinite(ntk).all() and torch.isfinite(nngp).all()
    assert float(ntk[0].abs().max()) == 0.0
