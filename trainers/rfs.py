"""RFS pre-training of a network built from a genotype, with exact per-epoch resume.

The paper retrains every searched cell with the RFS recipe (Tian et al., "Rethinking
Few-Shot Image Classification", ECCV 2020): plain cross-entropy over all base classes of
the training split, SGD with momentum and weight decay, a step learning-rate schedule and
(for DARTS-style cells) drop-path ramped linearly over the epochs. The final checkpoint is
evaluated (no model selection). Settings per dataset live in ``RECIPES``.

Reproducibility. Nothing random is carried from one epoch to the next: epoch ``e`` draws
its data order, its augmentation and the module-internal randomness (drop-path masks, from
``model.generator`` when the model has that attribute as ``search_spaces.network.Network``
does, else from torch's default generator, scoped) from generators seeded by
``(cfg.seed, e, stream)``. A checkpoint therefore needs only the
model, optimiser and scheduler states and the number of finished epochs, and a run that
is killed and resumed from its last checkpoint ends in exactly the same weights as an
uninterrupted run, bit for bit: on a GPU the epoch runs with cuDNN's deterministic
algorithms (`_deterministic_cudnn`; measured on an H100: two runs from one seed ended with
losses 1.8e-4 apart without it, identical with it, at no visible cost).
The default generator is only touched inside ``torch.random.fork_rng``, so callers'
global RNG state is unchanged.

Checkpoints are written after every epoch to ``checkpoint_dir/checkpoint.pt`` through a
temporary file and ``os.replace``, so a crash mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from trainers.atomic import write_atomic
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.augment import AUGMENTATIONS, Normalization, make_augment
from trainers.seeds import derive_seed, generator

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "EpochResult",
    "RECIPES",
    "TrainConfig",
    "TrainResult",
    "get_recipe",
    "load_model_checkpoint",
    "pretrain",
    "read_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "metantk-nas/rfs-checkpoint/v1"

# Independent random streams of one epoch (the third entry of the seed tuple).
_STREAM_ORDER, _STREAM_AUGMENT, _STREAM_MODULES = 0, 1, 2


class LabelledImages(Protocol):
    """What ``pretrain`` needs from a split: ``trainers.data.ImageSplit`` satisfies it."""

    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,) in 0..n_classes-1
    class_names: tuple[str, ...]
    dataset: str


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one RFS pre-training run (see ``RECIPES`` for the paper's)."""

    epochs: int
    lr: float
    lr_decay_epochs: tuple[int, ...]
    lr_decay_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    drop_path: float = 0.2
    augment: str = "rfs84"
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept lists (e.g. from TOML) but store a tuple so the config stays hashable.
        object.__setattr__(self, "lr_decay_epochs", tuple(int(e) for e in self.lr_decay_epochs))
        problems = []
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            problems.append(f"epochs={self.epochs!r} must be an integer >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr={self.lr!r} must be a positive number")
        if list(self.lr_decay_epochs) != sorted(set(self.lr_decay_epochs)) or any(
            e < 1 for e in self.lr_decay_epochs
        ):
            problems.append(
                f"lr_decay_epochs={self.lr_decay_epochs!r} must be strictly increasing epochs >= 1"
            )
        if not 0 < self.lr_decay_rate <= 1:
            problems.append(f"lr_decay_rate={self.lr_decay_rate!r} must be in (0, 1]")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum={self.momentum!r} must be in [0, 1)")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if not 0 <= self.drop_path < 1:
            problems.append(f"drop_path={self.drop_path!r} must be in [0, 1)")
        if self.augment not in AUGMENTATIONS:
            problems.append(
                f"augment={self.augment!r} is not one of {', '.join(sorted(AUGMENTATIONS))}"
            )
        if not (isinstance(self.seed, int) and self.seed >= 0):
            problems.append(f"seed={self.seed!r} must be an integer >= 0")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) for checkpoints, Parquet rows and Tune configs."""
        d = dataclasses.asdict(self)
        d["lr_decay_epochs"] = list(self.lr_decay_epochs)
        return d


RECIPES: dict[str, TrainConfig] = {
    # RFS / paper settings (REFERENCE.md, "Training and evaluation").
    "mini_imagenet": TrainConfig(
        epochs=100, lr=0.02, lr_decay_epochs=(60, 80), drop_path=0.2, batch_size=64, augment="rfs84"
    ),
    "tiered_imagenet": TrainConfig(
        epochs=60, lr=0.01, lr_decay_epochs=(30, 40, 50), drop_path=0.1, batch_size=64,
        augment="rfs84",
    ),
    # Our choice, sized for a CPU: ~3k 28x28 images of the small Omniglot background set
    # train in minutes; the same /10 steps at 60% and 80% as the mini-ImageNet schedule;
    # no drop-path (a short run on small images under-fits rather than over-fits).
    "omniglot": TrainConfig(
        epochs=10, lr=0.05, lr_decay_epochs=(6, 8), drop_path=0.0, batch_size=64,
        augment="omniglot28",
    ),
    # Smoke recipe for the generated 32x32 data: a few epochs, one decay.
    "synthetic": TrainConfig(
        epochs=4, lr=0.05, lr_decay_epochs=(3,), drop_path=0.0, batch_size=64, augment="small"
    ),
}


def get_recipe(name: str) -> TrainConfig:
    """The registered recipe ``name``; ``KeyError`` listing the valid names otherwise."""
    if name not in RECIPES:
        raise KeyError(f"unknown training recipe {name!r}; valid names: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch: ``epoch`` counts from 1; loss/acc are training means of the epoch."""

    epoch: int
    loss: float
    acc: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of ``pretrain``.

    ``epochs_run``: epochs finished in total (including those restored from a checkpoint);
    ``seconds``: training seconds summed over all epochs, also those of earlier attempts;
    ``resumed_from``: epochs that were restored from a checkpoint (0 for a fresh run).
    """

    epochs_run: int
    final_loss: float
    final_train_acc: float
    seconds: float
    history: tuple[EpochResult, ...]
    resumed_from: int = 0
    checkpoint: Path | None = field(default=None)


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """The generator of one stream of one epoch: key (training seed, epoch, stream)."""
    return generator(seed, epoch, stream)


@contextlib.contextmanager
def _scoped_default_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's default generator(s) for ``device`` inside, restore the caller's state after.

    Needed because drop-path and dropout draw from the default generator and take no
    ``generator`` argument; forking keeps the library free of global side effects.
    """
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda"
    ) else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def _deterministic_cudnn(device: torch.device) -> Iterator[None]:
    """On CUDA: cuDNN picks deterministic algorithms (no autotuning) inside; restored after."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A random permutation of ``range(n)`` cut into batches; (batch_size,) index tensors.

    The last incomplete batch is dropped when there is at least one full batch, as RFS's
    ``drop_last=True`` loader does (avoids a tiny, noisy last step and BN on few samples).
    """
    order = torch.randperm(n, generator=generator)
    if n >= batch_size:
        order = order[: (n // batch_size) * batch_size]
    return list(order.split(batch_size))


def _atomic_save(payload: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` through `trainers.atomic.write_atomic` (temp file beside ``path``, fsync,
    rename): a crash mid-write leaves the previous checkpoint intact."""
    write_atomic(path, lambda fh: torch.save(dict(payload), fh))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a ``pretrain`` checkpoint (a file, or a directory holding ``checkpoint.pt``) on the CPU.

    Returns the dict with keys ``format, epoch, model, optimizer, scheduler, config,
    history, metadata, rng``. Raises ``FileNotFoundError`` / ``ValueError`` with the fix.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint {p} does not exist; pass the checkpoint.pt written by pretrain "
            "(or the directory holding it)"
        )
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {p} is not a {CHECKPOINT_FORMAT} file (it was not written by "
            "trainers.rfs.pretrain); train with pretrain or pass its checkpoint.pt"
        )
    return ckpt


def load_model_checkpoint(path: str | os.PathLike[str], model: nn.Module) -> dict[str, Any]:
    """Load the weights of a ``pretrain`` checkpoint into ``model`` (strictly, on its device).

    Returns ``{"epoch", "config", "history", "metadata"}`` of the checkpoint, so a caller
    can check e.g. the genotype it was trained with. ``ValueError`` if the weights do not fit.
    """
    ckpt = read_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {path}: its weights do not fit this model ({exc}); build the network "
            "with the genotype, channels, cells and classes stored in the checkpoint metadata"
        ) from exc
    return {k: ckpt[k] for k in ("epoch", "config", "history", "metadata")}


def _num_classes(split: LabelledImages) -> int:
    return max(len(split.class_names), int(split.labels.max()) + 1 if split.labels.numel() else 0)


def _check_inputs(model: nn.Module, split: LabelledImages, cfg: TrainConfig) -> None:
    images, labels = split.images, split.labels
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"split images: expected a uint8 tensor (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}; load splits with trainers.data.load_split"
        )
    if labels.shape != (images.shape[0],) or labels.dtype != torch.int64:
        raise ValueError(
            f"split labels: expected int64 of shape ({images.shape[0]},), got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"split {getattr(split, 'split', '?')!r} of {split.dataset!r} is empty")
    head = getattr(model, "classifier", None)
    n = _num_classes(split)
    if isinstance(head, nn.Linear) and head.out_features < n:
        raise ValueError(
            f"model head has {head.out_features} outputs but the split has {n} classes; "
            f"build the network with num_classes={n}"
        )
    if cfg.drop_path > 0 and not hasattr(model, "drop_path_prob"):
        raise ValueError(
            f"drop_path={cfg.drop_path} but {type(model).__name__} has no drop_path_prob "
            "attribute; use a search_spaces.network.Network or set drop_path=0"
        )


def _checkpoint_payload(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    history: list[EpochResult],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": cfg.to_dict(),
        "history": [dataclasses.asdict(h) for h in history],
        "metadata": dict(metadata),
        # No generator state crosses epochs: epoch e re-derives its generators from
        # (seed, e, stream). Recorded so a reader knows how to reproduce an epoch.
        "rng": {"scheme": "numpy.SeedSequence([seed, epoch_index, stream])", "seed": cfg.seed,
                "streams": {"order": _STREAM_ORDER, "augment": _STREAM_AUGMENT,
                            "modules": _STREAM_MODULES}},
    }


def _run_epoch(
    model: nn.Module,
    split: LabelledImages,
    cfg: TrainConfig,
    epoch_index: int,
    optimizer: torch.optim.Optimizer,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    device: torch.device,
) -> tuple[float, float]:
    """One pass over the split; returns (mean loss, accuracy) of the epoch."""
    order_gen = _generator(cfg.seed, epoch_index, _STREAM_ORDER)
    aug_gen = _generator(cfg.seed, epoch_index, _STREAM_AUGMENT)
    model.train()
    if hasattr(model, "drop_path_prob"):
        # Linear ramp as DARTS/RFS: 0 in the first epoch, -> drop_path at the end.
        model.drop_path_prob = cfg.drop_path * epoch_index / cfg.epochs
    # Accumulate on the device and synchronise once per epoch.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    modules_seed = derive_seed(cfg.seed, epoch_index, _STREAM_MODULES)
    if hasattr(model, "generator"):
        # search_spaces.network.Network draws its drop-path masks from `model.generator`
        # (on the generator's device): a per-epoch generator on the training device.
        model.generator = torch.Generator(device=device).manual_seed(modules_seed)
    with _scoped_default_rng(modules_seed, device), _deterministic_cudnn(device):
        for idx in _batches(split.images.shape[0], cfg.batch_size, order_gen):
            images = split.images[idx].to(device, non_blocking=True)
            labels = split.labels[idx].to(device, non_blocking=True)
            x = augment(images, aug_gen)
            logits = model(x)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * idx.numel()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += idx.numel()
    mean_loss = float(loss_sum) / seen
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"epoch {epoch_index + 1}: training loss is {mean_loss}; training diverged, "
            f"lower the learning rate (lr={cfg.lr})"
        )
    return mean_loss, int(correct) / seen


def pretrain(
    model: nn.Module,
    split: LabelledImages,
    cfg: TrainConfig,
    *,
    device: torch.device | str,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: bool = True,
    normalization: Normalization | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> TrainResult:
    """RFS pre-training of ``model`` on every class of ``split``; resumes from ``checkpoint_dir``.

    ``model``: logits ``(B, n_classes)`` from normalised float images ``(B, C, H, W)``;
    moved to ``device``. ``split.images`` uint8 ``(N, C, H, W)`` stay on the CPU and are
    moved per batch. ``normalization`` defaults to ``trainers.data.NORMALIZATION[split.dataset]``.
    ``checkpoint_dir``: after every epoch ``checkpoint.pt`` is written there atomically;
    if one exists at the start, training continues from it (its config must equal ``cfg``).
    ``on_epoch`` is called after the checkpoint of each epoch is written (Tune reporting).
    ``metadata``: plain values stored in the checkpoint (e.g. genotype, channels, cells).
    """
    device = torch.device(device)
    _check_inputs(model, split, cfg)
    if normalization is None:
        from trainers.data import NORMALIZATION  # KeyError listing the datasets if unknown

        normalization = NORMALIZATION[split.dataset]
    augment = make_augment(cfg.augment, normalization)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.lr_decay_epochs), gamma=cfg.lr_decay_rate
    )
    history: list[EpochResult] = []
    start = 0
    ckpt_path: Path | None = None
    if checkpoint_dir is not None:
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists():
            ckpt = read_checkpoint(ckpt_path)
            if ckpt["config"] != cfg.to_dict():
                raise ValueError(
                    f"checkpoint {ckpt_path} was written with config {ckpt['config']} but this "
                    f"run has {cfg.to_dict()}; use a new checkpoint_dir or delete the old one"
                )
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            history = [EpochResult(**h) for h in ckpt["history"]]
            start = int(ckpt["epoch"])
    resumed_from = start
    meta = dict(metadata or {})
    original_generator = getattr(model, "generator", None)

    from trainers.progress import progress_bar

    bar = progress_bar(cfg.epochs, "train", "epoch", enabled=progress, initial=start)
    try:
        for epoch_index in range(start, cfg.epochs):
            lr = optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            loss, acc = _run_epoch(model, split, cfg, epoch_index, optimizer, augment, device)
            scheduler.step()
            result = EpochResult(
                epoch=epoch_index + 1, loss=loss, acc=acc, lr=lr, seconds=time.perf_counter() - t0
            )
            history.append(result)
            if ckpt_path is not None:
                _atomic_save(
                    _checkpoint_payload(epoch_index + 1, model, optimizer, scheduler, cfg,
                                        history, meta),
                    ckpt_path,
                )
            if on_epoch is not None:
                on_epoch(result)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", lr=f"{lr:.2g}")
    finally:
        bar.close()
        if hasattr(model, "generator"):
            model.generator = original_generator
    if hasattr(model, "drop_path_prob"):
        # The trained network is evaluated without drop-path.
        model.drop_path_prob = 0.0
    last = history[-1]
    return TrainResult(
        epochs_run=len(history),
        final_loss=last.loss,
        final_train_acc=last.acc,
        seconds=sum(h.seconds for h in history),
        history=tuple(history),
        resumed_from=resumed_from,
        checkpoint=ckpt_path,
    )
