"""Few-shot datasets behind one registry: load a split as uint8 tensors, inspect a copy.

    split = load_split("omniglot", "../shared/data/omniglot", "train", seed=0)
    split.images  # uint8 (N, 1, 28, 28);  split.labels  # int64 (N,) in 0..n_classes-1

Registered datasets (`DATASETS`; formats and split rules in each loader's module doc):

- `synthetic` (trainers/datasets/synthetic.py): generated from the seed, no files; the
  embedded default. Options train_classes=32, val_classes=16, test_classes=16,
  images_per_class=30, channels=3, noise, max_shift; image_size 32.
- `omniglot` (trainers/datasets/omniglot.py): ROOT/background/<Alphabet>/<char>/*.png;
  classes = characters split 60/20/20 by a seeded permutation; 28x28, 1 channel, not
  inverted. Options fractions, rotations, invert.
- `mini_imagenet`, `tiered_imagenet` (trainers/datasets/rfs.py): the RFS pickle / npz
  files, 84x84 RGB. miniImageNet maps train -> ..._train_phase_train.pickle, val ->
  ..._val.pickle, test -> ..._test.pickle, plus the extra splits `train_phase_val` and
  `trainval`. Option unsafe_pickle.

Splits are "train", "val", "test" (disjoint classes); labels are contiguous per split.
`image_size` resizes (bilinear, antialiased) at load time. Every problem with a copy on
disk (missing root or file, corrupt pickle / npz, wrong key, shape or dtype, label count)
is one `DatasetError` naming the file and what was expected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.datasets.base import (DatasetError, DatasetSpec, ImageSplit, Registry, normalize,
                                    resize_images)
from trainers.datasets.omniglot import OMNIGLOT_DEFAULTS, load_omniglot, omniglot_files
from trainers.datasets.rfs import (MINI_FILES, load_mini_imagenet, load_tiered_imagenet, mini_files,
                                   tiered_files)
from trainers.datasets.synthetic import SYNTHETIC_DEFAULTS, load_synthetic, synthetic_files

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "ImageSplit",
    "MINI_FILES",
    "NORMALIZATION",
    "CIFAR10_NORMALIZATION",
    "OMNIGLOT_DEFAULTS",
    "SYNTHETIC_DEFAULTS",
    "inspect_dataset",
    "load_split",
    "normalize",
    "resize_images",
]

DATASETS: Registry[DatasetSpec] = Registry("dataset", {
    "synthetic": DatasetSpec(
        name="synthetic",
        description="procedurally generated colour patterns (seeded, no files; the default)",
        loader=load_synthetic, files=synthetic_files, needs_root=False, default_image_size=32),
    "omniglot": DatasetSpec(
        name="omniglot",
        description="Omniglot characters, ROOT/background/<Alphabet>/<character>/*.png, "
                    "split by character 60/20/20, 28x28 grayscale",
        loader=load_omniglot, files=omniglot_files, default_image_size=28),
    "mini_imagenet": DatasetSpec(
        name="mini_imagenet",
        description="miniImageNet RFS pickles miniImageNet_category_split_*.pickle, 84x84 RGB",
        loader=load_mini_imagenet, files=mini_files, extra_splits=("train_phase_val", "trainval"),
        default_image_size=84),
    "tiered_imagenet": DatasetSpec(
        name="tiered_imagenet",
        description="tieredImageNet RFS files {split}_images.npz + {split}_labels.pkl, 84x84 RGB",
        loader=load_tiered_imagenet, files=tiered_files, default_image_size=84),
})

# Per-channel (mean, std) of pixels scaled to [0, 1]; a 1-tuple applies to every channel.
_RFS_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
_RFS_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)
# CIFAR-10 statistics: the reference normalises the search's kernel images (resized to
# 32x32) with these whatever the dataset (its `transform_TENAS`, used for mini and tiered).
CIFAR10_NORMALIZATION: tuple[tuple[float, ...], tuple[float, ...]] = (
    (125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0), (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0))
NORMALIZATION: Registry[tuple[tuple[float, ...], tuple[float, ...]]] = Registry("dataset", {
    "synthetic": ((0.5,), (0.25,)),  # what the generator aims at (measured 0.49 / 0.22)
    "omniglot": ((0.9195,), (0.2182,)),  # measured on the 4,840 shared images at 28x28, not inverted
    "mini_imagenet": (_RFS_MEAN, _RFS_STD),  # RFS values
    "tiered_imagenet": (_RFS_MEAN, _RFS_STD),  # RFS uses the miniImageNet values
})


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.all_splits:
        raise DatasetError(f"{spec.name} has no split {split!r}; valid splits: "
                           f"{', '.join(spec.all_splits)}")


def _root(spec: DatasetSpec, root: str | Path | None) -> Path | None:
    if root is None and spec.needs_root:
        raise DatasetError(f"{spec.name} needs a root folder (--root DIR): {spec.description}")
    return None if root is None else Path(root)


def load_split(name: str, root: str | Path | None, split: str, *, image_size: int | None = None,
               seed: int = 0, **options: Any) -> ImageSplit:
    """Load one split of a registered dataset.

    name: a key of DATASETS (KeyError listing them otherwise); root: the dataset folder
    (ignored by `synthetic`); split: "train", "val", "test" or an extra split of the
    dataset; image_size: resize to image_size x image_size (default: the dataset's
    native size); seed: the class split / generation seed; options: dataset specific.
    Returns an ImageSplit with images uint8 (N, C, H, W) and labels 0..n-1.
    """
    spec = DATASETS[name]
    _check_split(spec, split)
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) != image_size
                                   or image_size < 1):
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")
    result = spec.loader(_root(spec, root), split, image_size=image_size, seed=seed, **options)
    if image_size is not None and result.images.shape[-2:] != (image_size, image_size):
        result = ImageSplit(resize_images(result.images, int(image_size)), result.labels,
                            result.class_names, result.dataset, result.split)
    return result


def _describe(split: ImageSplit, files: tuple[Path, ...]) -> dict[str, Any]:
    counts = split.class_counts()
    return {
        "files": [str(f) for f in files],
        "classes": split.n_classes,
        "images": len(split),
        "image_shape": list(split.image_shape),
        "dtype": str(split.images.dtype).removeprefix("torch."),
        "min_images_per_class": int(counts.min()),
        "max_images_per_class": int(counts.max()),
    }


def inspect_dataset(name: str, root: str | Path | None, **options: Any) -> dict[str, Any]:
    """Load every split and summarise it (options as for load_split: image_size, seed, ...).

    Returns {"dataset", "description", "root", "options", "splits": {split: {"files",
    "classes", "images", "image_shape" [C, H, W], "dtype", "min_images_per_class",
    "max_images_per_class"}}}. The standard splits must load; extra splits (miniImageNet's
    train_phase_val / trainval) are reported only when their files exist.
    """
    spec = DATASETS[name]
    path = _root(spec, root)
    loader_options = {k: v for k, v in options.items() if k not in ("image_size", "seed")}
    splits: dict[str, Any] = {}
    for split in spec.all_splits:
        files = spec.files(path, split, **loader_options)
        if split in spec.extra_splits and not all(f.is_file() for f in files):
            continue
        splits[split] = _describe(load_split(name, path, split, **options), files)
    return {
        "dataset": name,
        "description": spec.description,
        "root": None if path is None else str(path),
        "options": {k: v for k, v in options.items()},
        "splits": splits,
    }
