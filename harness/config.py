"""Experiment configuration: frozen dataclasses loaded from TOML and validated.

An experiment file (see `experiments/*.toml`) has the tables `[experiment]`, `[dataset]`,
`[search]`, `[train]`, `[evaluate]` and `[resources]`. Every key is checked: an unknown key, a
wrong type or an impossible value raises `ConfigError` naming the key, the file and the valid
choices, before any work starts. `resolve()` gives the fully defaulted config back as TOML text
so the exact settings are written next to the results.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints

from harness.errors import ConfigError

# Methods that prune the supernet with scores, and what each one measures (design section 5).
PRUNING_METHODS: dict[str, tuple[str, ...]] = {
    "metantk": ("cn_meta", "rn"),
    "tenas": ("cn_ntk", "rn"),
    "regions": ("rn",),
    "cn-only": ("cn_meta",),
}
# Methods that produce a genotype without scoring.
FIXED_METHODS: tuple[str, ...] = ("random", "metanas")
GENOTYPE_METHOD_PREFIX = "genotype:"  # e.g. "genotype:metanas_og_v2": any registry entry
DATASET_NAMES: tuple[str, ...] = ("synthetic", "omniglot", "mini_imagenet", "tiered_imagenet")


def absolute_root(root: str) -> str:
    """A dataset root resolved against the current directory ("" stays ""): the one spelling
    used wherever a root leaves the command's process (Tune trials run in their own working
    directory, actors may run on other nodes) or is hashed for a resume."""
    return str(Path(root).resolve()) if root else ""


def valid_methods() -> tuple[str, ...]:
    return (*PRUNING_METHODS, *FIXED_METHODS)


@dataclass(frozen=True)
class ExperimentSection:
    name: str
    seed: int = 0
    out: str = "results"


@dataclass(frozen=True)
class DatasetSection:
    name: str = "synthetic"
    root: str = ""
    image_size: int = 0          # 0: the dataset's native size
    train_split: str = "train"   # classes for search batches and pre-training
    eval_split: str = "test"     # held-out classes for few-shot evaluation
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSection:
    methods: tuple[str, ...] = ("metantk",)
    seeds: tuple[int, ...] = (0,)
    cells: tuple[int, ...] = (5,)
    init_channels: int = 48
    tasks: int = 3
    ways: int = 5
    shots: int = 1
    queries: int = 1
    kernel_image_size: int = 32
    inner_time: float = math.inf
    reg: float = 1e-3
    algorithm: str = "maml"          # maml | anil
    repeats: int = 3
    kernel_output: str = "sum"       # sum | full
    kernel_params: str = "weights"   # weights | all
    kernel_backend: str = "hooks"     # kernels.ntk.NTK_BACKENDS: hooks (fastest exact), func, opacus, loop
    norm: str = "group"              # group | batch(eval-mode only)
    kernel_normalization: str = "cifar"  # cifar (the reference's, any dataset) | dataset
    ntk_batch: str = "plain"         # tenas NTK: plain (reference: 30 images, base-class head) | tasks
    region_inputs: int = 1000
    region_batches: int = 3
    round_deltas: bool = False       # the reference rounds deltas to 3 decimals (adds ties)
    candidates_per_job: int = 8


@dataclass(frozen=True)
class TrainSection:
    recipe: str = ""                 # a trainers.rfs.RECIPES name; "" = the dataset's own
    epochs: int = 0                  # 0 = recipe value (same for the keys below)
    lr: float = 0.0
    batch_size: int = 0
    drop_path: float = -1.0
    lr_decay_epochs: tuple[int, ...] = ()
    init_channels: int = 0           # 0 = search.init_channels


@dataclass(frozen=True)
class EvaluateSection:
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 600
    C: float = 1.0
    support_augment: int = 0


@dataclass(frozen=True)
class ResourcesSection:
    workers: int = 0                 # 0 = one per GPU, else one per CPU
    gpus_per_worker: float = 1.0
    address: str = ""                # "" = start a local Ray; "auto" = attach to a cluster
    num_cpus: int = 0                # local Ray only; 0 = all cores
    max_failures: int = 2
    trial_cpus: float = 1.0


@dataclass(frozen=True)
class StudySection:
    """Proxy-quality study (issue 6): score every searched/sampled genotype at initialisation."""

    proxies: bool = False            # compute CN (MetaNTK MAML, ANIL; NTK) and regions per genotype
    repeats: int = 3                 # weight/batch redraws averaged per proxy
    anil_inner_time: float = math.inf
    anil_reg: float = 1e-3
    n_boot: int = 1000               # bootstrap resamples for the correlation intervals


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: ExperimentSection
    dataset: DatasetSection = DatasetSection()
    search: SearchSection = SearchSection()
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()
    resources: ResourcesSection = ResourcesSection()
    study: StudySection = StudySection()
    source: str = ""                 # the file it came from (for messages)

    @property
    def results_dir(self) -> Path:
        return Path(self.experiment.out) / self.experiment.name

    def replace(self, section: str, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


SECTIONS: dict[str, type] = {
    "experiment": ExperimentSection,
    "dataset": DatasetSection,
    "search": SearchSection,
    "train": TrainSection,
    "evaluate": EvaluateSection,
    "resources": ResourcesSection,
    "study": StudySection,
}

# Keys whose values come from a closed set: key -> valid choices.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("dataset", "name"): DATASET_NAMES,
    ("search", "algorithm"): ("maml", "anil"),
    ("search", "kernel_output"): ("sum", "full"),
    ("search", "kernel_params"): ("weights", "all"),
    ("search", "norm"): ("group", "batch"),
    ("search", "kernel_backend"): ("hooks", "func", "opacus", "loop"),
    ("search", "kernel_normalization"): ("cifar", "dataset"),
    ("search", "ntk_batch"): ("plain", "tasks"),
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check one TOML value against a dataclass type hint; return it in the hint's type."""
    origin = get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            value = [value]  # a scalar where a list is expected is a one-item list
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is Mapping[str, Any] or origin is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
            return math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number (or \"inf\"), got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # programming error


def _section(name: str, cls: type, raw: Any, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, got {raw!r}")
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"valid keys in [{name}]: {', '.join(known)}"
        )
    values = {k: _coerce(v, hints[k], f"{source}: {name}.{k}") for k, v in raw.items()}
    for (sec, key), choices in CHOICES.items():
        if sec == name and key in values and values[key] not in choices:
            raise ConfigError(
                f"{source}: {name}.{key} = {values[key]!r} is not valid; choose one of {', '.join(choices)}"
            )
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{source}: [{name}] is incomplete: {exc}") from None


def _positive(cfg: ExperimentConfig) -> None:
    """Cross-field and range checks, each naming the key."""
    src = cfg.source
    s = cfg.search

    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{src}: {key} {what}")

    name = cfg.experiment.name
    need(bool(name) and all(c.isalnum() or c in "-_." for c in name), "experiment.name",
         f"= {name!r} must be a non-empty file-name-safe word (letters, digits, - _ .)")
    for m in s.methods:
        if m.startswith(GENOTYPE_METHOD_PREFIX):
            continue
        need(m in valid_methods(), "search.methods",
             f"contains unknown method {m!r}; valid: {', '.join(valid_methods())}, or 'genotype:NAME'")
    need(len(s.methods) > 0 and len(set(s.methods)) == len(s.methods), "search.methods",
         "must list at least one method, each once")
    need(len(s.seeds) > 0 and len(set(s.seeds)) == len(s.seeds), "search.seeds", "must list distinct seeds")
    need(all(c >= 2 for c in s.cells), "search.cells", f"= {list(s.cells)}: every cell count must be >= 2")
    for key in ("init_channels", "tasks", "ways", "shots", "queries", "kernel_image_size", "repeats",
                "region_inputs", "region_batches", "candidates_per_job"):
        need(getattr(s, key) >= 1, f"search.{key}", f"= {getattr(s, key)} must be >= 1")
    need(s.kernel_image_size >= 8, "search.kernel_image_size", "must be >= 8 (two reductions)")
    need(s.inner_time >= 0, "search.inner_time", f"= {s.inner_time} must be >= 0 (or \"inf\")")
    need(s.reg >= 0 and math.isfinite(s.reg), "search.reg", f"= {s.reg} must be a finite number >= 0")
    need(s.ways >= 2, "search.ways", "must be >= 2")
    e = cfg.evaluate
    need(e.ways >= 2, "evaluate.ways", f"= {e.ways} must be >= 2")
    need(len(e.shots) > 0 and all(k >= 1 for k in e.shots), "evaluate.shots", "must list shot counts >= 1")
    need(e.queries >= 1 and e.episodes >= 1, "evaluate.queries/episodes", "must be >= 1")
    need(e.C > 0, "evaluate.C", "must be > 0")
    r = cfg.resources
    need(r.workers >= 0 and r.num_cpus >= 0, "resources.workers/num_cpus", "must be >= 0")
    need(r.gpus_per_worker > 0, "resources.gpus_per_worker", "must be > 0")
    need(r.max_failures >= 0, "resources.max_failures", "must be >= 0")
    need(cfg.study.repeats >= 1 and cfg.study.n_boot >= 1, "study.repeats/n_boot", "must be >= 1")
    t = cfg.train
    need(t.epochs >= 0 and t.lr >= 0 and t.batch_size >= 0 and t.init_channels >= 0, "train.*",
         "epochs, lr, batch_size and init_channels must be >= 0 (0 = recipe default)")


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Build and validate an `ExperimentConfig` from parsed TOML `data`."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown table(s) {', '.join(f'[{u}]' for u in unknown)}; "
            f"valid tables: {', '.join(f'[{s}]' for s in SECTIONS)}"
        )
    if "experiment" not in data or "name" not in data.get("experiment", {}):
        raise ConfigError(f"{source}: missing experiment.name (add [experiment] name = \"...\")")
    parts = {name: _section(name, cls, data.get(name, {}), source) for name, cls in SECTIONS.items()}
    cfg = ExperimentConfig(**parts, source=source)
    _positive(cfg)
    return cfg


def load_config(path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> ExperimentConfig:
    """Read an experiment TOML file; `overrides` = {section: {key: value}} from the CLI."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} not found; the shipped ones are in experiments/*.toml")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, changes in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in changes.items() if v is not None})
    return parse_config(data, source=str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return '"inf"' if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML text; `parse_config(tomllib.loads(text))` gives it back."""
    lines = [f"# resolved from {cfg.source}"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        section = getattr(cfg, name)
        for f in fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def as_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}
