"""`synthetic`: a procedurally generated few-shot dataset, the embedded default.

Each class is a random smooth colour pattern (its prototype): a low-frequency Gaussian
random field plus an oriented sinusoidal grating with a random colour, frequency,
orientation and phase. Each image of the class is a randomly shifted window of the
prototype with a random contrast / brightness change and per-pixel Gaussian noise. A
network (or even nearest-centroid on raw pixels) can tell the classes apart, so few-shot
accuracy is well above chance, yet the shifts and noise keep it from being trivial.

Every class draws its randomness from its own stream `SeedSequence(seed, (split, class))`,
so train / val / test classes are different prototypes (disjoint), the data is a pure
function of the seed and the options, and changing `images_per_class` or the number of
classes of one split never changes the prototypes of another.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers.datasets.base import DatasetError, ImageSplit

__all__ = ["SYNTHETIC_DEFAULTS", "load_synthetic", "synthetic_files"]

# Split index used in the seed stream; fixed so adding splits never reshuffles old ones.
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}

SYNTHETIC_DEFAULTS: dict[str, int | float] = {
    "train_classes": 32,
    "val_classes": 16,
    "test_classes": 16,
    "images_per_class": 30,
    "channels": 3,
    "noise": 0.5,       # per-pixel Gaussian noise, in units of the prototype's std
    "max_shift": 0.25,  # largest window shift, as a fraction of the image size
}
_DEFAULT_SIZE = 32
_COARSE = 4  # the random field is drawn on a 4x4 grid and upsampled: low frequency


def synthetic_files(root: Path | None, split: str, **options: object) -> tuple[Path, ...]:
    """Generated data reads no files."""
    return ()


def _prototype(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """One class prototype, float32 (C, size, size), zero mean and unit std."""
    coarse = torch.from_numpy(rng.standard_normal((1, channels, _COARSE, _COARSE)).astype(np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].numpy()
    freq = rng.uniform(1.5, 4.0) * 2.0 * np.pi / size  # 1.5 to 4 cycles per window
    theta = rng.uniform(0.0, np.pi)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    colour = rng.standard_normal(channels).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grating = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    proto = field + 0.8 * colour[:, None, None] * grating[None]
    proto -= proto.mean()
    return (proto / (proto.std() + 1e-6)).astype(np.float32)


def _class_images(seed: int, split_id: int, class_id: int, n: int, size: int, channels: int,
                  noise: float, shift: int) -> np.ndarray:
    """n images of one class, uint8 (n, C, size, size)."""
    proto_rng, image_rng = (np.random.default_rng(s) for s in
                            np.random.SeedSequence(seed, spawn_key=(split_id, class_id)).spawn(2))
    proto = _prototype(proto_rng, size + 2 * shift, channels)
    offsets = image_rng.integers(0, 2 * shift + 1, size=(n, 2))
    contrast = image_rng.uniform(0.7, 1.3, size=(n, 1, 1, 1)).astype(np.float32)
    brightness = image_rng.normal(0.0, 0.3, size=(n, 1, 1, 1)).astype(np.float32)
    pixel_noise = image_rng.standard_normal((n, channels, size, size)).astype(np.float32)
    windows = np.stack([proto[:, y:y + size, x:x + size] for y, x in offsets])
    signal = contrast * windows + brightness + noise * pixel_noise
    # Map the (about unit-variance) signal to mean 0.5, std about 0.25 in [0, 1].
    pixels = np.clip(0.5 + 0.2 * signal, 0.0, 1.0)
    return np.rint(pixels * 255.0).astype(np.uint8)


def _int_option(options: dict[str, object], name: str, minimum: int) -> int:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"synthetic option {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def load_synthetic(root: Path | None, split: str, *, image_size: int | None = None, seed: int = 0,
                   **options: object) -> ImageSplit:
    """Generate one split. `root` is ignored.

    Options (defaults in SYNTHETIC_DEFAULTS): train_classes, val_classes, test_classes,
    images_per_class, channels (1 or 3), noise, max_shift; image_size defaults to 32.
    Returns images uint8 (n_classes * images_per_class, C, S, S), class-major order.
    """
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise DatasetError(f"unknown synthetic option(s) {unknown}; valid options: "
                           f"{', '.join(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    n_classes = _int_option(opts, f"{split}_classes", 1)
    per_class = _int_option(opts, "images_per_class", 1)
    channels = _int_option(opts, "channels", 1)
    if channels not in (1, 3):
        raise DatasetError(f"synthetic option channels must be 1 or 3, got {channels}")
    size = _DEFAULT_SIZE if image_size is None else int(image_size)
    if size < 4:
        raise DatasetError(f"synthetic image_size must be >= 4, got {size}")
    noise = float(opts["noise"])  # type: ignore[arg-type]
    max_shift = float(opts["max_shift"])  # type: ignore[arg-type]
    if noise < 0 or not 0 <= max_shift < 0.5:
        raise DatasetError(f"synthetic options need noise >= 0 and 0 <= max_shift < 0.5, got "
                           f"noise={noise}, max_shift={max_shift}")
    shift = int(round(max_shift * size))
    split_id = _SPLIT_STREAM[split]
    images = np.concatenate([
        _class_images(int(seed), split_id, c, per_class, size, channels, noise, shift)
        for c in range(n_classes)])
    labels = torch.arange(n_classes, dtype=torch.int64).repeat_interleave(per_class)
    names = tuple(f"{split}_{c:03d}" for c in range(n_classes))
    return ImageSplit(torch.from_numpy(images), labels, names, "synthetic", split)
