"""Training and evaluating searched cells as Ray Tune trials.

One trial per (dataset, method, seed, cells): RFS pre-training of the network built from the
genotype, then few-shot evaluation (1-shot and 5-shot, ...) on the stored episode lists that
every method shares. Every epoch is checkpointed through `tune.report(..., checkpoint=...)`,
so a failed trial (`FailureConfig(max_failures>0)`) restarts from its last epoch, and a rerun
of the same command restores the experiment with `Tuner.restore` and finishes only what is
missing. What is missing is decided by the Parquet tables, not by Tune's bookkeeping: a
trial whose rows were deleted or found unreadable runs again even if Tune recorded it as
finished. Rows go to Parquet under deterministic keys (the trial id): a retried epoch or trial
overwrites its rows, never duplicates them.

Rows go home: a trial writes nothing into the results folder, which may be on
another machine. It gets its episode lists as data, reports each epoch, and its last
checkpoint carries the model file and its rows; the driver writes them
(`harness.tune_callbacks.TrialRowsCallback`).

Trials stream: `metantk-nas run` hands each searched cell's trials to Tune as soon as its
search ends (`stream_trials`, with `harness.trial_stream`), into a Tune experiment whose
search algorithm is fed by the searches (a new experiment whenever trials arrive while none
runs); `run_trials` then restores whatever an interrupted earlier experiment holds.
`run_trials` alone (one grid over the trial labels) serves `train`, the proxy study and
`run_experiment(stream=False)`.

Only `ray.tune.*` APIs are used inside the trainable (ray 2.60); its work is
`train_and_evaluate`, which runs without Tune (and is tested so).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

from harness import store
from harness.identity import evaluation_key, evaluations_on_disk
from harness.plans import training_runs  # noqa: F401  (re-exported)
from harness.config import ExperimentConfig
from harness.specs import DataSpec, TrialSpec, data_spec, freeze, trial_spec
from harness.results_guard import report_set_aside
from trainers.seeds import episode_list_seed

MODEL_DIR = "models"
EPISODE_DIR = "episode_lists"
CHECKPOINT_NAME = "checkpoint.pt"


def episode_list_path(results_dir: Path, dataset: str, split: str, ways: int, shots: int, queries: int,
                      count: int, seed: int) -> Path:
    """`RESULTS/episode_lists/<dataset>-<split>-<N>w<K>s<Q>q-<E>e-seed<S>.npz` (an `EpisodeList.save`
    NumPy archive: index arrays + JSON metadata)."""
    return Path(results_dir) / EPISODE_DIR / f"{dataset}-{split}-{ways}w{shots}s{queries}q-{count}e-seed{seed}.npz"


def ensure_episode_lists(cfg: ExperimentConfig) -> list[Path]:
    """Sample (once) and store the evaluation episodes shared by every trial of the experiment.

    A stored list that cannot be read (damaged, edited) is moved to
    `unreadable/episode_lists/` and sampled again: the sampling is seeded, so the new list is
    the one every finished trial was evaluated on.
    """
    from trainers.datasets.base import DatasetError
    from trainers.episodes import EpisodeList, sample_episodes

    e = cfg.evaluate
    paths = []
    split = None
    for shots in e.shots:
        path = episode_list_path(cfg.results_dir, cfg.dataset.name, cfg.dataset.eval_split, e.ways, shots,
                                 e.queries, e.episodes, cfg.experiment.seed)
        if path.is_file():
            try:
                EpisodeList.load(path)
            except DatasetError as exc:
                target = cfg.results_dir / store.UNREADABLE_DIR / EPISODE_DIR / f"{path.name}.{time.time_ns()}"
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
                report_set_aside([(path, target, str(exc).splitlines()[0][:200])])
        if not path.is_file():
            if split is None:
                split = data_spec(cfg).load(cfg.dataset.eval_split)
            episodes = sample_episodes(split.labels, ways=e.ways, shots=shots, queries=e.queries, count=e.episodes,
                                       seed=episode_list_seed(cfg.experiment.seed, shots))
            store.write_atomic(path, episodes.write)
        paths.append(path)
    return paths


def trial_specs(cfg: ExperimentConfig, searches: list[dict[str, Any]]) -> list[TrialSpec]:
    """One `TrialSpec` per training of each searched genotype (rows of the `searches` table,
    `training_runs`); the `seed` of a trial stays its search's seed, the training recipe's
    seed is the training seed."""
    specs = []
    for row in searches:
        for train_seed, trial_id in training_runs(cfg, row):
            specs.append(trial_spec(cfg, row, train_seed, trial_id))
    return specs


def _device() -> Any:
    import torch

    # Tune sets CUDA_VISIBLE_DEVICES to the trial's GPUs ("" when it has none): a trial
    # without a GPU sees none, so this follows Ray's assignment.
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def build_network(genotype: str, channels: int, n_classes: int, cells: int, in_channels: int) -> Any:
    from search_spaces.genotypes import Genotype
    from search_spaces.network import Network

    return Network(Genotype.from_str(genotype), channels, n_classes, cells, in_channels=in_channels)


def seeded_network(spec: TrialSpec, n_classes: int, in_channels: int) -> Any:
    """The trial's network with PyTorch's default initialisation drawn from a seed of
    (seed, trial id): the same trial gives the same network bit for bit, in any process.

    Training deliberately keeps torch's default init (as DARTS, MetaNAS and the reference
    train their cells) rather than the search's `search_spaces.init.reinitialize` (He-normal,
    chosen for the kernels): on the Omniglot study's 6-epoch recipe the latter trained the same
    32 cells to 7 points lower 1-shot accuracy on average (81.2 % against 88.3 %).
    """
    import torch

    from trainers.seeds import derive_seed

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
        torch.manual_seed(derive_seed(spec.seed, spec.trial_id, "train-init"))
        return build_network(spec.genotype, spec.network.init_channels, n_classes, spec.network.cells, in_channels)


@dataclass(frozen=True)
class EvalSettings:
    """Everything that fixes a trial's few-shot evaluation, as plain values.

    Stored in the model file (`evaluation`), so `metantk-nas evaluate --checkpoint X` alone
    reproduces the trial's accuracy: the data (dataset, root, options, image size, class-split
    seed, split), the normalisation, the logistic regression's C, the support augmentation
    (count, augmentation NAME and its seed: names, not objects, so the file stays plain data
    for `torch.load(weights_only=True)`), and the identity of the episode lists (file name and
    content hash per shot count).
    """

    dataset: str
    root: str
    dataset_options: dict
    image_size: int                 # 0 = the dataset's native size
    data_seed: int
    split: str
    normalization: tuple            # ((mean, ...), (std, ...)) on the [0, 1] scale
    ways: int
    shots: tuple
    queries: int
    episodes: int
    episode_seed: int               # experiment seed the lists were sampled with
    C: float
    support_augment: int
    augment: str                    # training augmentation used for support_augment > 0
    augment_seed: int
    episode_lists: dict             # str(shots) -> {"file": name, "content_hash": sha256}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def data(self) -> DataSpec:
        """The evaluation data as a `DataSpec` (its `load(self.split)` is the evaluated split)."""
        return DataSpec(name=self.dataset, root=self.root, image_size=self.image_size, train_split=self.split,
                        eval_split=self.split, options=freeze(dict(self.dataset_options)), seed=self.data_seed)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalSettings":
        """Inverse of `to_dict`; ValueError naming the missing or unknown keys."""
        names = {f.name for f in fields(cls)}
        missing, extra = sorted(names - set(data)), sorted(set(data) - names)
        if missing or extra:
            raise ValueError(f"evaluation settings: missing {missing}, unknown {extra}")
        norm = data["normalization"]
        return cls(**{**data, "shots": tuple(int(k) for k in data["shots"]),
                      "normalization": (tuple(norm[0]), tuple(norm[1]))})


def load_episode_lists(results_dir: str | Path, spec: TrialSpec) -> dict[int, tuple[str, Any]]:
    """shots -> (file name, `EpisodeList`) of the stored lists of trial `spec` in `results_dir`,
    read on the driver (they must exist: `ensure_episode_lists`). Trials get them as data, never
    by path."""
    return stored_episode_lists(results_dir, spec.data, spec.evaluate)


def stored_episode_lists(results_dir: str | Path, d: DataSpec, e: Any) -> dict[int, tuple[str, Any]]:
    """`load_episode_lists` of the data `d` and the evaluation `e` (`harness.specs.EvaluationSpec`):
    every trial of an experiment shares them, so they are known before any trial's genotype."""
    from trainers.episodes import EpisodeList

    lists = {}
    for shots in e.shots:
        path = episode_list_path(Path(results_dir), d.name, d.eval_split, e.ways, shots, e.queries, e.episodes, d.seed)
        lists[int(shots)] = (path.name, EpisodeList.load(path))
    return lists


def eval_settings(spec: TrialSpec, episode_lists: dict[int, tuple[str, Any]] | None = None) -> EvalSettings:
    """The evaluation of trial `spec` on `episode_lists` (`load_episode_lists`; read from the
    results folder when None)."""
    from trainers.data import NORMALIZATION

    loaded = load_episode_lists(spec.results_dir, spec) if episode_lists is None else episode_lists
    lists = {str(shots): {"file": name, "content_hash": episodes.content_hash()}
             for shots, (name, episodes) in sorted(loaded.items())}
    d, e = spec.data, spec.evaluate
    mean, std = NORMALIZATION[d.name]
    return EvalSettings(
        dataset=d.name, root=d.root, dataset_options=dict(d.options),
        image_size=int(d.image_size or 0), data_seed=d.seed, split=d.eval_split,
        normalization=(tuple(mean), tuple(std)), ways=e.ways, shots=tuple(e.shots),
        queries=e.queries, episodes=e.episodes, episode_seed=d.seed, C=e.C,
        support_augment=e.support_augment, augment=str(spec.train.get("augment", "")), augment_seed=0,
        episode_lists=lists)


def find_episode_list(settings: EvalSettings, shots: int, places: list[Path]) -> Any:
    """The stored episode list of `shots` with the recorded content hash, from the first of
    `places` (folders) that holds it. UserError naming the file and the folders otherwise."""
    from harness.errors import UserError
    from trainers.episodes import EpisodeList

    entry = settings.episode_lists[str(shots)]
    for folder in places:
        path = Path(folder) / entry["file"]
        if path.is_file():
            episodes = EpisodeList.load(path)
            if episodes.content_hash() != entry["content_hash"]:
                raise UserError(f"{path} is not the episode list the model was evaluated on (content hash "
                                f"{episodes.content_hash()[:12]}, expected {entry['content_hash'][:12]}); "
                                "restore that file or pass --episodes/--seed to sample new episodes")
            return episodes
    raise UserError(f"episode list {entry['file']} not found in {', '.join(map(str, places))}; keep the model "
                    "file in RESULTS_DIR/models/ beside RESULTS_DIR/episode_lists/, or pass --episodes/--seed "
                    "to sample new episodes")


def evaluate_with_settings(model: Any, settings: EvalSettings, split: Any, episodes: Any, shots: int, device: Any,
                           *, progress: bool = False) -> Any:
    """Per-episode accuracies (E,) of `model` on `episodes` as `settings` prescribe (normalisation,
    C, support augmentation by name). The one evaluation path of trials and `evaluate`."""
    from trainers.fewshot import evaluate_model

    norm = (tuple(settings.normalization[0]), tuple(settings.normalization[1]))
    return evaluate_model(model, split, episodes, device=device, normalization=norm, C=settings.C,
                          support_augment=settings.support_augment,
                          augment=settings.augment if settings.support_augment else None,
                          seed=settings.augment_seed, progress=progress)


def evaluate_trained(model: Any, settings: EvalSettings, split: Any, device: Any, places: list[Path] = (), *,
                     episode_lists: dict[int, tuple[str, Any]] | None = None,
                     progress: bool = False) -> tuple[dict[int, tuple[float, float]], list[dict[str, Any]]]:
    """Few-shot accuracy per shot count on the trial's episode lists: `episode_lists` given as data
    (a trial), else the stored files found in `places`; (summary, episode rows)."""
    from trainers.fewshot import mean_confidence_interval

    summary, rows = {}, []
    for shots in settings.shots:
        episodes = (episode_lists[int(shots)][1] if episode_lists is not None
                    else find_episode_list(settings, shots, places))
        accs = evaluate_with_settings(model, settings, split, episodes, shots, device, progress=progress)
        mean, half = mean_confidence_interval(accs)
        summary[shots] = (float(mean), float(half))
        rows += [{"ways": settings.ways, "shots": shots, "queries": settings.queries, "episode": i,
                  "accuracy": float(a)} for i, a in enumerate(accs.tolist())]
    return summary, rows


MODEL_KEYS = ("genotype", "channels", "cells", "num_classes", "in_channels", "model")
# Written since the model file carries its evaluation (older files lack it: `evaluate` then
# needs --dataset).
EVALUATION_KEY = "evaluation"


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Load a trained model file (`models/<trial>.pt`) as data, never as code.

    Model files hold only tensors and plain values, so they are read with
    `torch.load(weights_only=True)`: a file whose pickle names any other global (a
    `__reduce__` payload, top-level or nested) is refused before anything in it runs.
    Raises `UserError` naming the file and the fix for a missing, foreign or unreadable file.
    """
    import pickle

    import torch

    from harness.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file {p} not found; trained models are in RESULTS_DIR/models/*.pt")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{p} is not a plain metantk-nas model file and was not loaded ({first}); "
                        f"model files hold only tensors and plain values: use RESULTS_DIR/models/<trial>.pt "
                        f"written by `metantk-nas run` or `train`") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{p} is not a readable model file ({type(exc).__name__}: {str(exc)[:120]}); "
                        f"use RESULTS_DIR/models/<trial>.pt written by `metantk-nas run` or `train`") from exc
    missing = [k for k in MODEL_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{p} is not a metantk-nas model file (missing {', '.join(missing)}); "
                        f"use RESULTS_DIR/models/<trial>.pt written by `metantk-nas run` or `train`")
    return ckpt


@dataclass(frozen=True)
class EvalOverrides:
    """`evaluate` flags; None keeps the model file's setting. Any of the episode-defining ones
    (everything but C, support_augment) means new episodes are sampled instead of the stored lists."""

    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    image_size: int | None = None
    data_seed: int | None = None
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    episodes: int | None = None
    seed: int | None = None
    C: float | None = None
    support_augment: int | None = None

    def new_episodes(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name not in ("C", "support_augment"))


# `evaluate` defaults for a model file that carries no evaluation settings (written before
# they were stored): the paper's 5-way, 15 queries, 600 episodes.
LEGACY_EVAL = {"ways": 5, "shots": (1,), "queries": 15, "episodes": 600, "C": 1.0}


def resolve_eval_settings(ckpt: dict[str, Any], o: EvalOverrides) -> EvalSettings:
    """The model file's evaluation with the flags applied. A new dataset brings its own
    normalisation and drops the stored dataset options and root. UserError when the file has
    no settings and no --dataset is given."""
    from harness.errors import UserError
    from trainers.data import NORMALIZATION

    if EVALUATION_KEY in ckpt:
        base = EvalSettings.from_dict(ckpt[EVALUATION_KEY])
    elif o.dataset is None:
        raise UserError("this model file does not record how its trial was evaluated (written by an older "
                        "version); pass --dataset (and --root) to evaluate it")
    else:
        mean, std = NORMALIZATION[o.dataset]
        base = EvalSettings(dataset=o.dataset, root="", dataset_options={}, image_size=0, data_seed=0, split="test",
                            normalization=(tuple(mean), tuple(std)), episode_seed=0, support_augment=0, augment="",
                            augment_seed=0, episode_lists={}, **LEGACY_EVAL)
    changes: dict[str, Any] = {}
    if o.dataset is not None and o.dataset != base.dataset:
        mean, std = NORMALIZATION[o.dataset]
        changes |= {"dataset": o.dataset, "root": "", "dataset_options": {}, "image_size": 0,
                    "normalization": (tuple(mean), tuple(std))}
    simple = {"root": o.root, "split": o.split, "image_size": o.image_size, "data_seed": o.data_seed,
              "ways": o.ways, "queries": o.queries, "episodes": o.episodes, "episode_seed": o.seed,
              "C": o.C, "support_augment": o.support_augment}
    changes |= {k: v for k, v in simple.items() if v is not None}
    if o.shots is not None:
        changes["shots"] = (o.shots,)
    if o.new_episodes():
        changes["episode_lists"] = {}
    settings = replace(base, **changes)
    if settings.support_augment and not settings.augment:
        raise UserError(f"--support-augment {settings.support_augment} needs the training augmentation, which "
                        "this model file does not record; pass --support-augment 0")
    return settings


def trial_label(spec: TrialSpec) -> str:
    """Short name of a trial for Tune's status table: the trial id without its dataset prefix
    (one experiment has one dataset), e.g. `metantk-s0-c3`."""
    prefix = f"{spec.data.name}-"
    return spec.trial_id[len(prefix):] if spec.trial_id.startswith(prefix) else spec.trial_id


# Files of a trial's last checkpoint that carry its outputs home (besides `pretrain`'s
# CHECKPOINT_NAME): the driver writes them into the results folder (`collect_trial_outputs`).
MODEL_NAME = "model.pt"
OUTPUTS_NAME = "outputs.json"


def epoch_metrics(result: Any) -> dict[str, Any]:
    """What a trial reports to Tune after each epoch (`trainers.rfs.EpochResult`); the driver
    turns it into the epoch's `history` row (`epoch_history_row`)."""
    return {"epoch": result.epoch, "loss": result.loss, "train_acc": result.acc, "lr": result.lr,
            "epoch_seconds": result.seconds}


def train_and_evaluate(spec: TrialSpec, episode_lists: dict[int, tuple[str, Any]], work: Path, device: Any,
                       on_epoch: Any = None, data: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One trial, Tune-free: RFS pre-training (resuming from `work/CHECKPOINT_NAME` when it is
    there), few-shot evaluation on `episode_lists`, the model file (MODEL_NAME) and the rows
    (OUTPUTS_NAME, `trial_outputs`) written into `work`. `on_epoch(EpochResult)` is called after
    each epoch's checkpoint; `data`: the splits shared by the driver (`harness.shared_data`),
    else they are read from the dataset root. Returns the final metrics (epoch, loss,
    train_acc, done, acc_<K>shot)."""
    import torch

    from harness.shared_data import data_split_key, resolve_split
    from trainers.rfs import TrainConfig, pretrain

    split = resolve_split(data, data_split_key(spec.data, spec.data.train_split))
    in_channels = int(split.images.shape[1])
    model = seeded_network(spec, len(split.class_names), in_channels)
    train_cfg = TrainConfig(**{**spec.train, "lr_decay_epochs": tuple(spec.train["lr_decay_epochs"])})
    meta = {"genotype": spec.genotype, "channels": spec.network.init_channels, "cells": spec.network.cells,
            "num_classes": len(split.class_names), "in_channels": in_channels, "dataset": spec.data.name}
    result = pretrain(model, split, train_cfg, device=device, checkpoint_dir=work, on_epoch=on_epoch,
                      progress=False, metadata=meta)
    settings = eval_settings(spec, episode_lists)
    store.write_atomic(work / MODEL_NAME, lambda handle: _save_model(handle, model, spec, meta, settings))
    test_split = resolve_split(data, data_split_key(spec.data, spec.data.eval_split))
    summary, episode_rows = evaluate_trained(model, settings, test_split, device, episode_lists=episode_lists)
    outputs = trial_outputs(spec, result, summary, episode_rows, params=sum(p.numel() for p in model.parameters()),
                            device_kind=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    store.write_text_atomic(work / OUTPUTS_NAME, json.dumps(outputs, default=_json_number))
    return {"epoch": result.epochs_run, "loss": result.final_loss, "train_acc": result.final_train_acc,
            "done": True, **{store.accuracy_column(k): v[0] for k, v in summary.items()}}


def run_trial(config: dict[str, Any], specs: dict[str, dict[str, Any]],
              episode_lists: dict[int, tuple[str, Any]], data: dict[Any, Any] | None = None) -> None:
    """The Tune trainable: `train_and_evaluate` resuming from Tune's checkpoint, reporting each
    epoch with its checkpoint and the final metrics with the outputs.

    `config["trial"]` is the trial's label; `specs` maps labels to `TrialSpec.to_dict()` (a
    trial streamed as its search ended carries its own in `config["spec"]`), `episode_lists`
    is `load_episode_lists` and `data` the training and evaluation splits
    (`harness.shared_data.load_shared`; None: read from the dataset root), all bound with
    `tune.with_parameters`, so they travel through Ray's object store and stay out of Tune's
    printed configs.

    The trial writes nothing outside its own temporary folder (on a cluster it may
    run on a node that cannot see the driver's disk). The last report's checkpoint also holds
    the model file and the trial's rows (OUTPUTS_NAME), which the driver writes into the
    results folder (`harness.tune_callbacks.TrialRowsCallback`).
    """
    from ray import tune

    from harness.tune_callbacks import config_spec

    # Ray logs every persisted checkpoint at INFO (one line per epoch and trial, forwarded
    # to the driver's console); Tune's status table already shows the epochs.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    spec = TrialSpec.from_dict(config_spec(config, specs))
    work = Path(tempfile.mkdtemp(prefix=f"metantk-{spec.trial_id}-"))
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                shutil.copy2(Path(folder) / CHECKPOINT_NAME, work / CHECKPOINT_NAME)

        def on_epoch(result: Any) -> None:
            tune.report(epoch_metrics(result), checkpoint=tune.Checkpoint.from_directory(str(work)))

        final = train_and_evaluate(spec, episode_lists, work, _device(), on_epoch, data=data)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _json_number(value: Any) -> Any:
    """NumPy scalars in rows become plain numbers for `json.dumps` (NaN stays NaN: Python's
    JSON reads it back)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _save_model(handle: Any, model: Any, spec: TrialSpec, meta: dict[str, Any], settings: EvalSettings) -> None:
    import torch

    payload = {**meta, "model": model.state_dict(), "train_config": dict(spec.train),
               EVALUATION_KEY: settings.to_dict(), "trial_id": spec.trial_id}
    torch.save(payload, handle)


def model_file_path(results_dir: str | Path, trial_id: str) -> Path:
    """`RESULTS/models/<trial_id>.pt`."""
    return Path(results_dir) / MODEL_DIR / f"{trial_id}.pt"


def save_model_file(model: Any, spec: TrialSpec, meta: dict[str, Any], settings: EvalSettings) -> Path:
    """Write `RESULTS/models/<trial_id>.pt` atomically: the weights, the network's plain
    metadata (MODEL_KEYS), the training config and the evaluation settings, so the file alone
    rebuilds the network and reproduces the trial's evaluation (`harness.pipeline.evaluate_model_file`).
    Only tensors and plain values: it loads with `torch.load(weights_only=True)`."""
    path = model_file_path(spec.results_dir, spec.trial_id)
    store.write_atomic(path, lambda handle: _save_model(handle, model, spec, meta, settings))
    return path


def restored_history(checkpoint: Path) -> list[Any]:
    """The epochs recorded in a `pretrain` checkpoint (`EpochResult`s, oldest first)."""
    from trainers.rfs import EpochResult, read_checkpoint

    return [EpochResult(**h) for h in read_checkpoint(checkpoint)["history"]]


def history_rows(spec: TrialSpec, epochs: list[Any]) -> list[dict[str, Any]]:
    """Rows of the `history` table, one per `EpochResult` (epoch, loss, train_acc, lr, seconds)."""
    base = {"experiment": spec.experiment, "trial_id": spec.trial_id, "dataset": spec.data.name,
            "method": spec.method, "seed": spec.seed, "cells": spec.network.cells}
    return [{**base, "epoch": int(e.epoch), "loss": float(e.loss), "train_acc": float(e.acc), "lr": float(e.lr),
             "seconds": float(e.seconds)} for e in epochs]


def write_history_table(results_dir: str | Path, trial_id: str, rows: list[dict[str, Any]]) -> Path:
    """Write a trial's training curve as `history/<trial_id>.parquet` (replaced on every call,
    so a retried epoch overwrites its row and the file never holds duplicates)."""
    if len({r["epoch"] for r in rows}) != len(rows):
        raise ValueError(f"trial {trial_id}: duplicate epochs in its history {[r['epoch'] for r in rows]}")
    return store.write_rows(results_dir, "history", trial_id, sorted(rows, key=lambda r: r["epoch"]))


def write_history_rows(spec: TrialSpec, epochs: list[Any]) -> Path:
    """`write_history_table` of `spec`'s epochs (`EpochResult`s) into `spec.results_dir`."""
    return write_history_table(spec.results_dir, spec.trial_id, history_rows(spec, epochs))


def accuracy_row(shots: tuple[int, ...], summary: dict[int, tuple[float, float]]) -> dict[str, float]:
    """The accuracy columns of a row (`store.accuracy_columns(shots)`) from `summary`
    (shots -> (mean, interval half-width)); NaN for a shot count that was not evaluated."""
    nan = (math.nan, math.nan)
    return {column: value for k in store.normalized_shots(shots)
            for column, value in zip((store.accuracy_column(k), store.interval_column(k)), summary.get(k, nan))}


def trial_outputs(spec: TrialSpec, result: Any, summary: dict[int, tuple[float, float]],
                  episode_rows: list[dict[str, Any]], *, params: int, device_kind: str) -> dict[str, Any]:
    """A finished trial's rows, as plain data: {"trial_id", "history": [...], "trials": [row],
    "episodes": [...]} (tables `history`, `trials`, `episodes`), written home by the driver."""
    base = {"experiment": spec.experiment, "dataset": spec.data.name, "method": spec.method, "seed": spec.seed,
            "cells": spec.network.cells}
    trial_row = {
        **base, "trial_id": spec.trial_id, "search_id": spec.search_id, "genotype": spec.genotype, "params": params,
        "search_seconds": spec.search_seconds, "train_seconds": result.seconds, "epochs": result.epochs_run,
        "final_loss": result.final_loss, "final_train_acc": result.final_train_acc, "ways": spec.evaluate.ways,
        "episodes": spec.evaluate.episodes, **accuracy_row(spec.evaluate.shots, summary), "device_kind": device_kind,
        "config_json": json.dumps(spec.to_dict(), sort_keys=True, default=list),
        "git_sha": "",  # the driver's, stamped when it writes the row (`write_trial_outputs`)
    }
    return {"trial_id": spec.trial_id, "history": history_rows(spec, list(result.history)), "trials": [trial_row],
            "episodes": episode_table_rows(spec, episode_rows)}


def episode_table_rows(spec: TrialSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the `episodes` table: each of `rows` (ways, shots, queries, episode, accuracy)
    with the trial's keys."""
    base = {"experiment": spec.experiment, "dataset": spec.data.name, "method": spec.method, "seed": spec.seed,
            "cells": spec.network.cells, "trial_id": spec.trial_id}
    return [{**base, **r} for r in rows]


def write_trial_outputs(results_dir: str | Path, outputs: dict[str, Any], git_sha: str = "") -> None:
    """Write a finished trial's rows (`trial_outputs`) under its trial id, its `trials` row
    stamped with `git_sha` (the code the driver shipped): idempotent, a second call replaces
    the files. `trials` goes last: with `episodes` it marks the trial done."""
    trial_id = outputs["trial_id"]
    write_history_table(results_dir, trial_id, outputs["history"])
    store.write_rows(results_dir, "episodes", trial_id, outputs["episodes"])
    store.write_rows(results_dir, "trials", trial_id, [{**row, "git_sha": git_sha} for row in outputs["trials"]])


def collect_trial_outputs(results_dir: str | Path, checkpoint_dir: str | Path, git_sha: str = "") -> str | None:
    """Bring a finished trial home: copy the model file and write the rows held by its last
    checkpoint folder (`run_trial`) into `results_dir`. Returns the trial id, or None when the
    checkpoint is an epoch's (no outputs yet). Idempotent: files are replaced, never appended."""
    folder = Path(checkpoint_dir)
    if not (folder / OUTPUTS_NAME).is_file():
        return None
    outputs = json.loads((folder / OUTPUTS_NAME).read_text())
    # the model first: a trial counts as done by its rows, so the rows never point to a missing model
    store.write_bytes_atomic(model_file_path(results_dir, outputs["trial_id"]), (folder / MODEL_NAME).read_bytes())
    write_trial_outputs(results_dir, outputs, git_sha)
    return outputs["trial_id"]


def epoch_history_row(spec: TrialSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    """The `history` row of one epoch's reported metrics (`run_trial`'s `on_epoch`)."""
    from trainers.rfs import EpochResult

    epoch = EpochResult(epoch=int(metrics["epoch"]), loss=float(metrics["loss"]), acc=float(metrics["train_acc"]),
                        lr=float(metrics["lr"]), seconds=float(metrics["epoch_seconds"]))
    return history_rows(spec, [epoch])[0]


def record_epoch(results_dir: str | Path, spec: TrialSpec, metrics: dict[str, Any]) -> Path:
    """Merge one reported epoch into the trial's `history` file (the epoch replaces its row:
    a retried epoch never duplicates), so the curve so far is on the driver's disk while the
    trial trains; the finished trial's outputs then replace the file with every epoch."""
    import pandas as pd

    path = store.results_layout(results_dir).table("history") / f"{spec.trial_id}.parquet"
    rows = {int(r["epoch"]): r for r in pd.read_parquet(path).to_dict("records")} if path.is_file() else {}
    row = epoch_history_row(spec, metrics)
    rows[row["epoch"]] = row
    return write_history_table(results_dir, spec.trial_id, list(rows.values()))


def record_epoch_of(results_dir: str | Path, spec: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """`record_epoch` of a trial given as `TrialSpec.to_dict()` (as Tune's callback holds it)."""
    return record_epoch(results_dir, TrialSpec.from_dict(spec), metrics)


# Bumped when the trainable's config layout changes, so a Tune experiment written by older
# code is never restored into a trainable that cannot read its config.
_PARAM_LAYOUT = 5


def _specs_digest(specs: list[TrialSpec]) -> str:
    text = json.dumps([_PARAM_LAYOUT, [s.to_dict() for s in specs]], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def spec_digest(spec: TrialSpec) -> str:
    """The digest one trial is recorded with in `state/tune_experiments.json` (`harness.tune_records`)."""
    return _specs_digest([spec])


def run_trials(cfg: ExperimentConfig, specs: list[TrialSpec], *, verbose: int = 1) -> list[str]:
    """Run the missing trials under Tune; returns the trial ids that have rows afterwards.

    The Parquet tables decide what is done: unreadable `trials`/`episodes` files are set
    aside first, and a trial counts as done only with both its rows. Only the missing trials
    run (`harness.tune_records.tune_runs`): an interrupted Tune experiment is restored (its
    trials resume from their last epoch), the others run in a new experiment over them alone,
    so adding a seed never retrains a finished trial; if every trial already has its rows,
    Tune is not started at all. (Shot counts added after a trial ran are evaluated from its
    model file by the pipeline: `evaluate_added_shots`.)
    """

    report_set_aside(store.set_aside_unreadable(cfg.results_dir, ("trials", "episodes")))
    missing = missing_trials(cfg.results_dir, specs)
    if missing:
        _train_missing(cfg, specs, missing, verbose)
    return sorted(finished_trials(cfg.results_dir))


def _train_missing(cfg: ExperimentConfig, specs: list[TrialSpec], missing: set[str], verbose: int) -> None:
    from ray import tune

    from harness.tune_records import forget_tune_experiments, tune_runs

    ensure_episode_lists(cfg)
    storage, _ = tune_storage(cfg)
    labels = {trial_label(s): s.to_dict() for s in specs}
    if len(labels) != len(specs):
        raise ValueError(f"trial labels are not unique: {sorted(trial_label(s) for s in specs)}")
    trainable = trial_trainable(cfg, labels)
    started = time.perf_counter()

    def fit(name: str, ids: set[str]) -> None:
        grid = [label for label, d in labels.items() if d["trial_id"] in ids]
        fit_experiment(tune_experiment(cfg, trainable, labels, storage, name, verbose, grid=grid), cfg,
                       storage_join(storage, name), started)

    runs = tune_runs(cfg.results_dir, storage, specs, missing, _specs_digest)
    for name, ids, _ in runs:
        fit(name, set(ids) & missing)
    # Tune restores its experiments (interrupted trials resume from their last epoch). Its
    # bookkeeping may call a trial finished whose rows were deleted or set aside since: then
    # those experiment folders are moved aside and only the trials without rows run again.
    left = missing_trials(cfg.results_dir, specs)
    if left:
        stale = [name for name, ids, _ in runs
                 if set(ids) & left and tune.Tuner.can_restore(storage_join(storage, name))]
        for name in stale:
            _move_experiment(storage_join(storage, name), storage_join(storage, f"{name}.stale-{time.time_ns()}"))
        forget_tune_experiments(cfg.results_dir, stale)
        print(f"warning: Tune's record(s) {', '.join(stale)} called {len(left)} trial(s) finished that have no "
              f"rows ({', '.join(sorted(left)[:3])}); moved aside and running them again", file=sys.stderr)
        for name, ids, _ in tune_runs(cfg.results_dir, storage, specs, left, _specs_digest):
            fit(name, set(ids) & left)
        left = missing_trials(cfg.results_dir, specs)
        if left:  # a finished trainable always writes its rows: a programming error
            raise RuntimeError(f"trials {sorted(left)} finished without writing rows under {cfg.results_dir}")


def streamable_trials(cfg: ExperimentConfig, storage: str) -> set[str]:
    """Ids of the config's trials to stream: planned (every search's `training_runs`), without
    rows yet, and held by no recorded Tune experiment on `storage` (those are restored by
    `run_trials`)."""
    from harness.plans import plan_searches
    from harness.tune_records import recorded_trial_ids

    planned = {tid for p in plan_searches(cfg)
               for _, tid in training_runs(cfg, {"seed": p.seed, "search_id": p.search_id})}
    return planned - finished_trials(cfg.results_dir) - recorded_trial_ids(cfg.results_dir, storage)


def stream_trials(cfg: ExperimentConfig, search: Any, *, verbose: int = 1, release: Any = None
                  ) -> list[dict[str, Any]]:
    """Run the searches and stream each searched cell's missing trials into Tune as its search
    ends (`harness.trial_stream`: an experiment whenever trials arrive while none runs);
    returns the `searches` rows.

    `search(on_done, stop)` runs every search (`harness.search.run_searches` with `on_done`
    and `stop`; in a driver thread), calling `on_done(row)` as each one ends; `release()` runs
    as soon as the searches end (the scorer pool's shutdown). A trial is streamed only if it
    has no rows and no recorded Tune experiment holds it (`streamable_trials`); those held are
    restored afterwards by `run_trials` (`harness.pipeline.trial_stage`). Each streamed
    experiment is recorded trial by trial as Tune takes each, so an interrupted one is
    restored by the next run. Raises as `run_trials` (a trial that failed for good, once
    everything else is done; Ctrl-C) or as the searches (their error, once the trials already
    started have finished).
    """
    import queue

    from harness.specs import trial_spec
    from harness.trial_stream import FEED_END, SearchThread, TrialFeedSearcher, next_trials
    from harness.tune_records import record_trial

    report_set_aside(store.set_aside_unreadable(cfg.results_dir, ("trials", "episodes")))
    storage, _ = tune_storage(cfg)
    todo = streamable_trials(cfg, storage)
    feed: queue.Queue[Any] = queue.Queue()

    def on_done(row: dict[str, Any]) -> None:  # in the search thread
        for train_seed, trial_id in training_runs(cfg, row):
            if trial_id in todo:
                spec = trial_spec(cfg, row, train_seed, trial_id)
                feed.put({"trial": trial_label(spec), "spec": spec.to_dict()})

    trainable = None
    if todo:  # built before any search starts: a bad cluster or dataset fails first
        ensure_episode_lists(cfg)
        trainable = trial_trainable(cfg, {})
    searches = SearchThread(lambda stop: search(on_done, stop), feed, release)
    started = time.perf_counter()
    searches.start()
    failed: list[RuntimeError] = []  # trials that failed for good: raised once all is done
    try:
        given = 0
        while (first := next_trials(feed)) is not FEED_END:
            name = streamed_experiment_name(storage)

            def on_give(config: dict[str, Any], name: str = name) -> None:  # in Tune's loop
                spec = TrialSpec.from_dict(config["spec"])
                record_trial(cfg.results_dir, name, storage, spec.trial_id, spec_digest(spec))

            searcher = TrialFeedSearcher(feed, on_give, first=first)
            tuner = tune_experiment(cfg, trainable, {}, storage, name, verbose, searcher=searcher,
                                    num_samples=len(todo) - given)
            try:
                fit_experiment(tuner, cfg, storage_join(storage, name), started)
            except RuntimeError as exc:
                failed.append(exc)
            given += len(searcher.given)
        try:
            rows = searches.result()
        except Exception as exc:
            for error in failed:
                exc.add_note(f"a trial failed too: {error}")
            raise
        if failed:
            raise failed[0]
        return rows
    except BaseException as exc:  # Ctrl-C, a failed trial, a search error: the searches stop too
        searches.stop(exc)
        raise


def streamed_experiment_name(storage: str) -> str:
    """`trials-stream-<time>`, a new experiment's name on `storage` (never an old one's)."""
    from ray import tune

    name = f"trials-stream-{time.strftime('%Y%m%d-%H%M%S')}"
    if tune.Tuner.can_restore(storage_join(storage, name)):  # a second one within the second
        name = f"{name}-{time.time_ns()}"
    return name


def trial_trainable(cfg: ExperimentConfig, labels: dict[str, dict[str, Any]]) -> Any:
    """`run_trial` with its resources and bound data: `labels` (Tune label -> `TrialSpec.to_dict()`
    of the trials known now; a streamed trial carries its spec in its config instead), the
    experiment's episode lists and dataset splits. Ray is started or attached first."""
    from ray import tune

    from harness.ray_session import ensure_ray, trial_resources
    from harness.shared_data import load_shared, trial_data_keys
    from harness.specs import data_spec, evaluation_spec

    # On a cluster the caller has checked the nodes and the storage first
    # (`harness.pipeline.check_cluster_storage`).
    cluster = ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
    # The episode lists travel as data (object store), like the specs: trials read nothing
    # from the results folder.
    # So do the dataset splits (`harness.shared_data`): loaded once here, read zero-copy by
    # every trial on a node, and no node needs the dataset root.
    lists = stored_episode_lists(cfg.results_dir, data_spec(cfg), evaluation_spec(cfg))
    data = load_shared(trial_data_keys(cfg).values())
    return tune.with_resources(tune.with_parameters(run_trial, specs=labels, episode_lists=lists, data=data),
                               trial_resources(cluster, cfg.resources.trial_cpus, cfg.resources.trial_gpus))


def storage_join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def finished_trials(results_dir: Path) -> set[str]:
    """Trial ids with both their `trials` row and their `episodes` rows on disk."""
    def ids(table: str) -> set[str]:
        return set(store.read_table(results_dir, table)["trial_id"]) if store.table_files(results_dir, table) else set()

    return ids("trials") & ids("episodes")


def missing_trials(results_dir: Path, specs: list[TrialSpec]) -> set[str]:
    """Ids of `specs` whose rows are not (all) on disk: the work left to do."""
    return {s.trial_id for s in specs} - finished_trials(results_dir)


def tune_storage(cfg: ExperimentConfig) -> tuple[str, bool]:
    """(Tune's storage_path, whether `[resources] storage` set it): RESULTS_DIR/tune by default,
    else the configured folder (absolute) or pyarrow.fs URI (s3://..., gs://..., file://...)."""
    from harness.ray_session import is_uri

    storage = cfg.resources.storage
    if not storage:
        return str((cfg.results_dir / "tune").resolve()), False
    return (storage if is_uri(storage) else str(Path(storage).expanduser().resolve())), True


def _move_experiment(source: str, target: str) -> None:
    """Rename a Tune experiment folder on its storage (a local path or a pyarrow.fs URI)."""
    import pyarrow.fs

    from harness.ray_session import is_uri

    if not is_uri(source):
        Path(source).rename(target)
        return
    fs, src = pyarrow.fs.FileSystem.from_uri(source)
    _, dst = pyarrow.fs.FileSystem.from_uri(target)
    fs.move(src, dst)


def tune_experiment(cfg: ExperimentConfig, trainable: Any, labels: dict[str, dict[str, Any]], storage: str,
                    name: str, verbose: int, grid: list[str] | None = None, searcher: Any = None,
                    num_samples: int = 1) -> Any:
    """Restore Tune's experiment `storage/name`, or start one over the trial labels `grid`
    (default: all of `labels`, which map every label Tune may report to its spec), or, with
    `searcher` (`harness.trial_stream.TrialFeedSearcher`), over the `num_samples` trials it
    hands out as their searches end (each carries its spec in its config)."""
    from ray import tune

    from harness.provenance import code_version
    from harness.tune_callbacks import TrialRowsCallback

    path = f"{storage.rstrip('/')}/{name}"
    callbacks = [TrialRowsCallback(cfg.results_dir, labels, code_version(), record_epoch=record_epoch_of,
                                   collect_outputs=collect_trial_outputs)]
    if tune.Tuner.can_restore(str(path)):
        # Restoring takes the run config (callbacks included) from the stored experiment; this
        # run's callback, with this run's results folder, replaces the stored one (Ray 2.60's
        # `Tuner.restore` takes no run config).
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        tuner._local_tuner._run_config.callbacks = callbacks
        return tuner
    # The grid runs over short trial labels, so Tune's status table shows one short
    # `trial` column; the specs travel through `tune.with_parameters`.
    space = {} if searcher is not None else {"trial": tune.grid_search(list(labels) if grid is None else list(grid))}
    names = {}
    if searcher is not None:  # a streamed trial's config holds its whole spec: name it by its label
        from harness.trial_stream import streamed_trial_dirname, streamed_trial_name

        # Tune keeps one trial of a custom search algorithm pending at a time, unless a
        # concurrency limit is set: with one above every trial, all ready trials may wait for
        # resources at once (an autoscaler then sees them all), while nothing is limited.
        names = {"trial_name_creator": streamed_trial_name, "trial_dirname_creator": streamed_trial_dirname,
                 "max_concurrent_trials": max(1, num_samples)}
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=searcher, **names),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


@contextlib.contextmanager
def tune_signal_handlers_undone() -> Iterator[None]:
    """Put back the SIGINT and SIGUSR1 handlers after a Tune run (main thread only).

    Tune (Ray 2.60 `tune.run`) installs its own and puts the old ones back only when a signal
    arrives: after a finished run, the next Ctrl-C in the process (a streamed run waiting for
    its next trials, a second Tune experiment) went to the finished run and was lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, getattr(signal, "SIGUSR1", None)) if sig}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


def fit_experiment(tuner: Any, cfg: ExperimentConfig, path: str, started: float) -> None:
    """`tuner.fit()`; RuntimeError if a trial failed for good, KeyboardInterrupt if Tune stopped early.

    On Ctrl-C Tune saves its state and returns from `fit` as if it had finished; without
    the check the command would carry on (and take the unfinished trials for lost rows).
    """
    with tune_signal_handlers_undone():
        grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed after {cfg.resources.max_failures} retries "
                           f"({time.perf_counter() - started:.0f}s); first error: {errors[0]}; logs under {path}")
    if any(not (r.metrics or {}).get("done") for r in grid):
        raise KeyboardInterrupt("Tune stopped before every trial finished; rerun the same command to resume")


# ----------------------------------------------------------------------------- added shot counts


def added_evaluations(results_dir: Path, specs: list[Any], finished: set[str]) -> list[tuple[Any, int]]:
    """(spec, shots) of each shot count of a finished trial without episode rows: a shot count
    added to `[evaluate] shots` after the trial ran."""
    done = evaluations_on_disk(results_dir)
    return [(s, int(k)) for s in specs if s.trial_id in finished for k in s.evaluate.shots
            if evaluation_key(s.trial_id, k) not in done]


def added_evaluation_key(trial_id: str, shots: int) -> str:
    """The `episodes` file of a shot count evaluated after its trial: `<trial id>-<K>shot`
    (the trial's own file, `<trial id>`, is never rewritten)."""
    return f"{trial_id}-{int(shots)}shot"


def evaluate_added_shots(cfg: Any, specs: list[Any], device: Any = None) -> list[str]:
    """Evaluate each finished trial on the shot counts added since it ran (`added_evaluations`),
    from its model file, on the driver: no retraining, the trial's files untouched. Writes
    `episodes/<trial id>-<K>shot.parquet`; returns those keys."""
    from dataclasses import replace

    import torch

    todo = added_evaluations(cfg.results_dir, specs, finished_trials(cfg.results_dir))
    lost = sorted({s.trial_id for s, _ in todo if not model_file_path(cfg.results_dir, s.trial_id).is_file()})
    if lost:  # nothing to evaluate: say so and go on with the others
        print(f"warning: no model file for {len(lost)} finished trial(s) ({', '.join(lost[:3])}) in "
              f"{cfg.results_dir / 'models'}: their added shot counts are not evaluated; rerun with --fresh "
              f"to train them again", file=sys.stderr)
        todo = [(s, k) for s, k in todo if s.trial_id not in lost]
    if not todo:
        return []
    ensure_episode_lists(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lists = load_episode_lists(cfg.results_dir, todo[0][0])
    settings = eval_settings(todo[0][0], lists)
    split = settings.data().load(settings.split)
    print(f"evaluating {len(todo)} added shot count(s) of finished trials from their model files", file=sys.stderr)
    keys = []
    for spec, shots in todo:
        ckpt = read_model_file(model_file_path(cfg.results_dir, spec.trial_id))
        model = build_network(ckpt["genotype"], ckpt["channels"], ckpt["num_classes"], ckpt["cells"],
                              ckpt["in_channels"])
        model.load_state_dict(ckpt["model"])
        one = replace(eval_settings(spec, lists), shots=(shots,))
        _, rows = evaluate_trained(model, one, split, device, episode_lists=lists)
        key = added_evaluation_key(spec.trial_id, shots)
        store.write_rows(cfg.results_dir, "episodes", key, episode_table_rows(spec, rows))
        keys.append(key)
    return keys
