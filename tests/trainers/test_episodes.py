"""Episode sampling, stored episode lists, the kernel batch and linear-region inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.data import NORMALIZATION, DatasetError, ImageSplit, load_split
from trainers.episodes import (Episode, EpisodeList, KernelBatch, labels_fingerprint, sample_episodes,
                               sample_kernel_batch, sample_region_inputs)

LABELS = torch.arange(12).repeat_interleave(10)[torch.randperm(120, generator=torch.Generator().manual_seed(0))]


@pytest.fixture(scope="module")
def synthetic() -> ImageSplit:
    return load_split("synthetic", None, "train", train_classes=8, images_per_class=6)


# ----------------------------------------------------------------------------- episodes


def test_episodes_are_deterministic_in_the_seed_only() -> None:
    a = sample_episodes(LABELS, ways=5, shots=2, queries=3, count=20, seed=7)
    torch.manual_seed(123)  # the global RNG must not matter
    np.random.seed(123)
    b = sample_episodes(LABELS.numpy(), ways=5, shots=2, queries=3, count=20, seed=7)
    c = sample_episodes(LABELS, ways=5, shots=2, queries=3, count=20, seed=8)
    assert a.content_hash() == b.content_hash()
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert a.content_hash() != c.content_hash() and not torch.equal(a.support, c.support)


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 9), (5, 5, 5), (12, 1, 9), (3, 10, 0)])
def test_episode_structure(ways: int, shots: int, queries: int) -> None:
    episodes = sample_episodes(LABELS, ways=ways, shots=shots, queries=queries, count=25, seed=1)
    assert len(episodes) == 25 and episodes.support.shape == (25, ways * shots)
    assert episodes.query.shape == (25, ways * queries) and episodes.classes.shape == (25, ways)
    for e, ep in enumerate(episodes):
        assert isinstance(ep, Episode)
        assert not set(ep.support.tolist()) & set(ep.query.tolist())  # support and query disjoint
        assert len(set(ep.support.tolist())) == ways * shots and len(set(ep.query.tolist())) == ways * queries
        assert len(set(episodes.classes[e].tolist())) == ways  # distinct classes
        # episode label j is split class classes[e, j], class by class
        assert torch.equal(LABELS[ep.support], episodes.classes[e][ep.support_labels])
        assert torch.equal(LABELS[ep.query], episodes.classes[e][ep.query_labels])
        assert torch.equal(ep.support_labels, torch.arange(ways).repeat_interleave(shots))
    # the class draws are spread over the split, and label order is random per episode
    assert set(episodes.classes.flatten().tolist()) == set(range(12))


def test_batch_stacks_episodes() -> None:
    episodes = sample_episodes(LABELS, ways=4, shots=2, queries=3, count=10, seed=0)
    batch = episodes.batch(2, 6)
    assert batch.support.shape == (4, 8) and batch.query.shape == (4, 12)
    assert batch.query_labels.shape == (4, 12)
    assert torch.equal(batch.support[1], episodes[3].support)
    assert torch.equal(episodes[-1].query, episodes.query[9])
    with pytest.raises(IndexError):
        episodes.batch(5, 11)
    with pytest.raises(IndexError):
        episodes[10]


def test_too_small_classes_and_bad_arguments_are_named() -> None:
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 6)
    with pytest.raises(ValueError, match=r"need 5 images per class, but class 1 has 3"):
        sample_episodes(labels, ways=2, shots=1, queries=4, count=3, seed=0)
    with pytest.raises(ValueError, match="5-way episodes need 5 classes, the split has 3"):
        sample_episodes(labels, ways=5, shots=1, queries=1, count=3, seed=0)
    with pytest.raises(ValueError, match="shots must be an integer >= 1"):
        sample_episodes(labels, ways=2, shots=0, queries=1, count=3, seed=0)
    with pytest.raises(ValueError, match="non-negative integers"):
        sample_episodes(torch.tensor([0.5, 1.0]), ways=2, shots=1, queries=1, count=3, seed=0)


def test_save_load_round_trip_is_atomic_and_verified(tmp_path: Path) -> None:
    episodes = sample_episodes(LABELS, ways=5, shots=1, queries=4, count=30, seed=3)
    path = episodes.save(tmp_path / "lists" / "ep.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ep.npz"]  # no temp file left behind
    loaded = EpisodeList.load(path)
    assert loaded.content_hash() == episodes.content_hash()
    assert (loaded.ways, loaded.shots, loaded.queries, loaded.seed, loaded.count) == (5, 1, 4, 3, 30)
    for name in ("support", "query", "support_labels", "query_labels", "classes"):
        assert torch.equal(getattr(loaded, name), getattr(episodes, name))
    loaded.check_labels(LABELS)
    with pytest.raises(DatasetError, match="different split"):
        loaded.check_labels(LABELS.flip(0))
    # saving again over it replaces the file
    other = sample_episodes(LABELS, ways=5, shots=1, queries=4, count=30, seed=4)
    other.save(path)
    assert EpisodeList.load(path).content_hash() == other.content_hash()


def test_load_rejects_missing_corrupt_and_edited_lists(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing episode list"):
        EpisodeList.load(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match="corrupt episode list .*bad.npz"):
        EpisodeList.load(bad)
    episodes = sample_episodes(LABELS, ways=3, shots=1, queries=1, count=5, seed=0)
    path = episodes.save(tmp_path / "ep.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["query"] = arrays["query"][::-1].copy()  # an edit that keeps the shapes
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(DatasetError, match="content hash"):
        EpisodeList.load(tmp_path / "edited.npz")
    np.savez(tmp_path / "foreign.npz", metadata=np.array('{"format": "other"}'), **{
        k: v for k, v in arrays.items() if k != "metadata"})
    with pytest.raises(DatasetError, match="not an episode list"):
        EpisodeList.load(tmp_path / "foreign.npz")


def test_labels_fingerprint_tracks_content() -> None:
    assert labels_fingerprint(LABELS) == labels_fingerprint(LABELS.numpy().astype(np.int32))
    assert labels_fingerprint(LABELS) != labels_fingerprint(LABELS.roll(1))


# ----------------------------------------------------------------------------- kernel batch


def test_kernel_batch_reference_shapes_and_task_layout(synthetic: ImageSplit) -> None:
    batch = sample_kernel_batch(synthetic, generator=torch.Generator().manual_seed(0))
    assert isinstance(batch, KernelBatch)
    assert batch.images.shape == (30, 3, 32, 32) and batch.images.dtype == torch.float32
    assert isinstance(batch.tasks, list) and len(batch.tasks) == 3
    for t, (query, support) in enumerate(batch.tasks):
        assert torch.equal(query, torch.arange(10 * t, 10 * t + 5))
        assert torch.equal(support, torch.arange(10 * t + 5, 10 * t + 10))
        # one query and one support image of each of 5 distinct classes
        q_classes, s_classes = synthetic.labels[batch.source[query]], synthetic.labels[batch.source[support]]
        assert len(set(q_classes.tolist())) == 5 and set(q_classes.tolist()) == set(s_classes.tolist())
        assert not set(batch.source[query].tolist()) & set(batch.source[support].tolist())
    assert torch.isfinite(batch.images).all()


def test_kernel_batch_queries_are_only_resized_and_normalised(synthetic: ImageSplit) -> None:
    batch = sample_kernel_batch(synthetic, image_size=32, generator=torch.Generator().manual_seed(1))
    mean, std = NORMALIZATION["synthetic"]
    query = torch.cat([q for q, _ in batch.tasks])
    expected = (synthetic.images[batch.source[query]].float() / 255 - mean[0]) / std[0]
    assert torch.allclose(batch.images[query], expected, atol=1e-6)
    support = torch.cat([s for _, s in batch.tasks])
    plain = (synthetic.images[batch.source[support]].float() / 255 - mean[0]) / std[0]
    assert not torch.allclose(batch.images[support], plain)  # flipped and/or shifted
    # zero padding (black) shows up as the normalised value of 0 in shifted support images
    assert bool((batch.images[support] == (0 - mean[0]) / std[0]).any())


def test_kernel_batch_is_deterministic_in_the_generator(synthetic: ImageSplit) -> None:
    a = sample_kernel_batch(synthetic, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(99)
    b = sample_kernel_batch(synthetic, generator=torch.Generator().manual_seed(5))
    c = sample_kernel_batch(synthetic, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.images, b.images) and torch.equal(a.source, b.source)
    assert not torch.equal(a.source, c.source)


def test_kernel_batch_options_grayscale_and_errors(tiny_omniglot: Path) -> None:
    gray = load_split("omniglot", tiny_omniglot, "train")
    batch = sample_kernel_batch(gray, tasks=2, ways=3, shots=2, queries=1, image_size=16,
                                generator=torch.Generator().manual_seed(0))
    assert batch.images.shape == (2 * 3 * 3, 1, 16, 16)
    assert [len(q) for q, _ in batch.tasks] == [3, 3] and [len(s) for _, s in batch.tasks] == [6, 6]
    with pytest.raises(ValueError, match="kernel tasks need 4 per class"):
        sample_kernel_batch(gray, ways=2, shots=2, queries=2, generator=torch.Generator())
    with pytest.raises(ValueError, match="7-way kernel tasks need 7 classes"):
        sample_kernel_batch(gray, ways=7, generator=torch.Generator())
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        sample_kernel_batch(gray, ways=2, generator=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalisation mean has 3 values"):
        sample_kernel_batch(gray, ways=2, normalization=((0.1, 0.2, 0.3), (1.0, 1.0, 1.0)),
                            generator=torch.Generator())


# ----------------------------------------------------------------------------- region inputs


def test_region_inputs_are_normalised_single_channel_crops(synthetic: ImageSplit) -> None:
    x = sample_region_inputs(synthetic, n=500, generator=torch.Generator().manual_seed(0))
    y = sample_region_inputs(synthetic, n=500, generator=torch.Generator().manual_seed(0))
    z = sample_region_inputs(synthetic, n=500, generator=torch.Generator().manual_seed(1))
    assert x.shape == (500, 1, 3, 3) and x.dtype == torch.float32
    assert torch.equal(x, y) and not torch.equal(x, z)
    mean, std = NORMALIZATION["synthetic"]
    lo, hi = (0 - mean[0]) / std[0], (1 - mean[0]) / std[0]
    assert float(x.min()) >= lo - 1e-6 and float(x.max()) <= hi + 1e-6
    assert abs(float(x.mean())) < 0.3 and 0.5 < float(x.std()) < 1.5  # roughly standardised


def test_region_input_crop_matches_its_source_pixels() -> None:
    """With one constant image per channel, every crop is that channel's normalised value."""
    images = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (0, 51, 255)]).permute(1, 0, 2, 3)
    split = ImageSplit(images.contiguous(), torch.tensor([0, 1, 1]), ("a", "b"), "synthetic", "train")
    x = sample_region_inputs(split, n=200, image_size=None, normalization=((0.0,), (1.0,)),
                             generator=torch.Generator().manual_seed(0))
    values = {round(v, 6) for v in torch.unique(x).tolist()}
    assert values == {0.0, 0.2, 1.0} and bool((x == x[:, :, :1, :1]).all())
