"""Config-shaped specs: what one search's scorer and one trial need, built from the validated
config in one place.

A spec is a composition of small frozen sub-specs, one per concern, each a slice of one
config table under the same key names (a setting keeps its name from the TOML key to the
Parquet column and the trial's `config_json`):

- `DataSpec`: `[dataset]` (root made absolute) and the experiment `seed` that fixes the class
  split and the synthetic images; `load(split)` is the one way a split is loaded;
- `NetworkSpec`: `cells` and `init_channels` (`[train] init_channels` for a trained network);
- `KernelSpec`: the `[search]` keys of the kernel batch and the MetaNTK / NTK (`algorithm`,
  `inner_time`, `reg` of the search's cell count);
- `RegionSpec`: the `[search]` keys of the linear-region count;
- `EvaluationSpec`: `[evaluate]`;
- the training recipe: `trainers.rfs.TrainConfig` (`train_config_for`), carried as a dict.

`ScoreSpec` (data, network, kernel, regions) fixes the networks and batches of a search;
`TrialSpec` (ids, data, network, train, evaluate) is everything a trial needs as plain values.
Specs are plain data: a TrialSpec travels through Tune as `to_dict()` and comes back with
`TrialSpec.from_dict`. This module imports nothing of the harness (the config imports it):
it sits on the ground floor of the harness's imports.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # the config imports this module; it is read here, never imported at run time
    from harness.config import ExperimentConfig  # noqa: F401


def absolute_root(root: str) -> str:
    """A dataset root resolved against the current directory ("" stays ""): the one spelling
    used wherever a root leaves the command's process (Tune trials run in their own working
    directory, actors may run on other nodes) or is hashed for a resume."""
    return str(Path(root).resolve()) if root else ""


def train_config_for(cfg: "ExperimentConfig", seed: int) -> Any:
    """The RFS recipe (`trainers.rfs.TrainConfig`) of the dataset (or `[train] recipe`) with the
    config's overrides and the training seed `seed`."""
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


def freeze(value: Any) -> Any:
    """Lists become tuples and tables sorted (key, value) tuples, recursively, so a spec stays
    hashable (actors cache scorers by spec) and compares equal after a JSON round trip."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True)
class DataSpec:
    """`[dataset]` with an absolute root, and the experiment seed of the class split."""

    name: str
    root: str                                 # absolute ("" = the dataset's default)
    image_size: int                           # 0 = the dataset's native size
    train_split: str
    eval_split: str
    options: tuple[tuple[str, Any], ...]      # [dataset] options, frozen (`freeze`)
    seed: int                                 # [experiment] seed: class split, synthetic images

    def load(self, split: str) -> Any:
        """The `trainers.data.ImageSplit` named `split` (e.g. `self.train_split`)."""
        from trainers.data import load_split

        return load_split(self.name, self.root or None, split, image_size=self.image_size or None,
                          seed=self.seed, **dict(self.options))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataSpec":
        return cls(**{**data, "options": freeze(dict(data["options"]))})


@dataclass(frozen=True)
class NetworkSpec:
    """The macro network: cell count and initial channels."""

    cells: int
    init_channels: int


@dataclass(frozen=True)
class KernelSpec:
    """The `[search]` settings of the kernel batch and the MetaNTK / NTK of one search."""

    tasks: int
    ways: int
    shots: int
    queries: int
    kernel_image_size: int
    algorithm: str                            # maml | anil (of the search's cell count)
    inner_time: float
    reg: float
    kernel_output: str
    kernel_params: str
    kernel_backend: str
    norm: str
    kernel_normalization: str                 # trainers.episodes.KERNEL_NORMALIZATIONS
    ntk_batch: str                            # plain NTK: "plain" (reference) | "tasks"
    # Overrides of kernels.proxies.ProxySettings fields (name, value), for "proxy:" measures.
    proxy_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RegionSpec:
    """The `[search]` settings of the linear-region count."""

    region_inputs: int
    region_batches: int


@dataclass(frozen=True)
class EvaluationSpec:
    """`[evaluate]`: N-way K-shot Q-query episodes, logistic regression's C, support augmentation."""

    ways: int
    shots: tuple[int, ...]
    queries: int
    episodes: int
    C: float
    support_augment: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationSpec":
        return cls(**{**data, "shots": tuple(int(k) for k in data["shots"])})


@dataclass(frozen=True)
class ScoreSpec:
    """Everything that fixes the networks and data of a search (not the masks or the key)."""

    data: DataSpec
    network: NetworkSpec
    kernel: KernelSpec
    regions: RegionSpec

    @property
    def model_key(self) -> tuple:
        """What fixes the scorer's networks and split (the rest only changes batches and kernels)."""
        return (self.data, self.network, self.kernel.ways, self.kernel.norm, self.kernel.ntk_batch)

    def with_kernel(self, **changes: Any) -> "ScoreSpec":
        """This spec with some `KernelSpec` fields changed."""
        return dataclasses.replace(self, kernel=dataclasses.replace(self.kernel, **changes))

    def flat_fields(self) -> tuple:
        """The values in the field order of the flat spec this one replaced (dataset, root,
        split, dataset_options, image_size, seed, cells, init_channels, tasks, ..., ntk_batch):
        digests of stored proxy scores are taken over it, so they stay valid."""
        d, n, k, r = self.data, self.network, self.kernel, self.regions
        return (d.name, d.root, d.train_split, d.options, d.image_size, d.seed, n.cells, n.init_channels,
                k.tasks, k.ways, k.shots, k.queries, k.kernel_image_size, k.algorithm, k.inner_time, k.reg,
                k.kernel_output, k.kernel_params, k.kernel_backend, k.norm, r.region_inputs, r.region_batches,
                k.proxy_options, k.kernel_normalization, k.ntk_batch)


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs, as plain values (it travels inside Tune's config)."""

    experiment: str
    results_dir: str         # absolute
    trial_id: str
    search_id: str
    method: str
    seed: int                # the search's seed (the training recipe's seed is `train["seed"]`)
    genotype: str
    search_seconds: float
    data: DataSpec
    network: NetworkSpec
    train: dict              # trainers.rfs.TrainConfig.to_dict()
    evaluate: EvaluationSpec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_evaluate(self, **changes: Any) -> "TrialSpec":
        """This spec with some `EvaluationSpec` fields changed."""
        return dataclasses.replace(self, evaluate=dataclasses.replace(self.evaluate, **changes))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialSpec":
        """Inverse of `to_dict` (also after a JSON round trip)."""
        return cls(**{**data, "data": DataSpec.from_dict(data["data"]),
                      "network": NetworkSpec(**data["network"]),
                      "evaluate": EvaluationSpec.from_dict(data["evaluate"])})


# ----------------------------------------------------------------------------- from the config


def data_spec(cfg: ExperimentConfig) -> DataSpec:
    d = cfg.dataset
    return DataSpec(name=d.name, root=absolute_root(d.root), image_size=d.image_size, train_split=d.train_split,
                    eval_split=d.eval_split, options=freeze(dict(d.options)), seed=cfg.experiment.seed)


def proxy_options(cfg: ExperimentConfig) -> tuple[tuple[str, Any], ...]:
    """ProxySettings overrides of a config: the MAML MetaNTK proxies use [search] inner_time
    and reg, the ANIL ones [study] anil_inner_time and anil_reg (as the proxy study)."""
    return (("anil_inner_time", cfg.study.anil_inner_time), ("anil_reg", cfg.study.anil_reg),
            ("maml_inner_time", cfg.search.inner_time), ("maml_reg", cfg.search.reg))


def kernel_spec(cfg: ExperimentConfig, cells: int) -> KernelSpec:
    s = cfg.search
    k = s.kernel_for(cells)  # per-cell-count kernel settings (search.kernel_by_cells)
    return KernelSpec(tasks=s.tasks, ways=s.ways, shots=s.shots, queries=s.queries,
                      kernel_image_size=s.kernel_image_size, algorithm=k.algorithm, inner_time=k.inner_time,
                      reg=k.reg, kernel_output=s.kernel_output, kernel_params=s.kernel_params,
                      kernel_backend=s.kernel_backend, norm=s.norm, kernel_normalization=s.kernel_normalization,
                      ntk_batch=s.ntk_batch, proxy_options=proxy_options(cfg))


def spec_from_config(cfg: ExperimentConfig, cells: int) -> ScoreSpec:
    """The `ScoreSpec` of the searches with `cells` cells."""
    return ScoreSpec(data=data_spec(cfg), network=NetworkSpec(cells, cfg.search.init_channels),
                     kernel=kernel_spec(cfg, cells),
                     regions=RegionSpec(cfg.search.region_inputs, cfg.search.region_batches))


def evaluation_spec(cfg: ExperimentConfig) -> EvaluationSpec:
    e = cfg.evaluate
    return EvaluationSpec(ways=e.ways, shots=tuple(e.shots), queries=e.queries, episodes=e.episodes, C=e.C,
                          support_augment=e.support_augment)


def trial_spec(cfg: ExperimentConfig, row: Mapping[str, Any], train_seed: int, trial_id: str) -> TrialSpec:
    """The trial of one `searches` row trained with recipe seed `train_seed`."""
    cells = int(row["cells"])
    return TrialSpec(
        experiment=cfg.experiment.name, results_dir=str(cfg.results_dir.resolve()), trial_id=trial_id,
        search_id=row["search_id"], method=row["method"], seed=int(row["seed"]), genotype=row["genotype"],
        search_seconds=float(row["device_seconds"]), data=data_spec(cfg),
        network=NetworkSpec(cells, cfg.train.init_channels or cfg.search.init_channels),
        train=train_config_for(cfg, train_seed).to_dict(), evaluate=evaluation_spec(cfg))
