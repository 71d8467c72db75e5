"""Tests of trainers.fewshot: features, batched logistic regression (vs sklearn), episodes, CI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers.data import DatasetError, ImageSplit, load_split
from trainers.episodes import sample_episodes
from trainers.fewshot import (evaluate_episodes, evaluate_model, extract_features,
                              fit_logistic_regression, mean_confidence_interval, predict_logits)

sklearn_lm = pytest.importorskip("sklearn.linear_model")

NORM3 = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: threaded LAPACK under oversubscription is far slower. Restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _episodes_data(episodes, ways, shots, dim, queries=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = F.normalize(torch.randn(episodes, ways * shots, dim, generator=g, dtype=torch.float64), dim=2)
    y = torch.arange(ways).repeat_interleave(shots).expand(episodes, -1).contiguous()
    Xq = F.normalize(torch.randn(episodes, queries, dim, generator=g, dtype=torch.float64), dim=2)
    return X, y, Xq


# ----------------------------------------------------------------- logistic regression


@pytest.mark.parametrize("shots, dim", [(1, 64), (5, 64), (5, 8)])
def test_logistic_regression_matches_sklearn(shots, dim):
    """Same optimum as LogisticRegression(C=1, lbfgs, multinomial), D=64 and D < support size."""
    ways = 5
    X, y, Xq = _episodes_data(4, ways, shots, dim)
    W, b = fit_logistic_regression(X, y, ways, C=1.0)
    assert W.shape == (4, dim, ways) and b.shape == (4, ways)
    probs = torch.softmax(predict_logits(Xq, W, b), dim=2).numpy()
    for e in range(4):
        # Tight tolerance so sklearn itself sits at the optimum (its default stops near 1e-4).
        ref = sklearn_lm.LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X[e].numpy(), y[e].numpy())
        np.testing.assert_allclose(probs[e], ref.predict_proba(Xq[e].numpy()), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(probs[e].argmax(1), ref.predict(Xq[e].numpy()))
        np.testing.assert_allclose(W[e].numpy(), ref.coef_.T, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b[e].numpy(), ref.intercept_, atol=1e-4, rtol=0)
        # sklearn with its default settings agrees to its own (looser) tolerance.
        default = sklearn_lm.LogisticRegression(C=1.0).fit(X[e].numpy(), y[e].numpy())
        np.testing.assert_allclose(probs[e], default.predict_proba(Xq[e].numpy()), atol=2e-3, rtol=0)


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_logistic_regression_is_stationary(C):
    """KKT: the gradient of C * sum CE + ||W||^2 / 2 vanishes at the returned (W, b)."""
    X, y, _ = _episodes_data(3, 4, 3, 16, seed=1)
    W, b = fit_logistic_regression(X, y, 4, C=C)
    W, b = W.clone().requires_grad_(), b.clone().requires_grad_()
    logits = X @ W + b.unsqueeze(1)
    obj = C * F.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), reduction="sum") + 0.5 * W.pow(2).sum()
    obj.backward()
    assert W.grad.abs().max() < 1e-7 and b.grad.abs().max() < 1e-7
    torch.testing.assert_close(b.sum(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_logistic_regression_batch_invariant():
    """Fitting episodes together or one at a time gives the same solution."""
    X, y, _ = _episodes_data(5, 5, 2, 12, seed=2)
    W, b = fit_logistic_regression(X, y, 5)
    for e in range(5):
        We, be = fit_logistic_regression(X[e:e + 1], y[e:e + 1], 5)
        torch.testing.assert_close(We[0], W[e], atol=1e-9, rtol=0)
        torch.testing.assert_close(be[0], b[e], atol=1e-9, rtol=0)


def test_logistic_regression_rejects_bad_input():
    X, y, _ = _episodes_data(2, 3, 2, 4)
    with pytest.raises(ValueError, match="no support example"):
        fit_logistic_regression(X, torch.zeros_like(y), 3)
    with pytest.raises(ValueError, match="0..2"):
        fit_logistic_regression(X, y + 1, 3)
    with pytest.raises(ValueError, match="NaN"):
        fit_logistic_regression(X * float("nan"), y, 3)
    with pytest.raises(ValueError, match="shape"):
        fit_logistic_regression(X, y[:, :-1], 3)
    with pytest.raises(ValueError, match="C="):
        fit_logistic_regression(X, y, 3, C=0.0)


# ------------------------------------------------------------------------- episodes


def _separable_features(labels: torch.Tensor, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """One-hot class directions plus small noise: every episode is perfectly separable."""
    g = torch.Generator().manual_seed(seed)
    feats = F.one_hot(labels, dim).float() + 0.05 * torch.randn(len(labels), dim, generator=g)
    return F.normalize(feats, dim=1)


def test_evaluate_episodes_separable_is_perfect():
    labels = torch.arange(10).repeat_interleave(8)
    episodes = sample_episodes(labels, ways=5, shots=1, queries=5, count=12, seed=3)
    accs = evaluate_episodes(_separable_features(labels), labels, episodes, batch=5, progress=False)
    assert accs.shape == (12,) and accs.dtype == torch.float64
    assert torch.equal(accs, torch.ones(12, dtype=torch.float64))


def test_evaluate_episodes_random_features_near_chance_and_batch_invariant():
    labels = torch.arange(10).repeat_interleave(10)
    feats = F.normalize(torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0)), dim=1)
    episodes = sample_episodes(labels, ways=5, shots=2, queries=6, count=20, seed=0)
    a = evaluate_episodes(feats, labels, episodes, batch=3, progress=False)
    b = evaluate_episodes(feats, labels, episodes, progress=False)
    assert torch.equal(a, b)
    assert 0.05 < float(a.mean()) < 0.45  # chance is 0.2


def test_evaluate_episodes_checks_split():
    labels = torch.arange(6).repeat_interleave(5)
    episodes = sample_episodes(labels, ways=3, shots=1, queries=2, count=4, seed=0)
    other = labels.flip(0)
    with pytest.raises(DatasetError):
        evaluate_episodes(_separable_features(other), other, episodes, progress=False)
    with pytest.raises(ValueError, match="feature rows"):
        evaluate_episodes(_separable_features(labels)[:10], None, episodes, progress=False)


# ------------------------------------------------------------------ confidence interval


def test_confidence_interval_known_values():
    mean, half = mean_confidence_interval([0.5, 0.6, 0.7])
    # t_{0.975, 2} = 4.3027 (tables), std = 0.1, n = 3.
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302652729749462 * 0.1 / math.sqrt(3), rel=1e-9)
    mean, half = mean_confidence_interval(torch.tensor([1.0, 0.0, 1.0, 0.0]), confidence=0.9)
    # t_{0.95, 3} = 2.3534 (tables), std = sqrt(1/3).
    assert mean == 0.5 and half == pytest.approx(2.3533634348018233 * math.sqrt(1 / 3) / 2, rel=1e-9)
    assert mean_confidence_interval([0.3, 0.3]) == (pytest.approx(0.3), 0.0)
    m, h = mean_confidence_interval([0.8])
    assert m == 0.8 and math.isnan(h)
    with pytest.raises(ValueError, match="no accuracies"):
        mean_confidence_interval([])
    with pytest.raises(ValueError, match="NaN"):
        mean_confidence_interval([0.1, float("nan")])


# -------------------------------------------------------------------------- features


class PixelNet(nn.Module):
    """Stand-in model: features = average-pooled pixels (C * 4 * 4) through a fixed conv."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(24, 4)

    def forward_features(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def test_extract_features_normalised_batched_and_mode_restored():
    torch.manual_seed(0)  # only the stand-in's default init; the code under test uses no global RNG
    model = PixelNet().train()
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    f = extract_features(model, images, device="cpu", normalization=NORM3, batch_size=3)
    assert f.shape == (10, 24) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(10))
    assert model.training, "the caller's mode is restored"
    g = extract_features(model, images, device="cpu", normalization=NORM3, batch_size=256)
    torch.testing.assert_close(f, g)  # eval-mode BN: batch composition does not matter
    r = extract_features(model, images, device="cpu", normalization=NORM3, image_size=12)
    assert r.shape == (10, 24)


def _toy_split(n_classes=8, per_class=12, seed=0) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    base = torch.rand(n_classes, 3, 8, 8, generator=g) * 255
    images = (base[labels] + 25 * torch.randn(len(labels), 3, 8, 8, generator=g)).clamp(0, 255)
    return ImageSplit(images.to(torch.uint8), labels, tuple(map(str, range(n_classes))),
                      "synthetic", "test")


def test_evaluate_model_plain_and_support_augmented():
    torch.manual_seed(0)
    model = PixelNet()
    split = _toy_split()
    episodes = sample_episodes(split.labels, ways=4, shots=2, queries=4, count=6, seed=1)
    plain = evaluate_model(model, split, episodes, device="cpu", normalization=NORM3, progress=False)
    feats = extract_features(model, split.images, device="cpu", normalization=NORM3)
    torch.testing.assert_close(plain, evaluate_episodes(feats, split.labels, episodes, progress=False))
    assert float(plain.mean()) > 0.5  # class-specific images: well above chance (0.25)

    aug = evaluate_model(model, split, episodes, device="cpu", normalization=NORM3, augment="small",
                         support_augment=2, seed=5, episode_batch=4, progress=False)
    again = evaluate_model(model, split, episodes, device="cpu", normalization=NORM3, augment="small",
                           support_augment=2, seed=5, episode_batch=6, progress=False)
    assert aug.shape == (6,) and torch.equal(aug, again)  # seeded per episode, batch invariant
    with pytest.raises(ValueError, match="augment"):
        evaluate_model(model, split, episodes, device="cpu", normalization=NORM3, support_augment=2)


@pytest.mark.slow
def test_end_to_end_train_then_evaluate_above_chance():
    """Tiny real network, synthetic data: pretrain, then 5-way 5-shot on held-out classes."""
    from search_spaces.genotypes import get_genotype
    from search_spaces.init import reinitialize
    from search_spaces.network import Network
    from trainers.rfs import get_recipe, pretrain

    train = load_split("synthetic", None, "train", train_classes=12, images_per_class=16, image_size=16)
    test = load_split("synthetic", None, "test", test_classes=8, images_per_class=15, image_size=16)
    net = Network(get_genotype("metanas_in_v2"), C=6, num_classes=12, cells=2)
    reinitialize(net, torch.Generator().manual_seed(0))
    cfg = get_recipe("synthetic").replace(epochs=3, lr_decay_epochs=(2,), batch_size=32)
    result = pretrain(net, train, cfg, device="cpu", progress=False)
    assert result.history[-1].loss < result.history[0].loss
    episodes = sample_episodes(test.labels, ways=5, shots=5, queries=5, count=20, seed=0)
    accs = evaluate_model(net, test, episodes, device="cpu", progress=False)
    mean, half = mean_confidence_interval(accs)
    assert mean - half > 0.4, f"5-way accuracy {mean:.3f} +- {half:.3f} not clearly above chance 0.2"
