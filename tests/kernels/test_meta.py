"""MetaNTK (paper eq. 10-11) against an independent block-by-block evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from kernels import condition_number, meta_ntk
from kernels.meta import spectral_weights, support_transfer




def _psd(n: int, seed: int, floor: float = 0.5) -> torch.Tensor:
    """Well-conditioned random PSD matrix (eigenvalues in [floor, floor + O(1)])."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    K = A @ A.T + floor * torch.eye(n, dtype=torch.float64)
    return 0.5 * (K + K.T)  # exactly symmetric, as a kernel should be


def _tasks(sizes, M, seed):
    """Disjoint random (query, support) index sets with the given (nq, ns) sizes."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(M, generator=g)
    out, at = [], 0
    for nq, ns in sizes:
        out.append((perm[at:at + nq], perm[at + nq:at + nq + ns]))
        at += nq + ns
    return out


def _reference(theta, tasks, inner, t, c, lr=None, steps=None):
    """Eq. 11 block by block with explicit inverse / expm / matrix power (numpy, float64)."""
    th = theta.numpy()
    K = th if inner is None else inner.numpy()
    A = []
    for q, s in tasks:
        q, s = q.numpy(), s.numpy()
        Ks = K[np.ix_(s, s)]
        n = len(s)
        if lr is not None:
            T = np.linalg.inv(Ks + c * np.eye(n)) @ (
                np.eye(n) - np.linalg.matrix_power(np.eye(n) - lr * Ks, steps))
        elif math.isinf(t):
            T = np.linalg.inv(Ks + c * np.eye(n))
        else:
            T = np.linalg.inv(Ks + c * np.eye(n)) @ (np.eye(n) - scipy.linalg.expm(-t * Ks))
        A.append(K[np.ix_(q, s)] @ T)
    blocks = []
    for i, (qi, si) in enumerate(tasks):
        row = []
        for j, (qj, sj) in enumerate(tasks):
            qi_, si_, qj_, sj_ = qi.numpy(), si.numpy(), qj.numpy(), sj.numpy()
            b = (th[np.ix_(qi_, qj_)] - A[i] @ th[np.ix_(si_, qj_)]
                 - th[np.ix_(qi_, sj_)] @ A[j].T + A[i] @ th[np.ix_(si_, sj_)] @ A[j].T)
            row.append(b)
        blocks.append(np.concatenate(row, axis=1))
    return torch.from_numpy(np.concatenate(blocks, axis=0))


SIZES = {
    "equal": [(5, 5), (5, 5), (5, 5)],        # the paper's kernel batch
    "unequal": [(2, 3), (4, 6), (3, 3), (1, 2)],
}


@pytest.mark.parametrize("sizes", sorted(SIZES))
@pytest.mark.parametrize("kind", ["maml", "anil"])
@pytest.mark.parametrize("t", [0.0, 0.3, 2.0, math.inf])
@pytest.mark.parametrize("c", [1e-3, 0.0])
def test_matches_block_by_block_eq11(sizes, kind, t, c):
    M = sum(a + b for a, b in SIZES[sizes]) + 2  # two unused samples
    theta = _psd(M, seed=1)
    inner = None if kind == "maml" else _psd(M, seed=2)
    tasks = _tasks(SIZES[sizes], M, seed=3)
    phi = meta_ntk(theta, tasks, inner=inner, inner_time=t, reg=c)
    ref = _reference(theta, tasks, inner, t, c)
    assert phi.dtype == torch.float64
    assert phi.shape == (sum(a for a, _ in SIZES[sizes]),) * 2
    assert torch.allclose(phi, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["maml", "anil"])
@pytest.mark.parametrize("t", [0.0, 1.0, math.inf])
def test_symmetric_psd(kind, t):
    M = 30
    theta = _psd(M, seed=4, floor=0.0)
    inner = None if kind == "maml" else _psd(M, seed=5, floor=0.0)
    phi = meta_ntk(theta, _tasks(SIZES["equal"], M, seed=6), inner=inner, inner_time=t)
    assert torch.equal(phi, phi.T)
    lam = torch.linalg.eigvalsh(phi)
    assert float(lam.min()) >= -1e-10 * float(lam.max())


def test_time_zero_is_theta_on_queries():
    M = 20
    theta = _psd(M, seed=7)
    tasks = _tasks([(3, 4), (2, 5)], M, seed=8)
    q = torch.cat([q for q, _ in tasks])
    for inner in (None, _psd(M, seed=9)):
        phi = meta_ntk(theta, tasks, inner=inner, inner_time=0.0)
        assert torch.equal(phi, theta[q][:, q])


def test_large_time_approaches_infinite_time():
    M = 20
    theta = _psd(M, seed=10)
    tasks = _tasks([(3, 4), (2, 5)], M, seed=11)
    a = meta_ntk(theta, tasks, inner_time=1e4)
    b = meta_ntk(theta, tasks, inner_time=math.inf)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_ill_conditioned_support_stays_finite():
    """A rank-deficient support block (duplicated sample) must not blow up with c > 0."""
    M = 12
    theta = _psd(M, seed=12)
    theta[1] = theta[0]
    theta[:, 1] = theta[:, 0]  # samples 0 and 1 identical: singular support block
    tasks = [(torch.tensor([4, 5]), torch.tensor([0, 1, 2])), (torch.tensor([6]), torch.tensor([3, 7]))]
    phi = meta_ntk(theta, tasks, inner_time=math.inf, reg=1e-3)
    assert torch.isfinite(phi).all()
    assert condition_number(phi) < math.inf


@pytest.mark.parametrize("kind", ["maml", "anil"])
@pytest.mark.parametrize("c", [0.0, 1e-2])
def test_discrete_form_matches_explicit_power(kind, c):
    M = 18
    theta = _psd(M, seed=13)
    inner = None if kind == "maml" else _psd(M, seed=14)
    tasks = _tasks([(3, 3), (3, 3), (2, 4)], M, seed=15)
    phi = meta_ntk(theta, tasks, inner=inner, inner_lr=0.1, inner_steps=5, reg=c)
    ref = _reference(theta, tasks, inner, None, c, lr=0.1, steps=5)
    assert torch.allclose(phi, ref, rtol=1e-9, atol=1e-10)


def test_discrete_form_is_s_step_recursion_of_linear_model():
    """For a linear model f(x) = w.x, s steps of GD on the support square loss give
    query outputs f_q(s) = f_q(0) - K_qs T (f_s(0) - y), T = K^{-1}(I - (I - lr K)^s)
    with K = X X^T: check T (inside meta_ntk's A) against the explicit recursion."""
    g = torch.Generator().manual_seed(16)
    d, ns, nq, lr, steps = 7, 4, 3, 0.05, 6
    X = torch.randn(ns + nq, d, generator=g, dtype=torch.float64)
    w0 = torch.randn(d, generator=g, dtype=torch.float64)
    y = torch.randn(ns, generator=g, dtype=torch.float64)
    Xs, Xq = X[:ns], X[ns:]
    w = w0.clone()
    for _ in range(steps):  # loss = 1/2 ||Xs w - y||^2
        w = w - lr * Xs.T @ (Xs @ w - y)
    K = X @ X.T
    M = ns + nq
    # theta = I makes Phi = I + (K_qs T)(K_qs T)^T, exposing meta_ntk's T.
    theta = torch.eye(M, dtype=torch.float64)
    tasks = [(torch.arange(ns, M), torch.arange(ns))]
    phi = meta_ntk(theta, tasks, inner=K, inner_lr=lr, inner_steps=steps, reg=0.0)
    T = support_transfer(K[:ns, :ns][None], reg=0.0, inner_lr=lr, inner_steps=steps)[0]
    pred = Xq @ w0 - K[ns:, :ns] @ T @ (Xs @ w0 - y)
    assert torch.allclose(pred, Xq @ w, rtol=1e-10, atol=1e-12)
    A = K[ns:, :ns] @ T
    assert torch.allclose(phi, torch.eye(nq, dtype=torch.float64) + A @ A.T, rtol=1e-10, atol=1e-12)


def test_spectral_weight_limits():
    s = torch.tensor([0.0, 1e-300, 1e-8, 1.0, 10.0], dtype=torch.float64)
    cont = spectral_weights(s, reg=0.0, inner_time=2.0)
    assert cont[0] == 2.0 and cont[1] == pytest.approx(2.0)
    assert cont[-1] == pytest.approx(-math.expm1(-20.0) / 10.0)
    disc = spectral_weights(s, reg=0.0, inner_lr=0.1, inner_steps=3)
    assert disc[0] == pytest.approx(0.3) and disc[1] == pytest.approx(0.3)
    assert disc[2] == pytest.approx(0.3, rel=1e-6)
    assert disc[3] == pytest.approx((1 - 0.9 ** 3) / 1.0)
    assert disc[4] == pytest.approx(1.0 / 10.0)  # lr*s = 1: one step solves exactly
    inf = spectral_weights(s, reg=1e-3, inner_time=math.inf)
    assert torch.allclose(inf, 1.0 / (s + 1e-3))


def test_non_finite_kernel_gives_nan_phi_and_inf_cn():
    M = 10
    theta = _psd(M, seed=17)
    theta[2, 3] = theta[3, 2] = math.nan
    phi = meta_ntk(theta, _tasks([(2, 3), (2, 3)], M, seed=18))
    assert phi.shape == (4, 4) and torch.isnan(phi).all()
    assert condition_number(phi) == math.inf


def test_overlapping_indices_follow_block_expansion():
    M = 10
    theta = _psd(M, seed=19)
    tasks = [(torch.tensor([0, 1]), torch.tensor([1, 2, 3])), (torch.tensor([2, 4]), torch.tensor([0, 5]))]
    ref = _reference(theta, tasks, None, 0.7, 1e-3)
    assert torch.allclose(meta_ntk(theta, tasks, inner_time=0.7), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(inner_time=1.0, inner_lr=0.1, inner_steps=2), "not both"),
    (dict(inner_lr=0.1), "both inner_lr and inner_steps"),
    (dict(inner_steps=3), "both inner_lr and inner_steps"),
    (dict(inner_lr=-0.1, inner_steps=3), "inner_lr"),
    (dict(inner_lr=0.1, inner_steps=1.5), "inner_steps"),
    (dict(inner_time=-1.0), "inner_time"),
    (dict(reg=-1.0), "reg"),
])
def test_bad_arguments_raise(kwargs, match):
    theta = _psd(8, seed=20)
    with pytest.raises(ValueError, match=match):
        meta_ntk(theta, [(torch.tensor([0]), torch.tensor([1, 2]))], **kwargs)


def test_bad_indices_and_shapes_raise():
    theta = _psd(8, seed=21)
    with pytest.raises(ValueError, match="outside"):
        meta_ntk(theta, [(torch.tensor([0]), torch.tensor([1, 8]))])
    with pytest.raises(ValueError, match="outside"):
        meta_ntk(theta, [(torch.tensor([-1]), torch.tensor([1]))])
    with pytest.raises(ValueError, match="integer"):
        meta_ntk(theta, [(torch.tensor([0.0]), torch.tensor([1]))])
    with pytest.raises(ValueError, match="square"):
        meta_ntk(theta[:, :5], [(torch.tensor([0]), torch.tensor([1]))])
    with pytest.raises(ValueError, match="same M samples"):
        meta_ntk(theta, [(torch.tensor([0]), torch.tensor([1]))], inner=_psd(7, seed=1))
    with pytest.raises(ValueError, match="empty"):
        meta_ntk(theta, [])
    bad = -_psd(8, seed=22)
    with pytest.raises(ValueError, match="positive semi-definite"):
        meta_ntk(theta, [(torch.tensor([0]), torch.tensor([1, 2]))], inner=bad)
