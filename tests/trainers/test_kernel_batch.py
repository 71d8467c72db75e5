"""The search's kernel images as the reference: CIFAR-10 normalisation whatever the dataset,
and the plain-NTK (TE-NAS ablation) batch of 30 plain augmented images."""
from __future__ import annotations

import pytest
import torch

from trainers.data import CIFAR10_NORMALIZATION, NORMALIZATION, ImageSplit, load_split
from trainers.episodes import (KERNEL_NORMALIZATIONS, kernel_normalization, sample_kernel_batch,
                               sample_plain_batch)


@pytest.fixture(scope="module")
def synthetic() -> ImageSplit:
    return load_split("synthetic", None, "train", train_classes=8, images_per_class=6)


def _grey(n: int = 12) -> ImageSplit:
    images = torch.randint(0, 256, (n, 1, 10, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n) % 3, ("a", "b", "c"), "omniglot", "train")


def test_reference_kernel_normalization_is_cifar10_whatever_the_dataset(synthetic: ImageSplit) -> None:
    # The reference's transform_TENAS numbers, written out.
    mean = (125.3 / 255, 123.0 / 255, 113.9 / 255)
    std = (63.0 / 255, 62.1 / 255, 66.7 / 255)
    assert CIFAR10_NORMALIZATION == (mean, std)
    assert kernel_normalization("cifar", synthetic) == (mean, std)
    assert kernel_normalization("dataset", synthetic) == NORMALIZATION["synthetic"]
    # A grey split (the reference never ran one) gets the channel averages.
    g_mean, g_std = kernel_normalization("cifar", _grey())
    assert g_mean == pytest.approx((sum(mean) / 3,)) and g_std == pytest.approx((sum(std) / 3,))
    assert set(KERNEL_NORMALIZATIONS) == {"cifar", "dataset"}
    with pytest.raises(KeyError, match="valid names: cifar, dataset"):
        kernel_normalization("imagenet", synthetic)


def test_kernel_batch_queries_carry_the_cifar_normalisation(synthetic: ImageSplit) -> None:
    stats = kernel_normalization("cifar", synthetic)
    batch = sample_kernel_batch(synthetic, normalization=stats, generator=torch.Generator().manual_seed(3))
    q = torch.cat([q for q, _ in batch.tasks])
    raw = torch.nn.functional.interpolate(synthetic.images[batch.source[q]].float() / 255, size=(32, 32),
                                          mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    m = torch.tensor(stats[0]).view(1, 3, 1, 1)
    s = torch.tensor(stats[1]).view(1, 3, 1, 1)
    assert torch.allclose(batch.images[q], (raw - m) / s, atol=1e-5)


def _augmentations(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every flip x crop offset of one (C, s, s) image with zero padding `pad`."""
    s = img.shape[-1]
    out = []
    for x in (img, img.flip(-1)):
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        out += [padded[:, dy:dy + s, dx:dx + s] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return out


def test_plain_batch_is_30_random_augmented_images(synthetic: ImageSplit) -> None:
    """The TE-NAS ablation's batch: as many images as the MetaNTK's (3 x (5 + 5) = 30), no task
    structure, every image resized, flipped/cropped like a support image and normalised."""
    stats = kernel_normalization("cifar", synthetic)
    batch = sample_plain_batch(synthetic, n=30, image_size=32, normalization=stats,
                               generator=torch.Generator().manual_seed(0))
    assert batch.images.shape == (30, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.tasks == [] and batch.source.shape == (30,)
    assert len(set(batch.source.tolist())) == 30  # distinct images
    assert len(set(synthetic.labels[batch.source].tolist())) > 5  # not 5-way tasks: any class
    m = torch.tensor(stats[0]).view(3, 1, 1)
    s = torch.tensor(stats[1]).view(3, 1, 1)
    unit = batch.images * s + m  # back to [0, 1] pixels
    changed = 0
    for row, src in zip(unit, batch.source.tolist()):
        raw = synthetic.images[src].float() / 255  # stored at 32x32: no resize
        dist = min(float((row - a).abs().max()) for a in _augmentations(raw, 4))
        assert dist < 1e-5  # some flip + crop of its source image
        changed += not torch.allclose(row, raw, atol=1e-5)
    assert changed > 20  # augmented (the identity crop without flip is 1 of 162)


def test_plain_batch_draws_and_errors(synthetic: ImageSplit) -> None:
    a = sample_plain_batch(synthetic, n=10, generator=torch.Generator().manual_seed(1))
    b = sample_plain_batch(synthetic, n=10, generator=torch.Generator().manual_seed(1))
    c = sample_plain_batch(synthetic, n=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match="needs 49 images"):
        sample_plain_batch(synthetic, n=49, generator=torch.Generator())
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        sample_plain_batch(synthetic, generator=None)  # type: ignore[arg-type]
