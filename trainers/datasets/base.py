"""Shared pieces of the dataset loaders: the split container, the error type, the registry.

Every loader returns an `ImageSplit`: all images of one split as one uint8 tensor
`(N, C, H, W)` plus int64 labels `0..n_classes-1` (contiguous within the split), so the
episode sampler, the kernel batch and the trainers never care where the pixels came from.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DatasetError",
    "DatasetSpec",
    "ImageSplit",
    "Registry",
    "contiguous_labels",
    "normalize",
    "resize_images",
]


class DatasetError(ValueError):
    """A dataset that cannot be used: the message names the file (or root) and what was expected."""


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """All images of one split of one dataset.

    images:      uint8 tensor (N, C, H, W), C = 1 (grayscale) or 3 (RGB). It may be a
                 non-contiguous view (the RFS loaders permute HWC -> CHW without copying).
    labels:      int64 tensor (N,) with values 0..n_classes-1, every value used.
    class_names: tuple of n_classes names; `class_names[label]` is the original class id.
    dataset:     registry name of the dataset ("omniglot", ...).
    split:       split name ("train", "val", "test", ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    dataset: str
    split: str

    def __post_init__(self) -> None:
        where = f"{self.dataset}/{self.split}"
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"{where}: images must be a uint8 tensor (N, C, H, W), got "
                               f"{self.images.dtype} with shape {tuple(self.images.shape)}")
        if self.images.shape[1] not in (1, 3):
            raise DatasetError(f"{where}: images must have 1 or 3 channels, got shape "
                               f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DatasetError(f"{where}: labels must be an int64 tensor ({self.images.shape[0]},), "
                               f"got {self.labels.dtype} with shape {tuple(self.labels.shape)}")
        n = len(self.class_names)
        if n == 0 or self.images.shape[0] == 0:
            raise DatasetError(f"{where}: the split is empty (no classes or no images)")
        in_range = int(self.labels.min()) >= 0 and int(self.labels.max()) < n
        if not in_range or bool((torch.bincount(self.labels, minlength=n) == 0).any()):
            raise DatasetError(f"{where}: labels must use every value 0..{n - 1} "
                               f"({n} class names) and nothing else")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> torch.Tensor:
        """int64 (n_classes,): images per class."""
        return torch.bincount(self.labels, minlength=self.n_classes)


T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Read-only name -> value mapping whose missing-key error lists the valid names."""

    def __init__(self, kind: str, entries: Mapping[str, T]) -> None:
        self._kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self._kind} {name!r}; valid names: "
                           f"{', '.join(sorted(self._entries))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self._kind!r}, {sorted(self._entries)})"


Loader = Callable[..., ImageSplit]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset.

    loader(root, split, *, image_size, seed, **options) -> ImageSplit
    files(root, split, **options) -> the files that split reads (empty for generated data).
    splits: the splits every copy has; extra_splits: splits whose files may be absent
    (reported by `inspect_dataset` only when present).
    """

    name: str
    description: str
    loader: Loader
    files: Callable[..., tuple[Path, ...]]
    splits: tuple[str, ...] = ("train", "val", "test")
    extra_splits: tuple[str, ...] = ()
    needs_root: bool = True
    default_image_size: int | None = None

    @property
    def all_splits(self) -> tuple[str, ...]:
        return self.splits + self.extra_splits


def contiguous_labels(raw: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Remap arbitrary integer class ids to 0..n-1 in sorted-id order.

    raw: integer array (N,). Returns (labels int64 tensor (N,), sorted unique ids (n,)).
    """
    ids, inverse = np.unique(raw, return_inverse=True)
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64)), ids


def resize_images(images: torch.Tensor, size: int, *, chunk: int = 2048) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) to (N, C, size, size), bilinear with antialiasing.

    Done in chunks of `chunk` images so a large split never needs a full float copy.
    Returns uint8 (rounded, clamped); the input is returned unchanged if it already fits.
    """
    if size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {size}")
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(values: Sequence[float], channels: int, what: str) -> torch.Tensor:
    """float32 (channels,) from a per-channel tuple; a 1-tuple applies to every channel."""
    if len(values) == 1:
        return torch.full((channels,), float(values[0]), dtype=torch.float32)
    if len(values) != channels:
        raise ValueError(f"normalisation {what} has {len(values)} values but the images have "
                         f"{channels} channels; give 1 value or {channels}")
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel for float images in [0, 1], shape (N, C, H, W)."""
    c = images.shape[1]
    m = channel_stats(mean, c, "mean").to(images.device).view(1, c, 1, 1)
    s = channel_stats(std, c, "std").to(images.device).view(1, c, 1, 1)
    if bool((s <= 0).any()):
        raise ValueError(f"normalisation std must be positive, got {tuple(std)}")
    return (images - m) / s


def parse_fractions(value: Any, name: str) -> tuple[float, float, float]:
    """Validate a (train, val, test) fraction triple that sums to 1."""
    try:
        fr = tuple(float(v) for v in value)
    except TypeError:
        raise DatasetError(f"option {name} must be three fractions (train, val, test), "
                           f"got {value!r}") from None
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DatasetError(f"option {name} must be three non-negative fractions "
                           f"(train, val, test) summing to 1, got {value!r}")
    return fr  # type: ignore[return-value]
