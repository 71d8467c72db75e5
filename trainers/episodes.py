"""Seeded few-shot episodes, stored episode lists, and the kernel batch of the search.

Episodes (evaluation): `sample_episodes(labels, ways=5, shots=1, queries=15, count=600,
seed=0)` draws N-way K-shot Q-query tasks from one split with a NumPy Generator seeded by
`seed` alone (never the global RNG), so every method is evaluated on the same tasks; the
list can be saved (`EpisodeList.save`, atomic .npz with metadata and a content hash) and
reloaded. Per episode: `ways` distinct classes in random order (episode label j = the j-th
drawn class), and per class `shots + queries` distinct images, the first `shots` for the
support set, the rest for the query set. Support and query are ordered class by class.

Kernel batch (search, REFERENCE.md "Kernel batch during search"): `sample_kernel_batch`
draws `tasks` label-free tasks (default 3 x (5 query + 5 support) = 30 images), resized to
32x32 and normalised; support images get a random crop (pad 4) and a horizontal flip,
queries only the resize. `sample_plain_batch` draws the plain-NTK (TE-NAS ablation) batch:
N random images of the split, every one flipped and cropped as a support image. Kernel
images are normalised per `KERNEL_NORMALIZATIONS` (reference: CIFAR-10 statistics whatever
the dataset). `sample_region_inputs` draws the 3x3 single-channel crops the
linear-region count runs on (dataset statistics, as the reference's region counter). All randomness comes from the caller's CPU
`torch.Generator`, so the batch is the same on any device.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from trainers.data import CIFAR10_NORMALIZATION, NORMALIZATION, DatasetError, ImageSplit, normalize
from trainers.datasets.base import Registry

__all__ = [
    "Episode",
    "EpisodeList",
    "KERNEL_NORMALIZATIONS",
    "KernelBatch",
    "kernel_normalization",
    "labels_fingerprint",
    "sample_episodes",
    "sample_kernel_batch",
    "sample_plain_batch",
    "sample_region_inputs",
]

_FORMAT = "metantk-nas/episodes"
_FORMAT_VERSION = 1
_ARRAYS = ("support", "query", "support_labels", "query_labels", "classes")


@dataclass(frozen=True, eq=False)
class Episode:
    """One N-way K-shot Q-query task (or a stack of them, see `EpisodeList.batch`).

    support:        int64 (N*K,) indices into the split's images, class by class
    query:          int64 (N*Q,) indices, class by class, disjoint from support
    support_labels: int64 (N*K,) episode labels 0..N-1
    query_labels:   int64 (N*Q,) episode labels 0..N-1
    With a leading episode dimension (E, ...) when returned by `EpisodeList.batch`.
    """

    support: torch.Tensor
    query: torch.Tensor
    support_labels: torch.Tensor
    query_labels: torch.Tensor


def labels_fingerprint(labels: torch.Tensor | np.ndarray) -> str:
    """sha256 of the int64 labels: ties an episode list to the split it was drawn from."""
    arr = np.ascontiguousarray(_as_numpy_labels(labels), dtype="<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _as_numpy_labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise ValueError(f"labels must be a non-empty 1-D array of non-negative integers, got "
                         f"{arr.dtype} with shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class EpisodeList:
    """E episodes of one split, stored as stacked int64 tensors.

    support (E, N*K), query (E, N*Q), support_labels (E, N*K), query_labels (E, N*Q),
    classes (E, N): the split label of each episode label. Metadata: ways, shots, queries,
    seed, and labels_hash / n_images of the split they index (see `check_labels`).
    """

    support: torch.Tensor
    query: torch.Tensor
    support_labels: torch.Tensor
    query_labels: torch.Tensor
    classes: torch.Tensor
    ways: int
    shots: int
    queries: int
    seed: int
    n_images: int
    labels_hash: str

    def __post_init__(self) -> None:
        e = self.classes.shape[0]
        expected = {"support": (e, self.ways * self.shots), "query": (e, self.ways * self.queries),
                    "support_labels": (e, self.ways * self.shots),
                    "query_labels": (e, self.ways * self.queries), "classes": (e, self.ways)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tensor.dtype != torch.int64 or tuple(tensor.shape) != shape:
                raise ValueError(f"EpisodeList.{name} must be int64 {shape}, got {tensor.dtype} "
                                 f"{tuple(tensor.shape)}")

    @property
    def count(self) -> int:
        return int(self.classes.shape[0])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Episode:
        if not -self.count <= i < self.count:
            raise IndexError(f"episode {i} out of range for {self.count} episodes")
        return Episode(self.support[i], self.query[i], self.support_labels[i], self.query_labels[i])

    def __iter__(self) -> Iterator[Episode]:
        return (self[i] for i in range(self.count))

    def batch(self, i: int, j: int) -> Episode:
        """Episodes i..j-1 stacked: support (E', N*K), query (E', N*Q), labels alike."""
        if not 0 <= i < j <= self.count:
            raise IndexError(f"batch({i}, {j}) needs 0 <= i < j <= {self.count}")
        return Episode(self.support[i:j], self.query[i:j], self.support_labels[i:j],
                       self.query_labels[i:j])

    def metadata(self) -> dict[str, object]:
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "ways": self.ways,
                "shots": self.shots, "queries": self.queries, "seed": self.seed,
                "count": self.count, "n_images": self.n_images, "labels_hash": self.labels_hash}

    def content_hash(self) -> str:
        """sha256 over the metadata and every index array (stable across save / load)."""
        h = hashlib.sha256(json.dumps(self.metadata(), sort_keys=True).encode())
        for name in _ARRAYS:
            h.update(np.ascontiguousarray(getattr(self, name).numpy(), dtype="<i8").tobytes())
        return h.hexdigest()

    def check_labels(self, labels: torch.Tensor | np.ndarray) -> None:
        """DatasetError unless `labels` are exactly those of the split the list was drawn from."""
        arr = _as_numpy_labels(labels)
        if arr.shape[0] != self.n_images or labels_fingerprint(arr) != self.labels_hash:
            raise DatasetError(f"episode list was sampled from a different split ({self.n_images} "
                               f"images, labels hash {self.labels_hash[:12]}) than the one given "
                               f"({arr.shape[0]} images, hash {labels_fingerprint(arr)[:12]}); "
                               f"resample the episodes for this split")

    def write(self, fh: BinaryIO) -> None:
        """Write the .npz (arrays + JSON metadata with the content hash) to a binary file;
        callers with their own atomic writer (the harness's result store) use this."""
        meta = {**self.metadata(), "content_hash": self.content_hash()}
        arrays = {name: getattr(self, name).numpy() for name in _ARRAYS}
        np.savez_compressed(fh, metadata=np.array(json.dumps(meta, sort_keys=True)), **arrays)

    def save(self, path: str | Path) -> Path:
        """Write the .npz (see `write`) atomically: temp file beside `path`, then rename."""
        from trainers.atomic import write_atomic

        return write_atomic(path, self.write)

    @classmethod
    def load(cls, path: str | Path) -> EpisodeList:
        """Read a list written by `save`; DatasetError if missing, corrupt or tampered with."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"missing episode list {path}; write one with EpisodeList.save")
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(str(archive["metadata"]))
                arrays = {name: torch.from_numpy(archive[name].astype(np.int64)) for name in _ARRAYS}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, TypeError,
                AttributeError) as exc:
            raise DatasetError(f"corrupt episode list {path}: {type(exc).__name__}: {exc}; "
                               f"expected an .npz written by EpisodeList.save") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise DatasetError(f"{path} is not an episode list (metadata format "
                               f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
        if meta.get("version") != _FORMAT_VERSION:
            raise DatasetError(f"{path}: episode list version {meta.get('version')}, this code "
                               f"reads version {_FORMAT_VERSION}; resample the episodes")
        try:
            episodes = cls(**arrays, ways=int(meta["ways"]), shots=int(meta["shots"]),
                           queries=int(meta["queries"]), seed=int(meta["seed"]),
                           n_images=int(meta["n_images"]), labels_hash=str(meta["labels_hash"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise DatasetError(f"corrupt episode list {path}: {exc}") from exc
        if episodes.content_hash() != meta.get("content_hash"):
            raise DatasetError(f"episode list {path} does not match its content hash (edited or "
                               f"damaged); resample and save it again")
        return episodes


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _class_members(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class 0..max, ascending."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    return [order[bounds[c]:bounds[c + 1]] for c in range(labels.max() + 1)]


def sample_episodes(labels: torch.Tensor | np.ndarray, *, ways: int, shots: int, queries: int,
                    count: int, seed: int) -> EpisodeList:
    """Draw `count` N-way K-shot Q-query episodes from one split (see module doc).

    labels: (n_images,) split labels 0..n_classes-1. Deterministic in `seed` and `labels`.
    Raises ValueError if there are fewer than `ways` classes or a class has fewer than
    shots + queries images (naming the class and its count).
    """
    arr = _as_numpy_labels(labels)
    ways, shots = _positive("ways", ways), _positive("shots", shots)
    queries, count = _positive("queries", queries, 0), _positive("count", count)
    members = _class_members(arr)
    need = shots + queries
    small = [(c, len(m)) for c, m in enumerate(members) if len(m) < need]
    if small:
        listed = ", ".join(f"class {c} has {n}" for c, n in small[:5])
        raise ValueError(f"{shots}-shot {queries}-query episodes need {need} images per class, "
                         f"but {listed}{' ...' if len(small) > 5 else ''}; lower shots/queries "
                         f"or drop those classes")
    if ways > len(members):
        raise ValueError(f"{ways}-way episodes need {ways} classes, the split has {len(members)}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    classes = np.empty((count, ways), dtype=np.int64)
    picks = np.empty((count, ways, need), dtype=np.int64)
    for e in range(count):
        classes[e] = rng.choice(len(members), size=ways, replace=False)
        for j, c in enumerate(classes[e]):
            picks[e, j] = members[c][rng.choice(len(members[c]), size=need, replace=False)]
    episode_labels = np.arange(ways, dtype=np.int64)
    return EpisodeList(
        support=torch.from_numpy(picks[:, :, :shots].reshape(count, ways * shots).copy()),
        query=torch.from_numpy(picks[:, :, shots:].reshape(count, ways * queries).copy()),
        support_labels=torch.from_numpy(np.tile(np.repeat(episode_labels, shots), (count, 1))),
        query_labels=torch.from_numpy(np.tile(np.repeat(episode_labels, queries), (count, 1))),
        classes=torch.from_numpy(classes), ways=ways, shots=shots, queries=queries,
        seed=int(seed), n_images=int(arr.shape[0]), labels_hash=labels_fingerprint(arr))


# --------------------------------------------------------------------------- kernel batch


@dataclass(frozen=True, eq=False)
class KernelBatch:
    """Images and task index sets for one MetaNTK evaluation (or one plain-NTK batch).

    images: float32 (M, C, s, s), M = tasks * ways * (queries + shots); task t occupies
            rows [t*P, (t+1)*P), P = ways * (queries + shots): first its ways*queries query
            images, then its ways*shots support images. (Plain batch: M random images.)
    tasks:  list of (query_idx, support_idx) int64 index tensors into `images`, the
            format `kernels.meta_ntk` takes. Empty for a plain batch (no task structure).
    source: int64 (M,) index of each row's image in the split (for checks and logs).
    labels: int64 (M,) task-local class 0..ways-1 of each row (plain batch: the split's own
            class of each image). The kernel never uses them; the label-based zero-cost
            proxies of `kernels.proxies` do.
    """

    images: torch.Tensor
    tasks: list[tuple[torch.Tensor, torch.Tensor]]
    source: torch.Tensor
    labels: torch.Tensor


def _cpu_generator(generator: torch.Generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("pass a CPU torch.Generator: the draws happen on the CPU so the batch "
                         "is the same on every device")
    return generator


def _to_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (n, C, H, W) -> float32 (n, C, size, size) in [0, 1], bilinear antialiased resize."""
    x = images.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0.0, 1.0)
    return x


def _flip_and_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p = 1/2) then random crop after zero-padding by `pad`.

    x: float (n, C, s, s) in [0, 1], padded with 0 (black) as torchvision's RandomCrop does
    on the un-normalised image. Draws: n flips, then n (dy, dx) offsets.
    """
    n, _, s, _ = x.shape
    flips = torch.rand(n, generator=generator) < 0.5
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    x = torch.where(flips.view(n, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, dy:dy + s, dx:dx + s]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def _normalization(split: ImageSplit, normalization: tuple[Sequence[float], Sequence[float]] | None
                   ) -> tuple[Sequence[float], Sequence[float]]:
    return NORMALIZATION[split.dataset] if normalization is None else normalization


Stats = tuple[tuple[float, ...], tuple[float, ...]]


def _cifar_stats(split: ImageSplit) -> Stats:
    """CIFAR-10 (mean, std); for a grey split the channel averages (the reference only ever
    ran RGB datasets, so a grey image is treated as its three equal channels would be, on
    average)."""
    if split.channels == 3:
        return CIFAR10_NORMALIZATION
    mean, std = CIFAR10_NORMALIZATION
    return (sum(mean) / 3,), (sum(std) / 3,)


# How the search's kernel images are normalised: name -> (split -> (mean, std)).
KERNEL_NORMALIZATIONS: Registry[Callable[[ImageSplit], Stats]] = Registry("kernel normalization", {
    "cifar": _cifar_stats,                                   # the reference's (transform_TENAS)
    "dataset": lambda split: NORMALIZATION[split.dataset],  # the dataset's own statistics
})


def kernel_normalization(name: str, split: ImageSplit) -> Stats:
    """(mean, std) for the kernel images of `split` under the named rule (KeyError lists them)."""
    return KERNEL_NORMALIZATIONS[name](split)


def sample_plain_batch(split: ImageSplit, *, n: int = 30, image_size: int = 32,
                       normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                       generator: torch.Generator, pad: int = 4) -> KernelBatch:
    """The plain-NTK batch of the TE-NAS ablation: images float32 (n, C, s, s), s = image_size,
    `tasks` empty, `source` the n split indices.

    The reference computed the plain NTK on one batch of a shuffled loader over the
    training images with the support-image transform (resize, flip, random crop with zero
    padding `pad`, normalise): n distinct random images, no task structure, every one
    augmented; n = 30 matches the MetaNTK's 3 tasks x (5 + 5) images. Draws, in order: one
    permutation of the split, then the flips and crop offsets (CPU `generator`).
    """
    gen = _cpu_generator(generator)
    n, image_size, pad = _positive("n", n), _positive("image_size", image_size), _positive("pad", pad, 0)
    if n > len(split):
        raise ValueError(f"a plain kernel batch of {n} images needs {n} images; {split.dataset}/"
                         f"{split.split} has {len(split)}")
    idx = torch.randperm(len(split), generator=gen)[:n]
    x = _flip_and_crop(_to_unit(split.images[idx], image_size), pad, gen)
    mean, std = _normalization(split, normalization)
    return KernelBatch(normalize(x, mean, std).contiguous(), [], idx, split.labels[idx].to(torch.int64))


def sample_kernel_batch(split: ImageSplit, *, tasks: int = 3, ways: int = 5, shots: int = 1,
                        queries: int = 1, image_size: int = 32,
                        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                        generator: torch.Generator, pad: int = 4,
                        device: torch.device | str = "cpu") -> KernelBatch:
    """Draw the label-free task batch the MetaNTK is computed on (REFERENCE.md defaults).

    Per task: `ways` distinct classes, per class `queries + shots` distinct images (first
    the queries). Images are resized to image_size (bilinear, antialiased); support images
    get flip + random crop with zero padding `pad`; all are normalised with
    `normalization` (default NORMALIZATION[split.dataset]). Channels stay as in the split.
    Returns KernelBatch with images float32 (tasks*ways*(queries+shots), C, s, s) on `device`.
    Random draws, in order: per task the class permutation, per class an image permutation,
    then the support flips and crop offsets, all from `generator` (CPU).
    """
    gen = _cpu_generator(generator)
    tasks, ways = _positive("tasks", tasks), _positive("ways", ways)
    shots, queries = _positive("shots", shots), _positive("queries", queries)
    image_size, pad = _positive("image_size", image_size), _positive("pad", pad, 0)
    members = [torch.from_numpy(m) for m in _class_members(split.labels.numpy())]
    need = shots + queries
    if ways > len(members):
        raise ValueError(f"{ways}-way kernel tasks need {ways} classes; {split.dataset}/"
                         f"{split.split} has {len(members)}")
    small = [c for c, m in enumerate(members) if len(m) < need]
    if small:
        c = small[0]
        raise ValueError(f"class {c} ({split.class_names[c]}) of {split.dataset}/{split.split} "
                         f"has {len(members[c])} images; kernel tasks need {need} per class "
                         f"({len(small)} classes are too small)")
    query_rows: list[torch.Tensor] = []
    support_rows: list[torch.Tensor] = []
    for _ in range(tasks):
        chosen = torch.randperm(len(members), generator=gen)[:ways]
        picks = []
        for c in chosen.tolist():
            picks.append(members[c][torch.randperm(len(members[c]), generator=gen)[:need]])
        stacked = torch.stack(picks)  # (ways, need)
        query_rows.append(stacked[:, :queries].reshape(-1))
        support_rows.append(stacked[:, queries:].reshape(-1))
    query_idx, support_idx = torch.cat(query_rows), torch.cat(support_rows)
    queries_x = _to_unit(split.images[query_idx], image_size)
    support_x = _flip_and_crop(_to_unit(split.images[support_idx], image_size), pad, gen)
    nq, ns = ways * queries, ways * shots
    per_task = [torch.cat([queries_x[t * nq:(t + 1) * nq], support_x[t * ns:(t + 1) * ns]])
                for t in range(tasks)]
    source = torch.cat([torch.cat([query_idx[t * nq:(t + 1) * nq], support_idx[t * ns:(t + 1) * ns]])
                        for t in range(tasks)])
    mean, std = _normalization(split, normalization)
    images = normalize(torch.cat(per_task), mean, std).contiguous()
    index_sets = []
    for t in range(tasks):
        start = t * (nq + ns)
        index_sets.append((torch.arange(start, start + nq), torch.arange(start + nq, start + nq + ns)))
    # Queries and supports are each stacked class by class (`stacked` is (ways, need)).
    labels = torch.cat([torch.cat([torch.arange(ways).repeat_interleave(queries),
                                   torch.arange(ways).repeat_interleave(shots)]) for _ in range(tasks)])
    return KernelBatch(images.to(device), index_sets, source, labels.to(device))


def sample_region_inputs(split: ImageSplit, *, n: int, generator: torch.Generator,
                         normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                         image_size: int | None = 32) -> torch.Tensor:
    """Random 3x3 crops of one random channel of random normalised images: float32 (n, 1, 3, 3).

    The linear-region inputs of TE-NAS / the reference. Images are first resized to
    image_size (as in the kernel batch; None keeps the stored size) and normalised per
    channel. Draws, in order: n image indices, n channels, n rows, n columns (CPU generator).
    """
    gen = _cpu_generator(generator)
    n = _positive("n", n)
    size = split.images.shape[-1] if image_size is None else _positive("image_size", image_size, 3)
    idx = torch.randint(0, len(split), (n,), generator=gen)
    chan = torch.randint(0, split.channels, (n,), generator=gen)
    rows = torch.randint(0, size - 2, (n,), generator=gen)
    cols = torch.randint(0, size - 2, (n,), generator=gen)
    unique, inverse = torch.unique(idx, return_inverse=True)
    mean, std = _normalization(split, normalization)
    images = normalize(_to_unit(split.images[unique], size), mean, std)  # (u, C, s, s)
    offs = torch.arange(3)
    r = (rows.view(n, 1, 1) + offs.view(1, 3, 1)).expand(n, 3, 3)
    c = (cols.view(n, 1, 1) + offs.view(1, 1, 3)).expand(n, 3, 3)
    crops = images[inverse.view(n, 1, 1).expand(n, 3, 3), chan.view(n, 1, 1).expand(n, 3, 3), r, c]
    return crops.unsqueeze(1).contiguous()
