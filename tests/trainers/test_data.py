"""Dataset loaders on tiny files in the exact on-disk formats, real Omniglot, error paths, CLI."""
from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from trainers.data import (DATASETS, MINI_FILES, NORMALIZATION, DatasetError, ImageSplit,
                           inspect_dataset, load_split)
from trainers.episodes import sample_episodes

SMALL_SYNTHETIC = {"train_classes": 6, "val_classes": 5, "test_classes": 5, "images_per_class": 8}
ROOT_FIXTURE = {"mini_imagenet": "tiny_mini", "tiered_imagenet": "tiny_tiered",
                "omniglot": "tiny_omniglot", "synthetic": None}


def _root(request: pytest.FixtureRequest, name: str) -> Path | None:
    fixture = ROOT_FIXTURE[name]
    return None if fixture is None else request.getfixturevalue(fixture)


def _options(name: str) -> dict:
    return dict(SMALL_SYNTHETIC) if name == "synthetic" else {}


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_kind_and_rejects_unknown_names() -> None:
    assert set(DATASETS) == {"synthetic", "omniglot", "mini_imagenet", "tiered_imagenet"}
    assert set(NORMALIZATION) == set(DATASETS)
    with pytest.raises(KeyError, match="valid names: mini_imagenet, omniglot, synthetic, tiered_imagenet"):
        load_split("imagenet", None, "train")
    with pytest.raises(KeyError, match="valid names"):
        NORMALIZATION["cifar"]


@pytest.mark.parametrize("name", sorted(NORMALIZATION))
def test_normalization_is_valid_per_channel_stats(name: str) -> None:
    mean, std = NORMALIZATION[name]
    assert len(mean) == len(std) and len(mean) in (1, 3)
    assert all(0 < m < 1 for m in mean) and all(0 < s < 1 for s in std)
    if name in ("mini_imagenet", "tiered_imagenet"):
        assert mean[0] == pytest.approx(120.39586422 / 255) and std[2] == pytest.approx(72.54505529 / 255)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads_its_splits_with_contiguous_labels(name: str, request) -> None:
    root = _root(request, name)
    spec = DATASETS[name]
    seen: dict[str, set[str]] = {}
    for split in spec.splits:
        data = load_split(name, root, split, **_options(name))
        assert isinstance(data, ImageSplit) and data.dataset == name and data.split == split
        assert data.images.dtype == torch.uint8 and data.images.dim() == 4
        assert data.images.shape[1] == (1 if name == "omniglot" else 3)
        assert data.images.shape[-1] == data.images.shape[-2] == spec.default_image_size
        assert data.labels.dtype == torch.int64 and len(data.labels) == len(data)
        assert torch.equal(torch.unique(data.labels), torch.arange(data.n_classes))
        seen[split] = set(data.class_names)
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])
    with pytest.raises(DatasetError, match="valid splits: train, val, test"):
        load_split(name, root, "validation", **_options(name))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_image_size_resizes_every_kind(name: str, request) -> None:
    data = load_split(name, _root(request, name), "val", image_size=20, **_options(name))
    assert data.images.shape[-2:] == (20, 20) and data.images.dtype == torch.uint8


# ----------------------------------------------------------------------------- RFS formats


def test_mini_imagenet_pickles_map_splits_remap_labels_and_keep_pixels(tiny_mini: Path, tiny_layout) -> None:
    for split, ids in tiny_layout["mini"].items():
        data = load_split("mini_imagenet", tiny_mini, split)
        assert data.images.shape == (len(ids) * tiny_layout["per_class"], 3, 84, 84)
        # labels are sorted original ids -> 0..n-1; class names are the WordNet-style keys
        assert data.class_names == tuple(f"n{c:08d}" for c in sorted(ids))
        # the red pixel (0, 0) of each image encodes its original class id (see conftest)
        original = torch.tensor(sorted(ids))[data.labels]
        assert torch.equal(data.images[:, 0, 0, 0].long(), original)
    payload = pickle.load(open(tiny_mini / MINI_FILES["test"], "rb"), encoding="latin1")
    data = load_split("mini_imagenet", tiny_mini, "test")
    assert torch.equal(data.images[5].permute(1, 2, 0), torch.from_numpy(payload["data"][5]))


def test_tiered_imagenet_npz_and_pkl(tiny_tiered: Path, tiny_layout) -> None:
    for split, ids in tiny_layout["tiered"].items():
        data = load_split("tiered_imagenet", tiny_tiered, split)
        assert data.images.shape == (len(ids) * tiny_layout["per_class"], 3, 84, 84)
        assert data.class_names == tuple(str(c) for c in sorted(ids))
        assert torch.equal(data.images[:, 0, 0, 0].long(), torch.tensor(sorted(ids))[data.labels])
        with np.load(tiny_tiered / f"{split}_images.npz") as archive:
            assert torch.equal(data.images.permute(0, 2, 3, 1), torch.from_numpy(archive["images"]))


def test_rfs_pickle_from_python2_style_latin1_bytes_loads(tmp_path: Path) -> None:
    """Python 2 pickles store the array buffer as a str: only encoding='latin1' reads them."""
    images = np.arange(2 * 84 * 84 * 3, dtype=np.uint64).astype(np.uint8).reshape(2, 84, 84, 3)
    # protocol 0 writes the buffer through _codecs.encode(..., 'latin1'), as Python 2 did
    (tmp_path / MINI_FILES["val"]).write_bytes(pickle.dumps({"data": images, "labels": [4, 2]}, protocol=0))
    data = load_split("mini_imagenet", tmp_path, "val")
    assert torch.equal(data.images.permute(0, 2, 3, 1), torch.from_numpy(images))
    assert data.labels.tolist() == [1, 0]


# ----------------------------------------------------------------------------- Omniglot


def test_tiny_omniglot_split_by_character_seeded(tiny_omniglot: Path) -> None:
    splits = {s: load_split("omniglot", tiny_omniglot, s, seed=1) for s in ("train", "val", "test")}
    assert [splits[s].n_classes for s in ("train", "val", "test")] == [6, 2, 2]  # 60/20/20 of 10
    names = [n for s in splits.values() for n in s.class_names]
    assert len(names) == len(set(names)) == 10
    assert all(n.startswith("background/Alphabet_") for n in names)
    assert splits["train"].images.shape == (18, 1, 28, 28)
    # not inverted: white background (255) with dark strokes
    assert splits["train"].images.float().mean() > 200 and splits["train"].images.min() < 100
    again = load_split("omniglot", tiny_omniglot, "train", seed=1)
    assert again.class_names == splits["train"].class_names
    assert torch.equal(again.images, splits["train"].images)
    other = {load_split("omniglot", tiny_omniglot, "train", seed=s).class_names for s in range(2, 6)}
    assert len(other | {splits["train"].class_names}) > 1  # the seed changes the partition


def test_omniglot_options_rotations_invert_fractions(tiny_omniglot: Path) -> None:
    plain = load_split("omniglot", tiny_omniglot, "test")
    rotated = load_split("omniglot", tiny_omniglot, "test", rotations=True)
    assert rotated.n_classes == 4 * plain.n_classes and len(rotated) == 4 * len(plain)
    assert rotated.class_names[:4] == tuple(f"{plain.class_names[0]}/rot{d:03d}" for d in (0, 90, 180, 270))
    first = plain.images[plain.labels == 0]
    assert torch.equal(rotated.images[rotated.labels == 1], torch.rot90(first, 1, dims=(-2, -1)))
    inverted = load_split("omniglot", tiny_omniglot, "test", invert=True)
    assert torch.equal(inverted.images, 255 - plain.images)
    half = load_split("omniglot", tiny_omniglot, "train", fractions=(0.5, 0.3, 0.2))
    assert half.n_classes == 5
    with pytest.raises(DatasetError, match="fractions"):
        load_split("omniglot", tiny_omniglot, "train", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DatasetError, match="unknown omniglot option"):
        load_split("omniglot", tiny_omniglot, "train", rotation=True)


def test_real_omniglot_242_characters_split_disjointly(shared_omniglot: Path) -> None:
    splits = {s: load_split("omniglot", shared_omniglot, s) for s in ("train", "val", "test")}
    assert {s: d.n_classes for s, d in splits.items()} == {"train": 145, "val": 48, "test": 49}
    names = [set(d.class_names) for d in splits.values()]
    assert len(set.union(*names)) == 242 and sum(len(n) for n in names) == 242
    for data in splits.values():
        assert data.images.shape[1:] == (1, 28, 28) and data.images.dtype == torch.uint8
        assert torch.all(data.class_counts() == 20)
    mean = torch.cat([d.images for d in splits.values()]).float().mean() / 255
    assert float(mean) == pytest.approx(NORMALIZATION["omniglot"][0][0], abs=0.01)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_fast_and_seed_dependent() -> None:
    start = time.perf_counter()
    default = {s: load_split("synthetic", None, s) for s in ("train", "val", "test")}
    assert time.perf_counter() - start < 5.0  # ~0.2 s on one free core
    assert [len(default[s]) for s in ("train", "val", "test")] == [960, 480, 480]
    assert default["train"].images.shape[1:] == (3, 32, 32)
    again = load_split("synthetic", None, "train")
    assert torch.equal(again.images, default["train"].images)
    other = load_split("synthetic", None, "train", seed=1)
    assert not torch.equal(other.images, default["train"].images)
    # every class has its own random stream: more classes keep the first ones unchanged
    bigger = load_split("synthetic", None, "val", val_classes=20)
    assert torch.equal(bigger.images[:480], default["val"].images)


def test_synthetic_splits_have_disjoint_classes() -> None:
    splits = {s: load_split("synthetic", None, s, **SMALL_SYNTHETIC) for s in ("train", "val", "test")}
    means = {s: torch.stack([d.images[d.labels == c].float().mean(0) for c in range(d.n_classes)]).flatten(1)
             for s, d in splits.items()}
    within = torch.cdist(means["train"], means["train"])
    within = within[~torch.eye(len(within), dtype=torch.bool)].min()
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        # no class of one split is (close to) a class of another split
        assert torch.cdist(means[a], means[b]).min() > 0.5 * within
        assert not set(splits[a].class_names) & set(splits[b].class_names)


def test_synthetic_options_and_their_errors() -> None:
    gray = load_split("synthetic", None, "test", channels=1, image_size=16, test_classes=3, images_per_class=2)
    assert gray.images.shape == (6, 1, 16, 16)
    with pytest.raises(DatasetError, match="channels must be 1 or 3"):
        load_split("synthetic", None, "test", channels=2)
    with pytest.raises(DatasetError, match="unknown synthetic option"):
        load_split("synthetic", None, "test", classes=3)
    with pytest.raises(DatasetError, match="images_per_class must be an integer"):
        load_split("synthetic", None, "test", images_per_class=0)


def test_synthetic_is_learnable_by_nearest_centroid_on_raw_pixels() -> None:
    data = load_split("synthetic", None, "test")
    episodes = sample_episodes(data.labels, ways=5, shots=5, queries=10, count=20, seed=0)
    x = data.images.float().flatten(1)
    accs = []
    for ep in episodes:
        centroids = x[ep.support].view(5, 5, -1).mean(1)
        pred = torch.cdist(x[ep.query], centroids).argmin(1)
        accs.append(float((pred == ep.query_labels).float().mean()))
    assert np.mean(accs) > 0.4  # chance is 0.2; measured about 0.8


# ----------------------------------------------------------------------------- errors


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _mini(split: str, **payload: object) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        _dump(root / MINI_FILES[split], payload)
        return root
    return mutate


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        (root / name).write_bytes(data)
        return root
    return mutate


def _unlink(relative: str) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        (root / relative).unlink()
        return root
    return mutate


def _truncate(name: str) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
        return root
    return mutate


def _npz(split: str, **arrays: np.ndarray) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        np.savez(root / f"{split}_images.npz", **arrays)
        return root
    return mutate


def _plain_npy(root: Path) -> Path:
    with open(root / "val_images.npz", "wb") as fh:
        np.save(fh, np.zeros((8, 84, 84, 3), np.uint8))
    return root


def _labels_pkl(split: str, labels: object) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        _dump(root / f"{split}_labels.pkl", {"labels": labels})
        return root
    return mutate


def _empty_character(root: Path) -> Path:
    for png in (root / "background/Alphabet_0/character02").glob("*.png"):
        png.unlink()
    return root


def _no_alphabets(root: Path) -> Path:
    (root / "empty" / "background").mkdir(parents=True)
    return root / "empty"


MINI_VAL = MINI_FILES["val"]
U8 = np.zeros((4, 84, 84, 3), np.uint8)
ERROR_CASES = [
    # id, dataset, fixture, mutate(root) -> root, fragments the message must contain
    ("mini-missing-root", "mini_imagenet", "tiny_mini", lambda r: r / "absent", ["absent", "does not exist"]),
    ("mini-missing-file", "mini_imagenet", "tiny_mini", _unlink(MINI_FILES["test"]), [MINI_FILES["test"], "missing"]),
    ("mini-corrupt", "mini_imagenet", "tiny_mini", _write(MINI_VAL, b"\x00garbage, not a pickle"), [MINI_VAL, "corrupt"]),
    ("mini-truncated", "mini_imagenet", "tiny_mini", _truncate(MINI_VAL), [MINI_VAL, "corrupt"]),
    ("mini-not-dict", "mini_imagenet", "tiny_mini", _write(MINI_VAL, pickle.dumps([1, 2], protocol=2)),
     [MINI_VAL, "expected a dict"]),
    ("mini-no-data", "mini_imagenet", "tiny_mini", _mini("val", labels=[0, 1, 2, 3]), [MINI_VAL, "expected key 'data'"]),
    ("mini-no-labels", "mini_imagenet", "tiny_mini", _mini("val", data=U8), [MINI_VAL, "expected key 'labels'"]),
    ("mini-float-data", "mini_imagenet", "tiny_mini", _mini("val", data=U8.astype(np.float32), labels=[0, 0, 1, 1]),
     [MINI_VAL, "uint8", "float32"]),
    ("mini-3d-data", "mini_imagenet", "tiny_mini", _mini("val", data=U8[..., 0], labels=[0, 0, 1, 1]),
     [MINI_VAL, "N x H x W x 3", "(4, 84, 84)"]),
    ("mini-label-count", "mini_imagenet", "tiny_mini", _mini("val", data=U8, labels=[0, 1, 1]),
     [MINI_VAL, "3 labels for 4 images"]),
    ("mini-float-labels", "mini_imagenet", "tiny_mini", _mini("val", data=U8, labels=[0.5, 1, 1, 0]),
     [MINI_VAL, "integers"]),
    ("mini-code-in-pickle", "mini_imagenet", "tiny_mini",
     _write(MINI_VAL, pickle.dumps({"data": _RunsCode()}, protocol=2)), [MINI_VAL, "not part of an array pickle"]),
    ("tiered-missing-npz", "tiered_imagenet", "tiny_tiered", _unlink("val_images.npz"), ["val_images.npz", "missing"]),
    ("tiered-missing-pkl", "tiered_imagenet", "tiny_tiered", _unlink("test_labels.pkl"), ["test_labels.pkl", "missing"]),
    ("tiered-corrupt-npz", "tiered_imagenet", "tiny_tiered", _write("val_images.npz", b"PK\x03\x04 broken"),
     ["val_images.npz", "corrupt"]),
    ("tiered-truncated-npz", "tiered_imagenet", "tiny_tiered", _truncate("val_images.npz"), ["val_images.npz", "corrupt"]),
    ("tiered-plain-npy", "tiered_imagenet", "tiny_tiered", _plain_npy, ["val_images.npz", "plain .npy"]),
    ("tiered-no-images-key", "tiered_imagenet", "tiny_tiered", _npz("val", data=U8), ["val_images.npz", "'images'"]),
    ("tiered-gray", "tiered_imagenet", "tiny_tiered", _npz("val", images=U8[..., :1]),
     ["val_images.npz", "N x H x W x 3", "(4, 84, 84, 1)"]),
    ("tiered-label-count", "tiered_imagenet", "tiny_tiered", _labels_pkl("val", [20, 22]),
     ["val_labels.pkl", "2 labels for 8 images", "val_images.npz"]),
    ("tiered-corrupt-pkl", "tiered_imagenet", "tiny_tiered", _write("val_labels.pkl", b"\x80\x02garbage"),
     ["val_labels.pkl", "corrupt"]),
    ("omniglot-missing-root", "omniglot", "tiny_omniglot", lambda r: r / "absent", ["absent", "background/<Alphabet>"]),
    ("omniglot-no-background", "omniglot", "tiny_omniglot", lambda r: r / "background" / "Alphabet_0",
     ["Alphabet_0", "no background/ or evaluation/"]),
    ("omniglot-no-alphabets", "omniglot", "tiny_omniglot", _no_alphabets, ["empty/background", "no alphabet folders"]),
    ("omniglot-empty-character", "omniglot", "tiny_omniglot", _empty_character, ["character02", "no .png"]),
    ("omniglot-bad-png", "omniglot", "tiny_omniglot", _write("background/Alphabet_1/character03/0103_01.png", b"text"),
     ["0103_01.png", "cannot be decoded"]),
]


@pytest.mark.parametrize(("dataset", "fixture", "mutate", "fragments"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_bad_copies_raise_one_dataset_error_naming_the_file(dataset, fixture, mutate, fragments, request, capsys) -> None:
    root = mutate(request.getfixturevalue(fixture))
    with pytest.raises(DatasetError) as info:
        for split in DATASETS[dataset].splits:
            load_split(dataset, root, split)
    for fragment in fragments:
        assert fragment in str(info.value)
    # the CLI prints it as one line, exit status 2, no traceback
    assert main(["data", "inspect", "--dataset", dataset, "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragments[0] in err and "Traceback" not in err


def test_unsafe_pickle_option_lifts_the_allow_list(tiny_mini: Path) -> None:
    _dump(tiny_mini / MINI_VAL, {"data": U8, "labels": [0, 0, 1, 1], "extra": _RunsCode()})
    with pytest.raises(DatasetError, match="posix.getcwd|nt.getcwd"):
        load_split("mini_imagenet", tiny_mini, "val")
    assert len(load_split("mini_imagenet", tiny_mini, "val", unsafe_pickle=True)) == 4


def test_roots_are_required_where_files_are_read() -> None:
    for name in ("omniglot", "mini_imagenet", "tiered_imagenet"):
        with pytest.raises(DatasetError, match="needs a root"):
            load_split(name, None, "train")


# ----------------------------------------------------------------------------- inspect / CLI


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_data_inspect_cli_answers_for_every_kind(name: str, request, capsys) -> None:
    root = _root(request, name)
    argv = ["data", "inspect", "--dataset", name]
    argv += [] if root is None else ["--root", str(root)]
    argv += [f"--option={k}={v}" for k, v in _options(name).items()]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for split in DATASETS[name].splits:
        assert f"\n{split} " in table
    assert "uint8" in table and "classes" in table
    assert main(argv + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = inspect_dataset(name, root, seed=0, **_options(name))
    assert summary["splits"] == json.loads(json.dumps(expected["splits"]))
    assert summary["splits"]["train"]["dtype"] == "uint8"


def test_inspect_reports_mini_extra_splits_only_when_present(tiny_mini: Path) -> None:
    full = inspect_dataset("mini_imagenet", tiny_mini)
    assert list(full["splits"]) == ["train", "val", "test", "train_phase_val", "trainval"]
    assert full["splits"]["trainval"]["classes"] == 5
    assert full["splits"]["train"] == {
        "files": [str(tiny_mini / MINI_FILES["train"])], "classes": 3, "images": 12,
        "image_shape": [3, 84, 84], "dtype": "uint8", "min_images_per_class": 4, "max_images_per_class": 4}
    (tiny_mini / MINI_FILES["trainval"]).unlink()
    assert "trainval" not in inspect_dataset("mini_imagenet", tiny_mini)["splits"]


def test_data_list_and_option_parsing(capsys, tiny_omniglot: Path) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.strip().splitlines()] == list(DATASETS)
    assert main(["data", "inspect", "--dataset", "omniglot", "--root", str(tiny_omniglot),
                 "--option", "fractions=0.5,0.3,0.2", "--option", "rotations=true", "--image-size", "14"]) == 0
    out = capsys.readouterr().out
    assert "1x14x14" in out and "\ntrain       20 " in out
    assert main(["data", "inspect", "--dataset", "synthetic", "--option", "seed=3"]) == 2
    assert "--seed" in capsys.readouterr().err
