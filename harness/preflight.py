"""Checks that run before a command does any work or writes any file.

Everything that can be known from the config and the dataset is checked here, so a typo is
one line (`ConfigError`, exit 2) and never a half-written results folder whose state the
corrected rerun then refuses:

- the results folder can be written (probe file, removed again); a cluster address
  answers (`harness.ray_session.check_reachable`, bounded);
- every `genotype:NAME` method names a registry entry; the training recipe exists;
- the dataset loads with its options, and its splits hold enough classes and images per
  class for the search's kernel tasks and for the evaluation episodes (naming the class);
- memory estimates for the networks (parameter counts on PyTorch's `meta` device, which
  allocates nothing) and for the episode arrays fit in this machine's memory.

The estimates are lower bounds of what the work needs, compared with the physical memory of
the machine running the command: an impossible setting (an extra zero in `init_channels`
or `episodes`) is refused up front, a merely large one is left to the run.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from harness.config import GENOTYPE_METHOD_PREFIX, PRUNING_METHODS, ExperimentConfig
from harness.errors import ConfigError, UserError

_GIB = 1024**3
# Bytes of the episode arrays per drawn image index: the sampler's int64 pick table, then the
# support/query index and label tensors built from it (each int64).
_EPISODE_BYTES_PER_INDEX = 8 * 3
# Copies of the parameters while training with SGD + momentum: weights, gradients, momentum,
# the checkpoint written each epoch.
_TRAIN_PARAM_COPIES = 4


def machine_memory_bytes() -> int:
    """Physical memory of this machine (bytes); 0 where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: skip the memory estimates
        return 0


def check_writable(folder: Path) -> None:
    """Create `folder` (and parents) and write and remove a probe file; UserError otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"results folder {folder} is a file; choose another --out or experiment name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"results folder {folder} is not writable ({exc.strerror or exc}); "
                        f"fix its permissions or choose another folder with --out") from None


def check_methods(cfg: ExperimentConfig) -> None:
    """Every `genotype:NAME` method names a registry genotype."""
    from search_spaces.genotypes import GENOTYPES

    for method in cfg.search.methods:
        if method.startswith(GENOTYPE_METHOD_PREFIX):
            name = method[len(GENOTYPE_METHOD_PREFIX):]
            if name not in GENOTYPES:
                raise ConfigError(f"{cfg.source}: search.methods: {method!r} names no registered genotype; "
                                  f"valid: {', '.join(GENOTYPE_METHOD_PREFIX + g for g in GENOTYPES)}")


def check_recipe(cfg: ExperimentConfig) -> None:
    """The training recipe exists and the overrides make a valid schedule."""
    from harness.config import train_config_for

    for seed in cfg.search.seeds:
        try:
            train_config_for(cfg, seed)
        except KeyError as exc:
            key = "train.recipe" if cfg.train.recipe else "dataset.name (its default recipe)"
            raise ConfigError(f"{cfg.source}: {key}: {exc.args[0] if exc.args else exc}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{cfg.source}: [train]: {exc}") from None


def short_classes(counts: Sequence[int], class_names: Sequence[str], need: int) -> list[str]:
    """'NAME (n images)' for each class with fewer than `need` images. counts: (n_classes,)."""
    return [f"{class_names[c]} ({int(n)} images)" for c, n in enumerate(counts) if int(n) < need]


def check_split_contents(split: Any, *, ways: int, need: int, what: str, keys: str) -> None:
    """`split` has >= `ways` classes and every class >= `need` images; ConfigError naming them.

    what: the work that needs them ("kernel tasks"); keys: the config keys to change.
    """
    where = f"{split.dataset}/{split.split}"
    if split.n_classes < ways:
        raise ConfigError(f"{ways}-way {what} need {ways} classes but {where} has {split.n_classes}; "
                          f"lower {keys} or use a split with more classes")
    small = short_classes(split.class_counts().tolist(), split.class_names, need)
    if small:
        more = f" and {len(small) - 3} more" if len(small) > 3 else ""
        raise ConfigError(f"{what} need {need} images per class but {where} has class "
                          f"{', '.join(small[:3])}{more}; lower {keys} or remove those class folders")


def _load(cfg: ExperimentConfig, split: str) -> Any:
    from harness.specs import data_spec
    from trainers.datasets.base import DatasetError

    d = cfg.dataset
    try:
        return data_spec(cfg).load(split)
    except (DatasetError, ValueError, TypeError) as exc:  # TypeError: an unknown keyword; ValueError: a bad option value
        raise ConfigError(f"{cfg.source}: [dataset] {d.name}: {exc}") from None


def check_dataset(cfg: ExperimentConfig, *, search: bool, evaluate: bool) -> tuple[Any, Any]:
    """Load the train and eval splits once and check them against the config's episode shapes.

    Returns (train split, eval split or None). Dataset errors (missing root, unknown option,
    unknown split) propagate as the loaders' one-line `DatasetError`.
    """
    s, e = cfg.search, cfg.evaluate
    train = _load(cfg, cfg.dataset.train_split)
    if search:
        check_split_contents(train, ways=s.ways, need=s.shots + s.queries, what="search kernel tasks",
                             keys="search.ways/shots/queries")
    test = None
    if evaluate:
        test = _load(cfg, cfg.dataset.eval_split)
        check_split_contents(test, ways=e.ways, need=max(e.shots) + e.queries, what="evaluation episodes",
                             keys="evaluate.ways/shots/queries")
    return train, test


def network_params(build: Any) -> int:
    """Parameters of the module `build()` returns, built on the meta device (no memory used)."""
    import torch

    with torch.device("meta"):
        net = build()
    return int(sum(p.numel() for p in net.parameters()))


def memory_estimates(cfg: ExperimentConfig, *, in_channels: int, n_classes: int, search: bool,
                     train: bool) -> dict[str, int]:
    """Lower-bound bytes of the largest allocations: {what (naming the keys): bytes}.

    search: the supernet's per-sample Jacobian (kernel batch x parameters, float32) plus the
    weights; train: the weights, gradients, momentum and checkpoint of the evaluation network
    (sized with the published MetaNAS cell, a typical genotype); the episode arrays of the
    largest shot count.
    """
    from search_spaces.genotypes import get_genotype
    from search_spaces.network import Network
    from search_spaces.supernet import Supernet

    s, e, t = cfg.search, cfg.evaluate, cfg.train
    out: dict[str, int] = {}
    cells = max(s.cells)
    if search:
        params = network_params(lambda: Supernet(s.init_channels, s.ways, cells, in_channels=in_channels,
                                                 norm=s.norm))
        batch = s.tasks * s.ways * (s.shots + s.queries)
        out["the search supernet's kernel (search.init_channels, cells, tasks, ways, shots, queries)"] = (
            4 * params * (batch + 1))
    if train:
        channels = t.init_channels or s.init_channels
        params = network_params(lambda: Network(get_genotype("metanas_in_v2"), channels, n_classes, cells,
                                                in_channels=in_channels))
        out["the trained network (train.init_channels or search.init_channels, cells)"] = (
            4 * params * _TRAIN_PARAM_COPIES)
        out["the evaluation episode arrays (evaluate.episodes, ways, shots, queries)"] = episode_bytes(
            e.episodes, e.ways, max(e.shots), e.queries)
    return out


def episode_bytes(episodes: int, ways: int, shots: int, queries: int) -> int:
    """Lower-bound bytes of `trainers.episodes.sample_episodes`' arrays for these settings."""
    return episodes * ways * (shots + queries) * _EPISODE_BYTES_PER_INDEX


def check_memory(estimates: dict[str, int], budget: int) -> None:
    """ConfigError naming the first estimate above `budget` bytes (0 = unknown: no check)."""
    if budget <= 0:
        return
    for what, need in estimates.items():
        if need > budget:
            raise ConfigError(f"{what} would need at least {need / _GIB:,.1f} GiB, more than this machine's "
                              f"{budget / _GIB:,.1f} GiB; lower those settings")


def preflight(cfg: ExperimentConfig, *, search: bool = True, train: bool = True) -> None:
    """All up-front checks of a command that searches and/or trains `cfg` (module doc)."""
    from harness.ray_session import check_reachable

    check_writable(cfg.results_dir)
    check_reachable(cfg.resources.address or os.environ.get("RAY_ADDRESS", ""))
    scoring = search and any(m in PRUNING_METHODS for m in cfg.search.methods)
    if search:
        check_methods(cfg)
    if train:
        check_recipe(cfg)
    train_split, _ = check_dataset(cfg, search=scoring, evaluate=train)
    estimates = memory_estimates(cfg, in_channels=int(train_split.images.shape[1]),
                                 n_classes=train_split.n_classes, search=scoring, train=train)
    check_memory(estimates, machine_memory_bytes())
