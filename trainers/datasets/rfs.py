"""`mini_imagenet` and `tiered_imagenet` in the file formats of RFS (Tian et al., 2020).

miniImageNet, ROOT/ (pickles, one dict each, keys `data` uint8 (N, 84, 84, 3) and `labels`
(N ints, arbitrary class ids), written by Python 2 so read with encoding latin1):

| split             | file                                                     | classes |
|-------------------|----------------------------------------------------------|---------|
| `train`           | miniImageNet_category_split_train_phase_train.pickle     | 64 base |
| `val`             | miniImageNet_category_split_val.pickle                   | 16 novel|
| `test`            | miniImageNet_category_split_test.pickle                  | 20 novel|
| `train_phase_val` | miniImageNet_category_split_train_phase_val.pickle       | 64 base (held-out images) |
| `trainval`        | miniImageNet_category_split_train_phase_trainval.pickle  | 80 (base + val) |

tieredImageNet, ROOT/{split}_images.npz (key `images`, uint8 (N, 84, 84, 3)) and
ROOT/{split}_labels.pkl (dict with key `labels`, N ints; latin1 pickle) for split in
train / val / test.

Labels are remapped to 0..n-1 in sorted-id order per split; class names are the WordNet
ids when the pickle carries `catname2label` (mini) or `label_specific_str` (tiered), else
the original id. Images become (N, 3, H, W) as a permuted VIEW of the loaded array (no
copy: tieredImageNet's train split is about 9.5 GB).

Pickles can run code when loaded, so they are read by an unpickler that only resolves the
numpy globals an array pickle needs; `unsafe_pickle=True` lifts that for a trusted file
whose pickle refers to something else (the error names the global).
"""
from __future__ import annotations

import importlib
import importlib.util
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.datasets.base import DatasetError, ImageSplit, contiguous_labels

__all__ = ["MINI_FILES", "load_mini_imagenet", "load_tiered_imagenet", "mini_files",
           "read_pickle", "tiered_files"]

MINI_FILES: dict[str, str] = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
    "train_phase_val": "miniImageNet_category_split_train_phase_val.pickle",
    "trainval": "miniImageNet_category_split_train_phase_trainval.pickle",
}
_MINI_LAYOUT = ("a folder with the RFS miniImageNet pickles "
                + ", ".join(MINI_FILES[s] for s in ("train", "val", "test")))
_TIERED_LAYOUT = ("a folder with the RFS tieredImageNet files {split}_images.npz (key 'images') "
                  "and {split}_labels.pkl (key 'labels') for split in train, val, test")
_RFS_OPTIONS = ("unsafe_pickle",)

_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
# (module, name) an ndarray / numpy-scalar pickle refers to, from numpy 1.x or 2.x, protocol 0-5.
_ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    **{(mod, name): f"{_NUMPY_CORE}.multiarray"
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")},
    **{(mod, "_frombuffer"): f"{_NUMPY_CORE}.numeric"
       for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): "numpy",
    ("numpy", "dtype"): "numpy",
    ("_codecs", "encode"): "_codecs",
    ("collections", "OrderedDict"): "collections",
}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickle of numpy arrays, ints, lists and dicts needs."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}, which is not part of an array pickle (pass "
                f"unsafe_pickle=True only if you trust the file)")
        return getattr(importlib.import_module(target), name)


def _require_file(path: Path, layout: str) -> None:
    if not path.parent.is_dir():
        raise DatasetError(f"dataset root {path.parent} does not exist or is not a folder; "
                           f"expected {layout}")
    if not path.is_file():
        raise DatasetError(f"missing file {path}; expected {layout}")


def read_pickle(path: Path, *, unsafe: bool = False) -> Any:
    """Load a (Python 2, latin1) pickle; DatasetError naming the file if it is unreadable."""
    try:
        with open(path, "rb") as fh:
            if unsafe:
                return pickle.load(fh, encoding="latin1")
            return _ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, ImportError, MemoryError) as exc:
        raise DatasetError(f"corrupt or unreadable pickle {path}: {type(exc).__name__}: {exc}") from exc


def _require_key(payload: Any, key: str, path: Path, expected: str) -> Any:
    if not isinstance(payload, Mapping):
        raise DatasetError(f"{path}: expected a dict with key {key!r} ({expected}), "
                           f"got {type(payload).__name__}")
    if key not in payload:
        raise DatasetError(f"{path}: expected key {key!r} ({expected}), found keys "
                           f"{sorted(map(str, payload))}")
    return payload[key]


def _check_images(array: Any, path: Path, key: str) -> np.ndarray:
    expected = f"expected key {key!r} uint8 array N x H x W x 3 (N x 84 x 84 x 3 for RFS)"
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path}: {expected}, got {type(array).__name__}")
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3 or min(array.shape) == 0:
        raise DatasetError(f"{path}: {expected}, got {array.dtype} array of shape {array.shape}")
    return array


def _check_labels(raw: Any, n_images: int, path: Path, images_file: Path) -> np.ndarray:
    try:
        labels = np.asarray(raw)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: expected 'labels' as {n_images} integers, got "
                           f"{type(raw).__name__}") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: expected 'labels' as a list/array of {n_images} integers, "
                           f"got {labels.dtype} with shape {labels.shape}")
    if labels.shape[0] != n_images:
        raise DatasetError(f"{path}: {labels.shape[0]} labels for {n_images} images in "
                           f"{images_file}; expected one label per image")
    return labels


def _class_names(ids: np.ndarray, payload: Mapping[str, Any]) -> tuple[str, ...]:
    """WordNet ids when the file names them, else the original ids as strings."""
    names = {int(i): str(i) for i in ids}
    by_name = payload.get("catname2label")
    if isinstance(by_name, Mapping):
        for cat, label in by_name.items():
            if isinstance(label, (int, np.integer)) and int(label) in names:
                names[int(label)] = str(cat)
    strings = payload.get("label_specific_str")
    if isinstance(strings, (list, tuple)) and len(strings) > int(ids.max()):
        names = {int(i): str(strings[int(i)]) for i in ids}
    return tuple(names[int(i)] for i in ids)


def _split_from_arrays(images: np.ndarray, raw_labels: np.ndarray, payload: Mapping[str, Any],
                       dataset: str, split: str) -> ImageSplit:
    labels, ids = contiguous_labels(raw_labels)
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W) view, no copy
    return ImageSplit(chw, labels, _class_names(ids, payload), dataset, split)


def _check_options(dataset: str, options: Mapping[str, object]) -> bool:
    unknown = sorted(set(options) - set(_RFS_OPTIONS))
    if unknown:
        raise DatasetError(f"unknown {dataset} option(s) {unknown}; valid options: "
                           f"{', '.join(_RFS_OPTIONS)}")
    return bool(options.get("unsafe_pickle", False))


def mini_files(root: Path | None, split: str, **options: object) -> tuple[Path, ...]:
    if root is None:
        raise DatasetError(f"mini_imagenet needs a root: {_MINI_LAYOUT}")
    return (Path(root) / MINI_FILES[split],)


def tiered_files(root: Path | None, split: str, **options: object) -> tuple[Path, ...]:
    if root is None:
        raise DatasetError(f"tiered_imagenet needs a root: {_TIERED_LAYOUT}")
    return (Path(root) / f"{split}_images.npz", Path(root) / f"{split}_labels.pkl")


def load_mini_imagenet(root: Path | None, split: str, *, image_size: int | None = None,
                       seed: int = 0, **options: object) -> ImageSplit:
    """One miniImageNet split from its RFS pickle: images uint8 (N, 3, 84, 84) (a view)."""
    unsafe = _check_options("mini_imagenet", options)
    (path,) = mini_files(root, split)
    _require_file(path, _MINI_LAYOUT)
    payload = read_pickle(path, unsafe=unsafe)
    images = _check_images(_require_key(payload, "data", path, "uint8 array N x 84 x 84 x 3"),
                           path, "data")
    labels = _check_labels(_require_key(payload, "labels", path, f"{len(images)} integers"),
                           len(images), path, path)
    return _split_from_arrays(images, labels, payload, "mini_imagenet", split)


def _read_npz_images(path: Path) -> np.ndarray:
    corrupt = (zipfile.BadZipFile, OSError, ValueError, EOFError)
    try:
        archive = np.load(path, allow_pickle=False)
    except corrupt as exc:
        raise DatasetError(f"corrupt or unreadable npz {path}: {type(exc).__name__}: {exc}; "
                           f"expected an .npz archive with key 'images'") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: expected an .npz archive with key 'images', got a plain "
                           f".npy array")
    with archive:
        if "images" not in archive.files:
            raise DatasetError(f"{path}: expected key 'images' (uint8 array N x 84 x 84 x 3), "
                               f"found keys {sorted(archive.files)}")
        try:
            images = archive["images"]
        except corrupt as exc:
            raise DatasetError(f"corrupt npz {path}: member 'images' cannot be read "
                               f"({type(exc).__name__}: {exc})") from exc
    return _check_images(images, path, "images")


def load_tiered_imagenet(root: Path | None, split: str, *, image_size: int | None = None,
                         seed: int = 0, **options: object) -> ImageSplit:
    """One tieredImageNet split from its RFS npz + pkl: images uint8 (N, 3, 84, 84) (a view)."""
    unsafe = _check_options("tiered_imagenet", options)
    images_path, labels_path = tiered_files(root, split)
    _require_file(images_path, _TIERED_LAYOUT)
    _require_file(labels_path, _TIERED_LAYOUT)
    images = _read_npz_images(images_path)
    payload = read_pickle(labels_path, unsafe=unsafe)
    labels = _check_labels(_require_key(payload, "labels", labels_path, f"{len(images)} integers"),
                           len(images), labels_path, images_path)
    return _split_from_arrays(images, labels, payload, "tiered_imagenet", split)
