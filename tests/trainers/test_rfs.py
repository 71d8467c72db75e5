"""Tests of trainers.augment (batched seeded augmentation) and trainers.rfs (pre-training, resume)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from search_spaces.genotypes import get_genotype
from search_spaces.init import reinitialize
from search_spaces.network import Network
from trainers import augment as A
from trainers import rfs
from trainers.data import ImageSplit
from trainers.rfs import RECIPES, TrainConfig, get_recipe, load_model_checkpoint, pretrain

NORM1 = ((0.5,), (0.25,))
NORM3 = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))

# Input shapes each augmentation is meant for (C, H, W).
AUG_SHAPES = {"rfs84": (3, 84, 84), "omniglot28": (1, 28, 28), "small": (3, 32, 32), "none": (3, 8, 8)}


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI box has 2 cores shared by parallel jobs; multi-threaded kernels under
    # oversubscription are slower, not faster. Restored after each test.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(shape, n=6, seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ augmentation


def test_registry_matches_documented_shapes():
    assert set(AUG_SHAPES) == set(A.AUGMENTATIONS)


@pytest.mark.parametrize("name", sorted(A.AUGMENTATIONS))
def test_augment_shape_dtype_and_determinism(name):
    shape = AUG_SHAPES[name]
    norm = NORM1 if shape[0] == 1 else NORM3
    aug = A.make_augment(name, norm)
    x = _images(shape)
    out1, out2 = aug(x, _gen(3)), aug(x, _gen(3))
    assert out1.shape == x.shape and out1.dtype == torch.float32
    assert torch.equal(out1, out2), "same generator state must give the same batch"
    assert torch.isfinite(out1).all()
    other = aug(x, _gen(4))
    if name == "none":
        assert torch.equal(other, out1)
        assert torch.equal(out1, A.to_float(x, norm))
    else:
        assert not torch.equal(other, out1), "a different seed must change the augmentation"


@pytest.mark.parametrize("name", ["rfs84", "small"])
def test_augment_per_image_randomness(name):
    """Identical images in one batch get different augmentations (per-sample draws)."""
    shape = AUG_SHAPES[name]
    x = _images(shape, n=1).expand(8, *shape).contiguous()
    out = A.make_augment(name, NORM3)(x, _gen(0))
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) > 1


def test_unknown_augmentation_lists_names():
    with pytest.raises(KeyError, match="rfs84"):
        A.make_augment("bogus", NORM3)
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(epochs=1, lr=0.1, lr_decay_epochs=(), augment="bogus")


def test_augment_rejects_bad_inputs():
    aug = A.make_augment("small", NORM3)
    with pytest.raises(ValueError, match="batch"):
        aug(torch.zeros(3, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(ValueError, match="channels"):
        A.make_augment("none", NORM3)(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), _gen(0))


def test_random_crop_matches_padded_window():
    x = torch.rand(5, 3, 7, 9)
    pad = 3
    offsets = torch.randint(0, 2 * pad + 1, (2, 5), generator=_gen(11))  # what the op draws
    out = A.random_crop(x, _gen(11), padding=pad)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(5):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], padded[i, :, dy:dy + 7, dx:dx + 9])


def test_hflip_probability_one_and_zero():
    x = torch.rand(4, 1, 3, 5)
    assert torch.equal(A.random_hflip(x, _gen(0), p=1.0), x.flip(-1))
    assert torch.equal(A.random_hflip(x, _gen(0), p=0.0), x)


@pytest.mark.parametrize(
    "mine, reference",
    [(A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast),
     (A.adjust_saturation, TF.adjust_saturation)],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_colour_ops_match_torchvision(mine, reference, channels):
    x = torch.rand(4, channels, 6, 6, generator=_gen(1))
    factors = torch.tensor([0.6, 0.9, 1.2, 1.4])
    expected = torch.stack([reference(x[i], float(factors[i])) for i in range(4)])
    torch.testing.assert_close(mine(x.clone(), factors), expected, atol=1e-6, rtol=0)


def test_omniglot_affine_keeps_uniform_background():
    """Border replication: a blank (white) page stays blank after the random affine map."""
    x = torch.full((4, 1, 28, 28), 255, dtype=torch.uint8)
    out = A.make_augment("omniglot28", ((0.0,), (1.0,)))(x, _gen(0))
    torch.testing.assert_close(out, torch.ones_like(out))


def test_augment_needs_cpu_generator_semantics():
    """Random parameters are drawn on the CPU: the batch device does not change the result."""
    aug = A.make_augment("rfs84", NORM3)
    x = _images((3, 12, 12))
    assert torch.equal(aug(x, _gen(5)), aug(x.clone(), _gen(5)))
    if torch.cuda.is_available():  # pragma: no cover - GPU only
        torch.testing.assert_close(aug(x.to(torch.device("cuda")), _gen(5)).cpu(), aug(x, _gen(5)), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_valid(name):
    cfg = get_recipe(name)
    assert cfg.augment in A.AUGMENTATIONS
    assert all(1 <= e <= cfg.epochs for e in cfg.lr_decay_epochs)
    assert cfg == TrainConfig(**cfg.to_dict())  # round trip through a plain dict


def test_paper_recipes():
    mini, tiered = RECIPES["mini_imagenet"], RECIPES["tiered_imagenet"]
    assert (mini.lr, mini.epochs, mini.lr_decay_epochs, mini.drop_path) == (0.02, 100, (60, 80), 0.2)
    assert (tiered.lr, tiered.epochs, tiered.lr_decay_epochs, tiered.drop_path) == (
        0.01, 60, (30, 40, 50), 0.1)
    for cfg in (mini, tiered):
        assert (cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.lr_decay_rate) == (0.9, 5e-4, 64, 0.1)
        assert cfg.augment == "rfs84"


def test_config_validation_and_replace():
    with pytest.raises(KeyError, match="mini_imagenet"):
        get_recipe("imagenet")
    cfg = TrainConfig(epochs=3, lr=0.1, lr_decay_epochs=[2])
    assert cfg.lr_decay_epochs == (2,)
    assert cfg.replace(seed=4).seed == 4 and cfg.seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"lr_decay_epochs": (3, 2)}, {"batch_size": 0},
                {"drop_path": 1.0}, {"seed": -1}, {"momentum": 1.0}):
        with pytest.raises(ValueError):
            cfg.replace(**bad)


# ---------------------------------------------------------------------------- training


class TinyNet(nn.Module):
    """Stand-in with the Network interface: forward_features, classifier, drop_path_prob."""

    def __init__(self, channels=3, classes=4, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, classes)
        self.drop_path_prob = 0.0

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def _split(n_classes=4, per_class=10, shape=(3, 8, 8), seed=0) -> ImageSplit:
    """Each class: a distinct mean colour plus noise, so a small net learns it quickly."""
    g = _gen(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    base = torch.rand(n_classes, shape[0], 1, 1, generator=g) * 200 + 20
    noise = torch.randn(len(labels), *shape, generator=g) * 20
    images = (base[labels] + noise).clamp(0, 255).to(torch.uint8)
    return ImageSplit(images, labels, tuple(f"c{i}" for i in range(n_classes)), "synthetic", "train")


def _network(classes=4, seed=0):
    net = Network(get_genotype("metanas_in_v2"), C=4, num_classes=classes, cells=2)
    reinitialize(net, _gen(seed))
    return net


def test_pretrain_two_epochs_loss_falls_and_reports():
    split = _split()
    model = TinyNet()
    cfg = TrainConfig(epochs=2, lr=0.1, lr_decay_epochs=(1,), batch_size=8, drop_path=0.2,
                      augment="none")
    seen = []
    result = pretrain(model, split, cfg, device="cpu", progress=False, normalization=NORM3,
                      on_epoch=lambda r: seen.append((r, model.drop_path_prob)))
    assert result.epochs_run == 2 and result.resumed_from == 0 and result.checkpoint is None
    assert [r.epoch for r, _ in seen] == [1, 2]
    assert result.history[1].loss < result.history[0].loss
    assert result.final_loss == result.history[-1].loss
    assert 0.0 <= result.final_train_acc <= 1.0
    # Step schedule: lr / 10 after epoch 1; drop-path ramp 0, then 0.2 * 1/2.
    assert [r.lr for r, _ in seen] == pytest.approx([0.1, 0.01])
    assert [p for _, p in seen] == pytest.approx([0.0, 0.1])
    assert result.seconds == pytest.approx(sum(r.seconds for r, _ in seen))
    assert model.drop_path_prob == 0.0  # left ready for evaluation


def test_pretrain_uses_dataset_normalization_and_checks_head():
    split = _split()
    cfg = TrainConfig(epochs=1, lr=0.05, lr_decay_epochs=(), batch_size=16, augment="small")
    result = pretrain(TinyNet(), split, cfg, device="cpu", progress=False)  # synthetic entry
    assert result.epochs_run == 1
    with pytest.raises(ValueError, match="num_classes=4"):
        pretrain(TinyNet(classes=3), split, cfg, device="cpu", progress=False)
    bad = SimpleNamespace(images=split.images.float(), labels=split.labels,
                          class_names=split.class_names, dataset="synthetic", split="train")
    with pytest.raises(ValueError, match="uint8"):
        pretrain(TinyNet(), bad, cfg, device="cpu", progress=False)


class _Crash(RuntimeError):
    pass


def test_resume_is_bit_exact(tmp_path: Path):
    """3 epochs straight == 2 epochs, crash, resume for the last: same weights bit for bit."""
    split = _split(per_class=6)
    cfg = TrainConfig(epochs=3, lr=0.05, lr_decay_epochs=(2,), batch_size=8, drop_path=0.3,
                      augment="small", seed=7)
    straight = _network()
    full = pretrain(straight, split, cfg, device="cpu", progress=False, normalization=NORM3)

    def crash_after_two(result):
        if result.epoch == 2:
            raise _Crash("simulated preemption after the epoch-2 checkpoint")

    first = _network()
    with pytest.raises(_Crash):
        pretrain(first, split, cfg, device="cpu", progress=False, normalization=NORM3,
                 checkpoint_dir=tmp_path, on_epoch=crash_after_two)
    assert rfs.read_checkpoint(tmp_path)["epoch"] == 2

    resumed_model = _network(seed=123)  # different init: everything must come from the checkpoint
    resumed = pretrain(resumed_model, split, cfg, device="cpu", progress=False,
                       normalization=NORM3, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 3
    a, b = straight.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h.loss for h in resumed.history] == [h.loss for h in full.history]

    # A finished run resumes to "nothing to do".
    again = pretrain(_network(), split, cfg, device="cpu", progress=False, normalization=NORM3,
                     checkpoint_dir=tmp_path)
    assert again.resumed_from == 3 and again.history == resumed.history


def test_drop_path_changes_training():
    """The drop-path ramp reaches the network (a different rate gives different weights)."""
    split = _split(per_class=4)
    cfg = TrainConfig(epochs=2, lr=0.05, lr_decay_epochs=(), batch_size=8, drop_path=0.0,
                      augment="none")
    plain, dropped = _network(), _network()
    pretrain(plain, split, cfg, device="cpu", progress=False, normalization=NORM3)
    pretrain(dropped, split, cfg.replace(drop_path=0.5), device="cpu", progress=False,
             normalization=NORM3)
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, dropped.state_dict()[k])]
    assert changed


def test_resume_refuses_other_config(tmp_path: Path):
    split = _split(per_class=4)
    cfg = TrainConfig(epochs=1, lr=0.05, lr_decay_epochs=(), batch_size=8, augment="none")
    pretrain(TinyNet(), split, cfg, device="cpu", progress=False, normalization=NORM3,
             checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="new checkpoint_dir"):
        pretrain(TinyNet(), split, cfg.replace(lr=0.1), device="cpu", progress=False,
                 normalization=NORM3, checkpoint_dir=tmp_path)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch):
    """A failure inside torch.save leaves the previous checkpoint and no partial file."""
    split = _split(per_class=4)
    cfg = TrainConfig(epochs=2, lr=0.05, lr_decay_epochs=(), batch_size=8, augment="none")
    real_save = torch.save
    calls = []

    def flaky_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the epoch-2 checkpoint: write some bytes, then die
            f.write(b"partial checkpoint bytes")
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(rfs.torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        pretrain(TinyNet(), split, cfg, device="cpu", progress=False, normalization=NORM3,
                 checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert rfs.read_checkpoint(tmp_path)["epoch"] == 1  # the last good one survived

    # First checkpoint fails: nothing at all is left behind.
    empty = tmp_path / "fresh"
    calls.clear()
    calls.append(1)  # the next call is number 2, which fails
    with pytest.raises(OSError):
        pretrain(TinyNet(), split, cfg, device="cpu", progress=False, normalization=NORM3,
                 checkpoint_dir=empty)
    assert list(empty.iterdir()) == []


def test_load_model_checkpoint_roundtrip_and_errors(tmp_path: Path):
    split = _split(per_class=4)
    cfg = TrainConfig(epochs=1, lr=0.05, lr_decay_epochs=(), batch_size=8, augment="none")
    trained = TinyNet()
    pretrain(trained, split, cfg, device="cpu", progress=False, normalization=NORM3,
             checkpoint_dir=tmp_path, metadata={"genotype": "g", "cells": 2})
    fresh = TinyNet()
    info = load_model_checkpoint(tmp_path / "checkpoint.pt", fresh)
    assert info["epoch"] == 1 and info["metadata"] == {"genotype": "g", "cells": 2}
    assert info["config"] == cfg.to_dict()
    for key, value in trained.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model_checkpoint(tmp_path / "missing.pt", fresh)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a"):
        load_model_checkpoint(tmp_path / "other.pt", fresh)
    with pytest.raises(ValueError, match="do not fit"):
        load_model_checkpoint(tmp_path, TinyNet(width=5))
