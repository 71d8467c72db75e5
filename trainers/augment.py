"""Batched, seeded data augmentation on uint8 image tensors (RFS training transforms).

The RFS recipe (Tian et al. 2020, used by the paper for retraining searched cells)
augments each training image with ``RandomCrop(84, padding=8)``, ``ColorJitter(0.4, 0.4,
0.4)`` and ``RandomHorizontalFlip`` and then normalises with the dataset's mean/std.
torchvision applies those per image on the CPU and draws from the global RNG; here every
transform works on a whole batch ``(B, C, H, W)`` on the batch's device, and every random
parameter (crop offsets, jitter factors and order, flip coins, affine angles) is drawn on
the CPU from an explicit ``torch.Generator`` and then moved to the device. So a batch is
augmented identically on CPU and GPU, and a training epoch is reproducible bit for bit on
the CPU from its seed.

Registry ``AUGMENTATIONS`` (name -> factory of a step tuple), built by ``make_augment``:

- ``"rfs84"``: RandomCrop(input size, padding 8, zero fill), ColorJitter(brightness 0.4,
  contrast 0.4, saturation 0.4) with a random order of the three per image, horizontal
  flip with probability 1/2 (the RFS order). For 84x84 inputs that is exactly
  ``RandomCrop(84, padding=8)``.
- ``"omniglot28"``: a small random affine map per image (rotation within +-10 degrees,
  scale in [0.9, 1.1], shift up to 2 pixels) with border replication, so the uniform
  background of a character image extends into the uncovered corners; no colour
  jitter and no flip (handwritten characters are not mirror-symmetric).
- ``"small"``: RandomCrop(input size, padding 4, zero fill) + horizontal flip, the
  CIFAR-style recipe for 32x32 synthetic images.
- ``"none"``: no augmentation (only the uint8 -> normalised float conversion).

Differences from torchvision, on purpose: the jitter works in float on the ``[0, 1]``
image without torchvision's uint8 rounding between the three PIL operations; crop and
flip are exact.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTATIONS",
    "BatchAugment",
    "Normalization",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "color_jitter",
    "make_augment",
    "normalize",
    "random_affine",
    "random_crop",
    "random_hflip",
    "resize",
    "rgb_to_grayscale",
    "to_float",
]

Normalization = tuple[Sequence[float], Sequence[float]]
"""Per-channel ``(mean, std)`` on the ``[0, 1]`` scale, as ``trainers.data.NORMALIZATION``."""

Step = Callable[[Tensor, torch.Generator], Tensor]
"""One augmentation step: float images ``(B, C, H, W)`` in ``[0, 1]`` -> same shape."""

# ITU-R 601-2 luma weights, the ones torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


def _check_images(images: Tensor, what: str = "images") -> None:
    if images.dim() != 4:
        raise ValueError(
            f"{what}: expected a batch of shape (B, C, H, W), got shape {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0)"
        )


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device) -> Tensor:
    """``n`` draws from U(low, high) made on the CPU generator, moved to ``device``; (n,)."""
    return (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).to(
        device=device, dtype=torch.float32
    )


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma of float images: ``(B, C, H, W) -> (B, 1, H, W)``; one-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(
            f"colour jitter: expected 1 or 3 channels, got {x.shape[1]}; "
            "use augment 'small' or 'none' for other channel counts"
        )
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend`` for float images: ``clamp(f * x + (1 - f) * other, 0, 1)``; factor (B,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Brightness as torchvision: blend with black. ``x`` (B, C, H, W) in [0, 1], factor (B,)."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Contrast as torchvision: blend with the mean grey level of each image. Shapes as above."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Saturation as torchvision: blend with the grayscale image (no-op for one channel)."""
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


def random_crop(x: Tensor, generator: torch.Generator, *, padding: int, mode: str = "constant") -> Tensor:
    """Pad by ``padding`` on every side, then crop a random window of the input size per image.

    ``x``: (B, C, H, W) float; returns (B, C, H, W). Offsets are uniform in ``0..2*padding``
    as torchvision's ``RandomCrop(size, padding)``; ``mode`` is ``F.pad``'s mode
    ("constant" = zero fill as torchvision's default, "replicate" = border pixels).
    """
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice: result is (B, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: Tensor, generator: torch.Generator, *, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p``; (B, C, H, W) -> same."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def color_jitter(
    x: Tensor,
    generator: torch.Generator,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
) -> Tensor:
    """torchvision ``ColorJitter(brightness, contrast, saturation)`` on a float batch.

    Per image: factors uniform in ``[1 - v, 1 + v]`` and a uniformly random order of the
    three adjustments (torchvision draws ``randperm`` per call, i.e. per image). Each of the
    three positions evaluates all three adjustments and selects per image with ``where``,
    which keeps it batched at 3x the (tiny) arithmetic cost.
    """
    b = x.shape[0]
    factors = torch.stack(
        [
            _uniform(generator, b, max(0.0, 1.0 - v), 1.0 + v, x.device)
            for v in (brightness, contrast, saturation)
        ]
    )  # (3, B)
    order = torch.rand(b, 3, generator=generator).argsort(dim=1).to(x.device)  # (B, 3) permutations
    ops = (adjust_brightness, adjust_contrast, adjust_saturation)
    for position in range(3):
        which = order[:, position].view(-1, 1, 1, 1)
        outs = [op(x, factors[k]) for k, op in enumerate(ops)]
        x = torch.where(which == 0, outs[0], torch.where(which == 1, outs[1], outs[2]))
    return x


def random_affine(
    x: Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 2.0,
) -> Tensor:
    """Small random rotation, scaling and shift per image, bilinear, border-replicated.

    ``x``: (B, C, H, W) float; returns the same shape. ``max_shift`` is in pixels.
    """
    b, _, h, w = x.shape
    angle = _uniform(generator, b, -degrees, degrees, x.device) * (math.pi / 180.0)
    s = _uniform(generator, b, scale[0], scale[1], x.device)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    tx = _uniform(generator, b, -max_shift, max_shift, x.device) * (2.0 / w)
    ty = _uniform(generator, b, -max_shift, max_shift, x.device) * (2.0 / h)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s  # output -> input map: inverse scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(x: Tensor, normalization: Normalization) -> Tensor:
    """``(x - mean) / std`` per channel; x (B, C, H, W) float in [0, 1]."""
    mean, std = normalization
    c = x.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(
            f"normalization: mean/std have {len(mean)}/{len(std)} entries but the images have "
            f"{c} channels; pass the dataset's NORMALIZATION entry"
        )
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def to_float(
    images: Tensor, normalization: Normalization, *, image_size: int | None = None
) -> Tensor:
    """Evaluation transform: uint8 (B, C, H, W) -> normalised float32 (B, C, S, S).

    ``image_size`` resizes (bilinear, antialiased) when the model expects another size than
    the stored images; ``None`` keeps the stored size.
    """
    _check_images(images)
    x = images.to(torch.float32) / 255.0
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = resize(x, image_size)
    return normalize(x, normalization)


def resize(x: Tensor, image_size: int) -> Tensor:
    """Bilinear, antialiased resize of float images (B, C, H, W) -> (B, C, S, S).

    The filter weights are non-negative and sum to one, so the resize commutes with the
    per-channel normalisation and may be applied before or after it.
    """
    if tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                         align_corners=False)


AUGMENTATIONS: dict[str, Callable[[], tuple[Step, ...]]] = {
    "rfs84": lambda: (
        partial(random_crop, padding=8),
        partial(color_jitter, brightness=0.4, contrast=0.4, saturation=0.4),
        random_hflip,
    ),
    "omniglot28": lambda: (partial(random_affine, degrees=10.0, scale=(0.9, 1.1), max_shift=2.0),),
    "small": lambda: (partial(random_crop, padding=4), random_hflip),
    "none": lambda: (),
}


@dataclass(frozen=True)
class BatchAugment:
    """A training transform: uint8 (B, C, H, W) -> augmented, normalised float32 (B, C, H, W).

    Call as ``augment(images, generator)``; ``generator`` is a CPU ``torch.Generator`` that
    supplies every random draw, so equal generator states give equal outputs.
    """

    name: str
    steps: tuple[Step, ...]
    normalization: Normalization

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(images)
        if generator.device.type != "cpu":
            raise ValueError(
                f"augment {self.name!r}: expected a CPU torch.Generator (random parameters are "
                f"drawn on the CPU and moved to the images), got one on {generator.device}"
            )
        x = images.to(torch.float32) / 255.0
        for step in self.steps:
            x = step(x, generator)
        return normalize(x, self.normalization)


def make_augment(name: str, normalization: Normalization) -> BatchAugment:
    """Build the registered augmentation ``name`` followed by normalisation.

    Raises ``KeyError`` naming the valid choices for an unknown name.
    """
    if name not in AUGMENTATIONS:
        raise KeyError(
            f"unknown augmentation {name!r}; valid names: {', '.join(sorted(AUGMENTATIONS))}"
        )
    return BatchAugment(name=name, steps=AUGMENTATIONS[name](), normalization=normalization)
