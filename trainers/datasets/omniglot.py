"""`omniglot`: hand-drawn characters in the standard folder layout, one class per character.

Layout (what `torchvision.datasets.Omniglot` extracts): `ROOT/background/<Alphabet>/
<characterNN>/*.png` and optionally `ROOT/evaluation/...` (`images_background` /
`images_evaluation` are accepted as folder names too). Every character folder of every
subset found is one class, named `<subset>/<Alphabet>/<characterNN>`.

Splits are disjoint BY CHARACTER: the sorted class list is permuted with `seed`; the first
floor(f_train * n) classes are `train`, the next floor(f_val * n) `val`, the rest `test`
(default fractions 0.6 / 0.2 / 0.2: 145 / 48 / 49 of the 242 classes of the shared copy).
Images are converted to grayscale and resized to 28x28 (`image_size`) with PIL's
antialiased bilinear filter, 1 channel uint8, NOT inverted by default (white background
255, dark strokes, as stored); `invert=True` gives white strokes on black. With
`rotations=True` each character yields 4 classes (rotated by 0/90/180/270 degrees), all in
the character's split, so rotated copies never leak across splits.

Decoding the 4,840 PNGs of the shared copy takes about a second; decoded images are cached
per process (keyed by root, image size and inversion), so loading the three splits decodes
them once.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainers.datasets.base import DatasetError, ImageSplit, parse_fractions

__all__ = ["OMNIGLOT_DEFAULTS", "load_omniglot", "omniglot_files", "split_classes"]

# subset name -> accepted folder names under the root
SUBSET_DIRS: dict[str, tuple[str, ...]] = {
    "background": ("background", "images_background"),
    "evaluation": ("evaluation", "images_evaluation"),
}
OMNIGLOT_DEFAULTS: dict[str, object] = {
    "fractions": (0.6, 0.2, 0.2),
    "rotations": False,
    "invert": False,
}
_DEFAULT_SIZE = 28
_LAYOUT = ("a folder containing background/<Alphabet>/<character>/*.png (and optionally "
           "evaluation/...), e.g. ../shared/data/omniglot")
_SPLIT_ORDER = ("train", "val", "test")


def _subset_dirs(root: Path) -> tuple[tuple[str, Path], ...]:
    """(subset, folder) for every subset present under root; DatasetError if none."""
    if not root.is_dir():
        raise DatasetError(f"omniglot root {root} does not exist or is not a folder; "
                           f"expected {_LAYOUT}")
    found = []
    for subset, names in SUBSET_DIRS.items():
        for name in names:
            if (root / name).is_dir():
                found.append((subset, root / name))
                break
    if not found:
        raise DatasetError(f"omniglot root {root} has no background/ or evaluation/ folder; "
                           f"expected {_LAYOUT}")
    return tuple(found)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def omniglot_files(root: Path | None, split: str, **options: object) -> tuple[Path, ...]:
    """The subset folders the loader reads."""
    if root is None:
        raise DatasetError(f"omniglot needs a root: {_LAYOUT}")
    return tuple(folder for _, folder in _subset_dirs(Path(root)))


def _decode_png(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR),
                              dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"omniglot image {path} cannot be decoded ({exc}); expected a PNG "
                           f"character image") from exc


@functools.lru_cache(maxsize=4)
def _decode_all(root: str, size: int, invert: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Every image under root: (images uint8 (N, size, size), labels int64 (N,), class names).

    Read-only arrays (they are shared by every caller through the cache).
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    for subset, folder in _subset_dirs(Path(root)):
        alphabets = _visible_dirs(folder)
        if not alphabets:
            raise DatasetError(f"omniglot folder {folder} has no alphabet folders; expected {_LAYOUT}")
        for alphabet in alphabets:
            for character in _visible_dirs(alphabet):
                pngs = sorted(character.glob("*.png"))
                if not pngs:
                    raise DatasetError(f"omniglot character folder {character} has no .png "
                                       f"files; expected {_LAYOUT}")
                label = len(names)
                names.append(f"{subset}/{alphabet.name}/{character.name}")
                images.extend(_decode_png(p, size) for p in pngs)
                labels.extend([label] * len(pngs))
    if not names:
        raise DatasetError(f"omniglot root {root} has no character folders; expected {_LAYOUT}")
    stacked = np.stack(images)
    if invert:
        stacked = 255 - stacked
    label_arr = np.asarray(labels, dtype=np.int64)
    stacked.flags.writeable = False
    label_arr.flags.writeable = False
    return stacked, label_arr, tuple(names)


def split_classes(n_classes: int, fractions: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded disjoint partition of class indices 0..n-1 into train / val / test.

    train gets floor(f_train * n), val floor(f_val * n), test the rest; each sorted.
    """
    perm = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n_classes)
    n_train = int(np.floor(fractions[0] * n_classes))
    n_val = int(np.floor(fractions[1] * n_classes))
    parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    return {split: np.sort(part) for split, part in zip(_SPLIT_ORDER, parts)}


def load_omniglot(root: Path | None, split: str, *, image_size: int | None = None, seed: int = 0,
                  **options: object) -> ImageSplit:
    """Load one split: images uint8 (N, 1, S, S) with S = image_size or 28.

    Options: fractions=(0.6, 0.2, 0.2), rotations=False, invert=False (see module doc).
    """
    unknown = sorted(set(options) - set(OMNIGLOT_DEFAULTS))
    if unknown:
        raise DatasetError(f"unknown omniglot option(s) {unknown}; valid options: "
                           f"{', '.join(OMNIGLOT_DEFAULTS)}")
    if root is None:
        raise DatasetError(f"omniglot needs a root: {_LAYOUT}")
    opts = {**OMNIGLOT_DEFAULTS, **options}
    fractions = parse_fractions(opts["fractions"], "fractions")
    size = _DEFAULT_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise DatasetError(f"omniglot image_size must be positive, got {size}")
    images, labels, names = _decode_all(str(Path(root).resolve()), size, bool(opts["invert"]))
    chosen = split_classes(len(names), fractions, int(seed))[split]
    if chosen.size == 0:
        raise DatasetError(f"omniglot split {split!r} gets no classes out of {len(names)} with "
                           f"fractions {fractions}; raise its fraction")
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[chosen] = np.arange(chosen.size)
    keep = np.flatnonzero(remap[labels] >= 0)
    split_images = torch.from_numpy(images[keep]).unsqueeze(1)  # fancy indexing copies
    split_labels = torch.from_numpy(remap[labels[keep]])
    class_names = tuple(names[i] for i in chosen)
    if opts["rotations"]:
        rotated = [torch.rot90(split_images, k, dims=(-2, -1)) for k in range(4)]
        split_images = torch.cat(rotated)
        split_labels = torch.cat([4 * split_labels + k for k in range(4)])
        class_names = tuple(f"{name}/rot{90 * k:03d}" for name in class_names for k in range(4))
    return ImageSplit(split_images.contiguous(), split_labels, class_names, "omniglot", split)
