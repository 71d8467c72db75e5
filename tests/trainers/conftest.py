"""Fixtures that write tiny datasets in the exact on-disk formats the loaders read.

miniImageNet: RFS pickles (protocol 2, dict with `data` uint8 N x 84 x 84 x 3, `labels`
as a list of ints with arbitrary ids, `catname2label`); tieredImageNet: `{split}_images.npz`
(key `images`) + `{split}_labels.pkl` (dict with `labels`); Omniglot: the
background/<Alphabet>/<character>/*.png tree of 105x105 1-bit PNGs.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.data import MINI_FILES

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2].parent / "shared/data/omniglot"

# split -> original class ids (deliberately non-contiguous and unsorted in the files)
MINI_CLASS_IDS = {"train": (7, 3, 12), "val": (40, 33), "test": (90, 81, 85),
                  "train_phase_val": (7, 3, 12), "trainval": (7, 3, 12, 40, 33)}
TIERED_CLASS_IDS = {"train": (5, 1, 9), "val": (20, 22), "test": (31, 30)}
IMAGES_PER_CLASS = 4


def class_images(class_ids: tuple[int, ...], per_class: int, size: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """uint8 (n, size, size, 3) images whose red channel at (0, 0) encodes the class id."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(class_ids) * per_class, size, size, 3), dtype=np.uint8)
    labels = [c for c in class_ids for _ in range(per_class)]
    order = rng.permutation(len(labels))  # files are not sorted by class
    images = images[order]
    labels = [labels[i] for i in order]
    images[:, 0, 0, 0] = labels
    return images, labels


def write_mini(root: Path, *, size: int = 84, per_class: int = IMAGES_PER_CLASS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (split, filename) in enumerate(MINI_FILES.items()):
        ids = MINI_CLASS_IDS[split]
        images, labels = class_images(ids, per_class, size, seed=i)
        payload = {"data": images, "labels": labels,
                   "catname2label": {f"n{c:08d}": c for c in ids}}
        with open(root / filename, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    return root


def write_tiered(root: Path, *, size: int = 84, per_class: int = IMAGES_PER_CLASS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (split, ids) in enumerate(TIERED_CLASS_IDS.items()):
        images, labels = class_images(ids, per_class, size, seed=10 + i)
        np.savez(root / f"{split}_images.npz", images=images)
        with open(root / f"{split}_labels.pkl", "wb") as fh:
            pickle.dump({"labels": np.asarray(labels, dtype=np.int64)}, fh, protocol=2)
    return root


def write_omniglot(root: Path, *, alphabets: int = 2, characters: int = 5, drawers: int = 3,
                   subset: str = "background") -> Path:
    """alphabets x characters classes of `drawers` 105x105 1-bit PNGs each."""
    rng = np.random.default_rng(0)
    for a in range(alphabets):
        for c in range(characters):
            folder = root / subset / f"Alphabet_{a}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for d in range(drawers):
                pixels = np.ones((105, 105), dtype=bool)
                y, x = rng.integers(10, 70, size=2)
                pixels[y:y + 25, x:x + 6] = False  # a dark stroke on white, as the real data
                Image.fromarray(pixels).convert("1").save(folder / f"{a:02d}{c:02d}_{d + 1:02d}.png")
    return root


@pytest.fixture
def tiny_mini(tmp_path: Path) -> Path:
    return write_mini(tmp_path / "mini")


@pytest.fixture
def tiny_tiered(tmp_path: Path) -> Path:
    return write_tiered(tmp_path / "tiered")


@pytest.fixture
def tiny_omniglot(tmp_path: Path) -> Path:
    return write_omniglot(tmp_path / "omniglot")


@pytest.fixture
def shared_omniglot() -> Path:
    if not (SHARED_OMNIGLOT / "background").is_dir():
        pytest.skip(f"real Omniglot not found at {SHARED_OMNIGLOT} (expected the shared copy "
                    f"../shared/data/omniglot beside the repository)")
    return SHARED_OMNIGLOT


@pytest.fixture
def tiny_layout() -> dict[str, object]:
    """What the tiny writers put on disk: class ids per split and images per class."""
    return {"mini": MINI_CLASS_IDS, "tiered": TIERED_CLASS_IDS, "per_class": IMAGES_PER_CLASS}
