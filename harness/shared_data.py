"""Dataset splits loaded once on the driver and shared through Ray's object store.

Without this every scorer actor and every trial loads the whole training split itself
(tieredImageNet is about 9.5 GB in memory: eight trials on a node would need 76 GB). Here the
driver loads each split once and puts it in the object store as plain NumPy arrays
(`split_arrays`); every worker on a node then reads the same shared-memory copy without
copying it (Ray deserialises NumPy arrays zero-copy, read-only), and a node without the
dataset root needs none. `shared_split` turns the arrays back into an `ImageSplit` whose
tensors view that memory.

Where nothing is shared (the inline scorer pool, `evaluate`, a test calling a trainable
directly) the loaders read the dataset root as before.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class SplitKey:
    """Everything that fixes the contents of a loaded split (`trainers.data.load_split`)."""

    dataset: str
    root: str                      # resolved ("" for datasets without files)
    split: str
    image_size: int                # 0 = native size
    seed: int                      # class split / generation seed
    options: tuple[tuple[str, Any], ...]

    def data(self) -> Any:
        """This split as a `harness.specs.DataSpec` whose train and eval split are both it."""
        from harness.specs import DataSpec

        return DataSpec(name=self.dataset, root=self.root, image_size=self.image_size, train_split=self.split,
                        eval_split=self.split, options=self.options, seed=self.seed)

    def load(self) -> Any:
        """The split, read from the dataset root (`harness.specs.DataSpec.load`: one loader call)."""
        return self.data().load(self.split)


def split_arrays(split: Any) -> dict[str, Any]:
    """An `ImageSplit` as plain values for the object store: contiguous NumPy images (N, C, H, W)
    uint8 and labels (N,) int64 (zero-copy to read), class names, dataset and split names."""
    return {"images": np.ascontiguousarray(split.images.numpy()), "labels": np.ascontiguousarray(split.labels.numpy()),
            "class_names": tuple(split.class_names), "dataset": split.dataset, "split": split.split}


def shared_split(arrays: Mapping[str, Any]) -> Any:
    """The `ImageSplit` of `split_arrays` output, its tensors viewing the arrays' memory (no copy).

    Arrays from the object store are read-only: torch warns that writing to such a tensor is
    undefined. Nothing writes into a split (every consumer indexes, which copies), so that
    warning is silenced here, for these two arrays only.
    """
    import torch

    from trainers.datasets.base import ImageSplit

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
    return ImageSplit(images, labels, tuple(arrays["class_names"]), arrays["dataset"], arrays["split"])


def data_split_key(data: Any, split: str) -> SplitKey:
    """The key of split `split` of a `harness.specs.DataSpec` (the one way trials, scorers, the
    driver and `evaluate` name a split, so their keys agree; the root made absolute)."""
    from harness.specs import absolute_root, freeze

    options = data.options if isinstance(data.options, tuple) else freeze(dict(data.options))
    return SplitKey(data.name, absolute_root(data.root), split, int(data.image_size or 0), int(data.seed), options)


def trial_data_keys(cfg: Any) -> dict[str, SplitKey]:
    """The splits a trial of `cfg` reads: "train" (pre-training) and "eval" (few-shot episodes)."""
    from harness.specs import data_spec

    d = data_spec(cfg)
    return {"train": data_split_key(d, d.train_split), "eval": data_split_key(d, d.eval_split)}


def score_data_key(spec: Any) -> SplitKey:
    """The split a scorer of `harness.specs.ScoreSpec` `spec` reads."""
    return data_split_key(spec.data, spec.data.train_split)


def load_shared(keys: Any) -> dict[SplitKey, dict[str, Any]]:
    """{key: `split_arrays`} of each distinct split of `keys`, loaded once (on the driver), to
    go into the object store in one piece (`ray.put`, or `tune.with_parameters`)."""
    return {key: split_arrays(key.load()) for key in dict.fromkeys(keys)}


def preloaded_split(shared: Mapping[SplitKey, Mapping[str, Any]] | None, spec: Any) -> Any:
    """The split a scorer of `spec` reads, from `shared` (`load_shared`), or None when it is
    not there (the scorer then reads the dataset root): `harness.scoring.score_job`'s `preload`."""
    arrays = (shared or {}).get(score_data_key(spec))
    return None if arrays is None else shared_split(arrays)


def resolve_split(shared: Mapping[SplitKey, Mapping[str, Any]] | None, key: SplitKey) -> Any:
    """The split of `key`: from `shared` (`load_shared`, read from the object store) when it
    is there, else read from the dataset root."""
    arrays = (shared or {}).get(key)
    return shared_split(arrays) if arrays is not None else key.load()
