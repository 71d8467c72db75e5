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

Only `ray.tune.*` APIs are used inside the trainable (ray 2.60).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import store
from harness.config import ExperimentConfig, absolute_root
from harness.results_guard import report_set_aside

MODEL_DIR = "models"
EPISODE_DIR = "episode_lists"
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs, as plain values (it travels inside Tune's config)."""

    experiment: str
    results_dir: str         # absolute
    trial_id: str
    search_id: str
    dataset: str
    root: str
    dataset_options: dict
    image_size: int
    data_seed: int
    train_split: str
    eval_split: str
    method: str
    seed: int
    cells: int
    channels: int
    genotype: str
    search_seconds: float
    train: dict              # trainers.rfs.TrainConfig.to_dict()
    eval_ways: int
    eval_shots: tuple
    eval_queries: int
    eval_episodes: int
    eval_C: float
    support_augment: int
    fail_once_at_epoch: int = 0   # tests: raise once after this epoch (a crash to recover from)


def train_config_for(cfg: ExperimentConfig, seed: int) -> Any:
    """The RFS recipe of the dataset (or `[train] recipe`) with the config's overrides."""
    from trainers.rfs import get_recipe

    t = cfg.train
    recipe = get_recipe(t.recipe or cfg.dataset.name)
    changes: dict[str, Any] = {"seed": seed}
    if t.epochs:
        changes["epochs"] = t.epochs
        if not t.lr_decay_epochs:  # keep the recipe's decay points inside the shorter schedule
            changes["lr_decay_epochs"] = tuple(e for e in recipe.lr_decay_epochs if e < t.epochs)
    if t.lr_decay_epochs:
        changes["lr_decay_epochs"] = t.lr_decay_epochs
    if t.lr:
        changes["lr"] = t.lr
    if t.batch_size:
        changes["batch_size"] = t.batch_size
    if t.drop_path >= 0:
        changes["drop_path"] = t.drop_path
    return recipe.replace(**changes)


def episode_list_path(results_dir: Path, dataset: str, split: str, ways: int, shots: int, queries: int,
                      count: int, seed: int) -> Path:
    return Path(results_dir) / EPISODE_DIR / f"{dataset}-{split}-{ways}w{shots}s{queries}q-{count}e-seed{seed}.json"


def ensure_episode_lists(cfg: ExperimentConfig) -> list[Path]:
    """Sample (once) and store the evaluation episodes shared by every trial of the experiment.

    A stored list that cannot be read (damaged, edited) is moved to
    `unreadable/episode_lists/` and sampled again: the sampling is seeded, so the new list is
    the one every finished trial was evaluated on.
    """
    from trainers.data import load_split
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
                split = load_split(cfg.dataset.name, cfg.dataset.root or None, cfg.dataset.eval_split,
                                   image_size=cfg.dataset.image_size or None, seed=cfg.experiment.seed,
                                   **cfg.dataset.options)
            episodes = sample_episodes(split.labels, ways=e.ways, shots=shots, queries=e.queries, count=e.episodes,
                                       seed=cfg.experiment.seed * 1000 + shots)
            store.write_atomic(path, episodes.write)
        paths.append(path)
    return paths


def trial_specs(cfg: ExperimentConfig, searches: list[dict[str, Any]]) -> list[TrialSpec]:
    """One `TrialSpec` per searched genotype (rows of the `searches` table)."""
    specs = []
    for row in searches:
        specs.append(TrialSpec(
            experiment=cfg.experiment.name, results_dir=str(cfg.results_dir.resolve()), trial_id=row["search_id"],
            search_id=row["search_id"], dataset=cfg.dataset.name, root=absolute_root(cfg.dataset.root),
            dataset_options=dict(cfg.dataset.options), image_size=cfg.dataset.image_size,
            data_seed=cfg.experiment.seed, train_split=cfg.dataset.train_split, eval_split=cfg.dataset.eval_split,
            method=row["method"], seed=int(row["seed"]), cells=int(row["cells"]),
            channels=cfg.train.init_channels or cfg.search.init_channels, genotype=row["genotype"],
            search_seconds=float(row["device_seconds"]), train=train_config_for(cfg, int(row["seed"])).to_dict(),
            eval_ways=cfg.evaluate.ways, eval_shots=tuple(cfg.evaluate.shots), eval_queries=cfg.evaluate.queries,
            eval_episodes=cfg.evaluate.episodes, eval_C=cfg.evaluate.C, support_augment=cfg.evaluate.support_augment,
        ))
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

    from harness.scoring import derive_seed

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
        torch.manual_seed(derive_seed(spec.seed, spec.trial_id, "train-init"))
        return build_network(spec.genotype, spec.channels, n_classes, spec.cells, in_channels)


def evaluate_trained(model: Any, spec_like: Any, split: Any, device: Any, *, progress: bool = False
                     ) -> tuple[dict[int, tuple[float, float]], list[dict[str, Any]]]:
    """Few-shot accuracy per shot count on the stored episode lists; (summary, episode rows)."""
    from trainers.data import NORMALIZATION
    from trainers.episodes import EpisodeList
    from trainers.fewshot import evaluate_model, mean_confidence_interval

    summary, rows = {}, []
    for shots in spec_like.eval_shots:
        path = episode_list_path(Path(spec_like.results_dir), spec_like.dataset, spec_like.eval_split,
                                 spec_like.eval_ways, shots, spec_like.eval_queries, spec_like.eval_episodes,
                                 spec_like.data_seed)
        episodes = EpisodeList.load(path)
        accs = evaluate_model(model, split, episodes, device=device, normalization=NORMALIZATION[spec_like.dataset],
                              C=spec_like.eval_C, support_augment=spec_like.support_augment, progress=progress)
        mean, half = mean_confidence_interval(accs)
        summary[shots] = (float(mean), float(half))
        rows += [{"ways": spec_like.eval_ways, "shots": shots, "queries": spec_like.eval_queries, "episode": i,
                  "accuracy": float(a)} for i, a in enumerate(accs.tolist())]
    return summary, rows


MODEL_KEYS = ("genotype", "channels", "cells", "num_classes", "in_channels", "model")


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


def trial_label(spec: TrialSpec) -> str:
    """Short name of a trial for Tune's status table: the trial id without its dataset prefix
    (one experiment has one dataset), e.g. `metantk-s0-c3`."""
    prefix = f"{spec.dataset}-"
    return spec.trial_id[len(prefix):] if spec.trial_id.startswith(prefix) else spec.trial_id


def run_trial(config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """The Tune trainable: train (resuming from Tune's checkpoint), evaluate, write rows.

    `config["trial"]` is the trial's label; `specs` maps labels to `TrialSpec` fields
    (bound with `tune.with_parameters`, so they stay out of Tune's printed configs).
    """
    import torch
    from ray import tune

    from trainers.data import load_split
    from trainers.rfs import TrainConfig, pretrain

    # Ray logs every persisted checkpoint at INFO (one line per epoch and trial, forwarded
    # to the driver's console); Tune's status table already shows the epochs.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    spec = TrialSpec(**specs[config["trial"]])
    device = _device()
    split = load_split(spec.dataset, spec.root or None, spec.train_split, image_size=spec.image_size or None,
                       seed=spec.data_seed, **spec.dataset_options)
    in_channels = int(split.images.shape[1])
    model = seeded_network(spec, len(split.class_names), in_channels)
    train_cfg = TrainConfig(**{**spec.train, "lr_decay_epochs": tuple(spec.train["lr_decay_epochs"])})
    work = Path(tempfile.mkdtemp(prefix=f"metantk-{spec.trial_id}-"))
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                shutil.copy2(Path(folder) / CHECKPOINT_NAME, work / CHECKPOINT_NAME)
        marker = Path(spec.results_dir) / "state" / f"failed-once-{spec.trial_id}"

        def on_epoch(result: Any) -> None:
            # Report every epoch with its checkpoint (pretrain wrote it before calling us).
            tune.report({"epoch": result.epoch, "loss": result.loss, "train_acc": result.acc, "lr": result.lr},
                        checkpoint=tune.Checkpoint.from_directory(str(work)))
            if spec.fail_once_at_epoch == result.epoch and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("injected failure\n")
                raise RuntimeError(f"injected failure after epoch {result.epoch} (test)")

        meta = {"genotype": spec.genotype, "channels": spec.channels, "cells": spec.cells,
                "num_classes": len(split.class_names), "in_channels": in_channels, "dataset": spec.dataset}
        result = pretrain(model, split, train_cfg, device=device, checkpoint_dir=work, on_epoch=on_epoch,
                          progress=False, metadata=meta)
        model_path = Path(spec.results_dir) / MODEL_DIR / f"{spec.trial_id}.pt"
        payload = {**meta, "model": model.state_dict(), "train_config": spec.train}
        store.write_atomic(model_path, lambda handle: torch.save(payload, handle))

        test_split = load_split(spec.dataset, spec.root or None, spec.eval_split, image_size=spec.image_size or None,
                                seed=spec.data_seed, **spec.dataset_options)
        summary, episode_rows = evaluate_trained(model, spec, test_split, device)
        write_trial_rows(spec, result, summary, episode_rows, params=sum(p.numel() for p in model.parameters()),
                         device_kind=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
        final = {f"acc_{k}shot": v[0] for k, v in summary.items()}
        tune.report({"epoch": result.epochs_run, "loss": result.final_loss, "train_acc": result.final_train_acc,
                     "done": True, **final})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_trial_rows(spec: TrialSpec, result: Any, summary: dict[int, tuple[float, float]],
                     episode_rows: list[dict[str, Any]], *, params: int, device_kind: str) -> None:
    base = {"experiment": spec.experiment, "dataset": spec.dataset, "method": spec.method, "seed": spec.seed,
            "cells": spec.cells}
    nan = (math.nan, math.nan)
    store.write_rows(spec.results_dir, "episodes", spec.trial_id,
                     [{**base, "trial_id": spec.trial_id, **r} for r in episode_rows])
    store.write_rows(spec.results_dir, "trials", spec.trial_id, [{
        **base, "trial_id": spec.trial_id, "search_id": spec.search_id, "genotype": spec.genotype, "params": params,
        "search_seconds": spec.search_seconds, "train_seconds": result.seconds, "epochs": result.epochs_run,
        "final_loss": result.final_loss, "final_train_acc": result.final_train_acc, "ways": spec.eval_ways,
        "episodes": spec.eval_episodes, "acc_1shot": summary.get(1, nan)[0], "ci_1shot": summary.get(1, nan)[1],
        "acc_5shot": summary.get(5, nan)[0], "ci_5shot": summary.get(5, nan)[1], "device_kind": device_kind,
        "config_json": json.dumps(asdict(spec), sort_keys=True, default=list),
    }])


# Bumped when the trainable's config layout changes, so a Tune experiment written by older
# code is never restored into a trainable that cannot read its config.
_PARAM_LAYOUT = 4


def _specs_digest(specs: list[TrialSpec]) -> str:
    text = json.dumps([_PARAM_LAYOUT, [asdict(s) for s in specs]], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_trials(cfg: ExperimentConfig, specs: list[TrialSpec], *, verbose: int = 1) -> list[str]:
    """Run the missing trials under Tune; returns the trial ids that have rows afterwards.

    The Parquet tables decide what is done: unreadable `trials`/`episodes` files are set
    aside first, and a trial counts as done only with both its rows. A rerun with the same
    specs restores the Tune experiment (finished trials do no work); if every trial already
    has its rows, Tune is not started at all.
    """
    from ray import tune

    from harness.ray_session import ensure_ray, trial_resources

    report_set_aside(store.set_aside_unreadable(cfg.results_dir, ("trials", "episodes")))
    if not missing_trials(cfg.results_dir, specs):
        return sorted(finished_trials(cfg.results_dir))
    ensure_episode_lists(cfg)
    cluster = ensure_ray(cfg.resources.address, cfg.resources.num_cpus)
    labels = {trial_label(s): asdict(s) for s in specs}
    if len(labels) != len(specs):
        raise ValueError(f"trial labels are not unique: {sorted(trial_label(s) for s in specs)}")
    trainable = tune.with_resources(tune.with_parameters(run_trial, specs=labels),
                                    trial_resources(cluster, cfg.resources.trial_cpus))
    storage = (cfg.results_dir / "tune").resolve()
    name = f"trials-{_specs_digest(specs)}"
    path = storage / name
    started = time.perf_counter()
    # Tune restores its experiment (interrupted trials resume from their last epoch). Its
    # bookkeeping may call a trial finished whose rows were deleted or set aside since: then
    # that experiment folder is moved aside and only the trials without rows run again.
    _fit(_tuner(cfg, trainable, labels, storage, name, verbose), cfg, path, started)
    missing = missing_trials(cfg.results_dir, specs)
    if missing:
        stale = path.with_name(f"{name}.stale-{time.time_ns()}")
        path.rename(stale)
        print(f"warning: Tune's record {stale.name} called {len(missing)} trial(s) finished that have no rows "
              f"({', '.join(sorted(missing)[:3])}); moved it aside and running them again", file=sys.stderr)
        again = {label: d for label, d in labels.items() if d["trial_id"] in missing}
        _fit(_tuner(cfg, trainable, again, storage, name, verbose), cfg, path, started)
        missing = missing_trials(cfg.results_dir, specs)
        if missing:  # a finished trainable always writes its rows: a programming error
            raise RuntimeError(f"trials {sorted(missing)} finished without writing rows under {cfg.results_dir}")
    return sorted(finished_trials(cfg.results_dir))


def finished_trials(results_dir: Path) -> set[str]:
    """Trial ids with both their `trials` row and their `episodes` rows on disk."""
    def ids(table: str) -> set[str]:
        return set(store.read_table(results_dir, table)["trial_id"]) if store.table_files(results_dir, table) else set()

    return ids("trials") & ids("episodes")


def missing_trials(results_dir: Path, specs: list[TrialSpec]) -> set[str]:
    """Ids of `specs` whose rows are not (all) on disk: the work left to do."""
    return {s.trial_id for s in specs} - finished_trials(results_dir)


def _tuner(cfg: ExperimentConfig, trainable: Any, labels: dict[str, dict[str, Any]], storage: Path, name: str,
           verbose: int) -> Any:
    """Restore Tune's experiment `storage/name`, or start one over the trials `labels`."""
    from ray import tune

    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        # The grid runs over short trial labels, so Tune's status table shows one short
        # `trial` column; the specs travel through `tune.with_parameters`.
        param_space={"trial": tune.grid_search(list(labels))},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def _fit(tuner: Any, cfg: ExperimentConfig, path: Path, started: float) -> None:
    """`tuner.fit()`; RuntimeError if a trial failed for good, KeyboardInterrupt if Tune stopped early.

    On Ctrl-C Tune saves its state and returns from `fit` as if it had finished; without
    the check the command would carry on (and take the unfinished trials for lost rows).
    """
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed after {cfg.resources.max_failures} retries "
                           f"({time.perf_counter() - started:.0f}s); first error: {errors[0]}; logs under {path}")
    if any(not (r.metrics or {}).get("done") for r in grid):
        raise KeyboardInterrupt(f"Tune stopped before every trial finished; rerun the same command to resume")
