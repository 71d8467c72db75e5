"""Experiment configuration: frozen dataclasses loaded from TOML and validated.

An experiment file (see `experiments/*.toml`) has the tables `[experiment]`, `[dataset]`,
`[search]`, `[train]`, `[evaluate]` and `[resources]`. Every key is checked: an unknown key, a
wrong type or an impossible value raises `ConfigError` naming the key, the file and the valid
choices, before any work starts. `to_toml()` gives the fully defaulted config back as TOML
text so the exact settings are written next to the results.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from collections import abc
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence, get_args, get_origin, get_type_hints

from harness.errors import ConfigError
from harness.methods import (FIXED_METHODS, GENOTYPE_METHOD_PREFIX, METHOD_ORDER, PAPER_PRUNING_METHODS,  # noqa: F401
                             PROXY_MEASURE_PREFIX, PROXY_WITH_REGIONS, PRUNING_METHODS, valid_methods)
from harness.ranking import RANKING_MODES
from harness.specs import absolute_root, train_config_for  # noqa: F401  (the spec side of the config)
from kernels.proxy_names import PROXY_NAMES

DATASET_NAMES: tuple[str, ...] = ("synthetic", "omniglot", "mini_imagenet", "tiered_imagenet")


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
class KernelSettings:
    """The MetaNTK of one search: inner-loop algorithm, inner time t (lr x steps), regulariser c."""

    algorithm: str = "maml"          # maml | anil
    inner_time: float = math.inf
    reg: float = 1e-3


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
    kernel_backend: str = "hooks"     # kernels.ntk.NTK_BACKENDS: hooks (fastest exact), ghost, func, opacus, loop
    norm: str = "group"              # group | batch(eval-mode only)
    kernel_normalization: str = "cifar"  # cifar (the reference's, any dataset) | dataset
    ntk_batch: str = "plain"         # tenas NTK: plain (reference: 30 images, base-class head) | tasks
    region_inputs: int = 1000
    region_batches: int = 3
    # "exact" (exact mean deltas and ranks) | "reference" (the paper's code: 3-decimal deltas,
    # 3-significant-figure sort, ties, its op order); harness.ranking.RANKING_MODES.
    ranking: str = "exact"
    candidates_per_job: int = 8
    # Kernel settings per cell count, overriding algorithm / inner_time / reg above for the
    # searches with that many cells: [search.kernel_by_cells.8] algorithm = "anil" ...
    # Resolved at load time to {cells: KernelSettings} (every key filled in).
    kernel_by_cells: Mapping[int, Any] = field(default_factory=dict)

    def kernel_for(self, cells: int) -> KernelSettings:
        """The kernel settings of the searches with `cells` cells."""
        default = KernelSettings(self.algorithm, self.inner_time, self.reg)
        return self.kernel_by_cells.get(cells, default)


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
    # GPUs of one trial (used when the cluster has GPUs; 0 = CPU only): a fraction packs several
    # small trials on one GPU (0.25: four). `gpus_per_worker` is the scorers' share, likewise.
    trial_gpus: float = 1.0
    # Tune's storage_path: "" = RESULTS_DIR/tune, fine on one machine; on a cluster a
    # folder every node mounts at the same path, or a pyarrow.fs URI (s3://..., gs://..., file://...).
    storage: str = ""
    # Candidates scored per forward/backward by each scorer (0 = 16 on a GPU, 1 on a CPU).
    # Batching also pays on a CPU for tiny supernets (test and smoke scale), where the
    # per-op overhead dominates; scores agree to float rounding, not bit for bit.
    candidate_batch: int = 0


@dataclass(frozen=True)
class StudySection:
    """Proxy-quality study: score every searched/sampled genotype at initialisation."""

    proxies: bool = False            # compute CN (MetaNTK MAML, ANIL; NTK) and regions per genotype
    repeats: int = 3                 # weight/batch redraws averaged per proxy
    anil_inner_time: float = math.inf
    anil_reg: float = 1e-3
    n_boot: int = 1000               # bootstrap resamples for the correlation intervals
    # Proxies of kernels.proxies scored besides the four columns above (same
    # weights, batch and repeats), and training seeds per genotype (() = one training with
    # the search seed, trial id = search id; else one trial "<search id>-t<seed>" per seed).
    zero_cost: tuple[str, ...] = ()
    train_seeds: tuple[int, ...] = ()


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
    sets: tuple[str, ...] = ()       # the command line's --set KEY=VALUE overrides (provenance)

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
    ("search", "kernel_backend"): ("hooks", "ghost", "func", "opacus", "loop"),
    ("search", "ranking"): tuple(RANKING_MODES),
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
    if hint is Mapping[str, Any] or origin is Mapping or origin is abc.Mapping:
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


def _require(cfg: ExperimentConfig, cond: bool, key: str, what: str) -> None:
    """ConfigError "<file>: <key> <what>" unless `cond`."""
    if not cond:
        raise ConfigError(f"{cfg.source}: {key} {what}")


def check_experiment(cfg: ExperimentConfig) -> None:
    """[experiment] name is a plain folder name."""
    problem = plain_name_problem(cfg.experiment.name)
    _require(cfg, problem is None, "experiment.name", f"= {cfg.experiment.name!r} {problem}")


def check_search(cfg: ExperimentConfig) -> None:
    """[search]: known methods, each once; distinct seeds; cell counts, sizes and the kernel's
    inner time and regulariser in range."""
    s = cfg.search
    for m in s.methods:
        if m.startswith(GENOTYPE_METHOD_PREFIX):
            continue
        _require(cfg, m in valid_methods(), "search.methods",
                 f"contains unknown method {m!r}; valid: {', '.join(valid_methods())}, or 'genotype:NAME'")
    _require(cfg, len(s.methods) > 0 and len(set(s.methods)) == len(s.methods), "search.methods",
             "must list at least one method, each once")
    _require(cfg, len(s.seeds) > 0 and len(set(s.seeds)) == len(s.seeds), "search.seeds", "must list distinct seeds")
    _require(cfg, all(c >= 2 for c in s.cells), "search.cells", f"= {list(s.cells)}: every cell count must be >= 2")
    for key in ("init_channels", "tasks", "ways", "shots", "queries", "kernel_image_size", "repeats",
                "region_inputs", "region_batches", "candidates_per_job"):
        _require(cfg, getattr(s, key) >= 1, f"search.{key}", f"= {getattr(s, key)} must be >= 1")
    _require(cfg, s.kernel_image_size >= 8, "search.kernel_image_size", "must be >= 8 (two reductions)")
    _require(cfg, s.inner_time >= 0, "search.inner_time", f"= {s.inner_time} must be >= 0 (or \"inf\")")
    _require(cfg, s.reg >= 0 and math.isfinite(s.reg), "search.reg", f"= {s.reg} must be a finite number >= 0")
    _require(cfg, s.ways >= 2, "search.ways", "must be >= 2")


def check_evaluate(cfg: ExperimentConfig) -> None:
    """[evaluate]: episode shapes and the logistic regression's C."""
    e = cfg.evaluate
    _require(cfg, e.ways >= 2, "evaluate.ways", f"= {e.ways} must be >= 2")
    _require(cfg, len(e.shots) > 0 and all(k >= 1 for k in e.shots), "evaluate.shots", "must list shot counts >= 1")
    _require(cfg, e.queries >= 1 and e.episodes >= 1, "evaluate.queries/episodes", "must be >= 1")
    _require(cfg, e.C > 0, "evaluate.C", "must be > 0")


def check_resources(cfg: ExperimentConfig) -> None:
    """[resources]: worker and CPU counts, GPU shares Ray accepts, retries."""
    r = cfg.resources
    _require(cfg, r.workers >= 0 and r.num_cpus >= 0, "resources.workers/num_cpus", "must be >= 0")
    _require(cfg, r.gpus_per_worker > 0, "resources.gpus_per_worker", "must be > 0")
    for key in ("gpus_per_worker", "trial_gpus"):
        # Ray refuses a fractional request above one GPU ("1.5 GPUs"), only when the work starts
        value = getattr(r, key)
        _require(cfg, value <= 1 or float(value).is_integer(), f"resources.{key}",
                 f"= {value:g} must be a fraction of one GPU (<= 1) or a whole number of GPUs")
    _require(cfg, r.max_failures >= 0, "resources.max_failures", "must be >= 0")


def check_study(cfg: ExperimentConfig) -> None:
    """[study]: repeats and resamples, known zero-cost proxies (each once, with proxies on),
    distinct training seeds."""
    st = cfg.study
    _require(cfg, st.repeats >= 1 and st.n_boot >= 1, "study.repeats/n_boot", "must be >= 1")
    for p in st.zero_cost:
        _require(cfg, p in PROXY_NAMES, "study.zero_cost",
                 f"contains unknown proxy {p!r}; valid: {', '.join(PROXY_NAMES)}")
    _require(cfg, len(set(st.zero_cost)) == len(st.zero_cost), "study.zero_cost", "must list each proxy once")
    _require(cfg, not st.zero_cost or st.proxies, "study.zero_cost",
             "needs [study] proxies = true (they are scored with them)")
    _require(cfg, len(set(st.train_seeds)) == len(st.train_seeds), "study.train_seeds", "must list distinct seeds")


def check_train(cfg: ExperimentConfig) -> None:
    """[train]: overrides are >= 0 (0 = the recipe's value)."""
    t = cfg.train
    _require(cfg, t.epochs >= 0 and t.lr >= 0 and t.batch_size >= 0 and t.init_channels >= 0, "train.*",
             "epochs, lr, batch_size and init_channels must be >= 0 (0 = recipe default)")


# The value and cross-field checks of a parsed config, one per table, in this order (the
# first problem found is reported). Range bounds: `check_bounds`; what the trainer and the
# scorers would refuse later: `_refuse_late_failures`.
CHECKS = (check_experiment, check_search, check_evaluate, check_resources, check_study, check_train)


# ----------------------------------------------------------------------------- names and bounds
# of hostile input (names, sizes, paths). Kept apart from CHECKS so other checks merge cleanly.

_NAME_MAX = 100


def plain_name_problem(name: str) -> str | None:
    """Why `name` cannot be an experiment name (a folder under the results root), or None.

    A plain name: 1-100 letters, digits, '-', '_', '.', not starting with '.' (so never '.',
    '..' or a hidden folder) and without any separator, so `out / name` never leaves `out`.
    """
    if not name:
        return "must not be empty"
    if len(name) > _NAME_MAX:
        return f"is {len(name)} characters long; use at most {_NAME_MAX}"
    if name.startswith("."):
        return "must not start with '.' ('.', '..' and hidden names would leave or hide in the results root)"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "-_."))})
    if bad:
        return f"must be a plain name of letters, digits, '-', '_', '.' (found {''.join(bad)!r})"
    return None


_SEED_MAX = 2**32 - 1
# (section, key) -> (lowest, highest) allowed value; a list value is checked item by item.
# The upper bounds are far above any sensible setting: they turn a typo (an extra zero or
# five) into one line at load time instead of an allocation failure after hours of work.
# NaN fails every comparison, so it is refused by the same check.
BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("experiment", "seed"): (0, _SEED_MAX),
    ("dataset", "image_size"): (0, 1024),
    ("search", "seeds"): (0, _SEED_MAX),
    ("search", "cells"): (2, 32),
    ("search", "init_channels"): (1, 4096),
    ("search", "tasks"): (1, 1024),
    ("search", "ways"): (2, 1000),
    ("search", "shots"): (1, 1000),
    ("search", "queries"): (1, 1000),
    ("search", "kernel_image_size"): (8, 1024),
    ("search", "inner_time"): (0, math.inf),
    ("search", "reg"): (0, 1e6),
    ("search", "repeats"): (1, 1000),
    ("search", "region_inputs"): (1, 10**7),
    ("search", "region_batches"): (1, 1000),
    ("search", "candidates_per_job"): (1, 10**4),
    ("train", "epochs"): (0, 10**4),
    ("train", "lr"): (0, 100),
    ("train", "batch_size"): (0, 65536),
    ("train", "drop_path"): (-1, 1),
    ("train", "lr_decay_epochs"): (1, 10**4),
    ("train", "init_channels"): (0, 4096),
    ("evaluate", "ways"): (2, 1000),
    ("evaluate", "shots"): (1, 1000),
    ("evaluate", "queries"): (1, 10**4),
    ("evaluate", "episodes"): (1, 10**6),
    ("evaluate", "C"): (1e-12, 1e12),
    ("evaluate", "support_augment"): (0, 1000),
    ("resources", "workers"): (0, 10**4),
    ("resources", "gpus_per_worker"): (1e-3, 64),
    ("resources", "num_cpus"): (0, 10**5),
    ("resources", "max_failures"): (0, 1000),
    ("resources", "trial_cpus"): (1e-3, 1024),
    ("resources", "trial_gpus"): (0, 64),
    ("study", "repeats"): (1, 1000),
    ("study", "anil_inner_time"): (0, math.inf),
    ("study", "anil_reg"): (0, 1e6),
    ("study", "n_boot"): (1, 10**6),
}


def check_bounds(cfg: ExperimentConfig) -> None:
    """Every numeric key inside its `BOUNDS` range (NaN never is); ConfigError naming the key."""
    for (section, key), (lo, hi) in BOUNDS.items():
        value = getattr(getattr(cfg, section), key)
        for v in value if isinstance(value, tuple) else (value,):
            if not lo <= v <= hi:
                raise ConfigError(f"{cfg.source}: {section}.{key} = {v!r} is outside [{lo:g}, {hi:g}]; "
                                  f"set a value in that range")


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Build and validate an `ExperimentConfig` from parsed TOML `data`."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown table(s) {', '.join(f'[{u}]' for u in unknown)}; "
            f"valid tables: {', '.join(f'[{s}]' for s in SECTIONS)}"
        )
    experiment = data.get("experiment")
    if not isinstance(experiment, dict) or "name" not in experiment:
        raise ConfigError(f"{source}: missing experiment.name (add [experiment] name = \"...\")")
    parts = {name: _section(name, cls, data.get(name, {}), source) for name, cls in SECTIONS.items()}
    cfg = ExperimentConfig(**parts, source=source)
    cfg = _resolve_kernel_by_cells(cfg)
    for check in CHECKS:
        check(cfg)
    _refuse_late_failures(cfg)
    check_bounds(cfg)
    return cfg


def load_config(path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                sets: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment TOML file; `overrides` = {section: {key: value}} from the CLI's flags,
    then `sets` = the CLI's `--set TABLE.KEY=VALUE` items (see `apply_sets`), applied last."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} not found; the shipped ones are in experiments/*.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the experiment file ({exc.strerror or exc})") from None
    for section, changes in (overrides or {}).items():
        given = {k: v for k, v in changes.items() if v is not None}
        if given and isinstance(data.setdefault(section, {}), dict):  # a non-table is refused below
            data[section].update(given)
    data = apply_sets(data, sets)
    try:
        cfg = parse_config(data, source=str(path))
    except ConfigError as exc:
        if sets:  # the faulty value may come from the command line: say what it added
            raise ConfigError(f"{exc} (with --set {' '.join(sets)})") from None
        raise
    return dataclasses.replace(cfg, sets=tuple(sets))


# ----------------------------------------------------------------------------- --set overrides


def parse_set(item: str) -> tuple[tuple[str, ...], Any]:
    """One `--set TABLE.KEY=VALUE`: the dotted key path and the value as TOML reads it.

    `search.init_channels=8` -> (("search", "init_channels"), 8); `evaluate.shots=[1]` -> a
    list; `search.inner_time=inf` -> inf; `search.kernel_by_cells.8.reg=1e-5` -> a nested key.
    A value TOML cannot read (`dataset.name=omniglot`) is taken as a string, so quotes are
    optional. Types and ranges are checked afterwards by the file's own validation.
    """
    key, sep, text = item.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"--set {item!r}: expected TABLE.KEY=VALUE, e.g. --set search.init_channels=8")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return path, value


def apply_sets(data: Mapping[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """A copy of parsed TOML `data` with every `--set` item applied in order (later wins)."""
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for item in sets:
        path, value = parse_set(item)
        node = out
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:depth + 1])} is a value, not a table")
            node = child
        node[path[-1]] = value
    return out


# ----------------------------------------------------------------------------- per-cells kernels

KERNEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(KernelSettings))


def _kernel_problem(k: KernelSettings) -> str | None:
    """What is wrong with one kernel setting (the checks of the flat search keys), or None."""
    if k.algorithm not in CHOICES[("search", "algorithm")]:
        return f"algorithm = {k.algorithm!r} is not valid; choose one of {', '.join(CHOICES[('search', 'algorithm')])}"
    if not k.inner_time >= 0:
        return f"inner_time = {k.inner_time} must be >= 0 (or \"inf\")"
    if not (k.reg >= 0 and math.isfinite(k.reg)):
        return f"reg = {k.reg} must be a finite number >= 0"
    return None


def _resolve_kernel_by_cells(cfg: ExperimentConfig) -> ExperimentConfig:
    """`search.kernel_by_cells` as {cells: KernelSettings}: each table's keys typed like the
    flat ones, missing keys taken from [search], cell counts that the search runs."""
    s, src = cfg.search, cfg.source
    resolved: dict[int, KernelSettings] = {}
    hints = get_type_hints(KernelSettings)
    for key, raw in s.kernel_by_cells.items():
        where = f"{src}: search.kernel_by_cells.{key}"
        if isinstance(key, bool) or not str(key).isdigit():
            raise ConfigError(f"{where}: the table name must be a cell count, e.g. [search.kernel_by_cells.8]")
        cells = int(key)
        if cells not in s.cells:
            raise ConfigError(f"{where}: {cells} is not in search.cells = {list(s.cells)}; add it there "
                              f"or remove the table (on the command line: --set search.kernel_by_cells={{}})")
        if isinstance(raw, KernelSettings):
            raw = dataclasses.asdict(raw)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a table with keys {', '.join(KERNEL_KEYS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(KERNEL_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KERNEL_KEYS)} "
                              f"(every other search key applies to all cell counts)")
        values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
        settings = dataclasses.replace(KernelSettings(s.algorithm, s.inner_time, s.reg), **values)
        problem = _kernel_problem(settings)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        resolved[cells] = settings
    return cfg.replace("search", kernel_by_cells=resolved)


# ----------------------------------------------------------------------------- late refusals


def _augment_problem(cfg: ExperimentConfig, augment: str) -> str | None:
    """What the training (and support) augmentation would refuse on this dataset's images,
    found by running it on one blank image. Only `synthetic` has a configurable channel
    count (option `channels`); the other datasets' images fit every registered recipe."""
    if cfg.dataset.name != "synthetic":
        return None
    import torch

    from trainers.augment import make_augment
    from trainers.data import NORMALIZATION, SYNTHETIC_DEFAULTS

    channels = cfg.dataset.options.get("channels", SYNTHETIC_DEFAULTS["channels"])
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        return None  # the dataset loader names this problem itself
    blank = torch.zeros(1, channels, 8, 8, dtype=torch.uint8)
    try:
        make_augment(augment, NORMALIZATION[cfg.dataset.name])(blank, torch.Generator().manual_seed(0))
    except ValueError as exc:
        return f"its augmentation {augment!r} refuses {channels}-channel images ({exc})"
    return None


def _refuse_late_failures(cfg: ExperimentConfig) -> None:
    """Refuse now what the scorers, the trainer or the evaluator would refuse later.

    Rule: no error may first appear after a search or a training has started. Mirrored here:
    `trainers.rfs.TrainConfig` and `get_recipe` (built for every trial: recipe name, epochs,
    lr, decay epochs, batch size, drop-path, seed >= 0), `trainers.fewshot.evaluate_model`
    (support_augment >= 0; its augmentation is the training recipe's, always valid), the
    scorer's MetaNTK (kernel_output "sum" only), and Tune's trial resources (> 0 CPUs).
    """
    src, s, e = cfg.source, cfg.search, cfg.evaluate
    if e.support_augment < 0:
        raise ConfigError(f"{src}: evaluate.support_augment = {e.support_augment} must be >= 0 "
                          f"(0 = plain support images; the paper uses 5 augmented copies)")
    negative = [seed for seed in s.seeds if seed < 0]
    if negative:
        raise ConfigError(f"{src}: search.seeds contains {negative}; seeds also seed the trainings and must be >= 0")
    for seed in s.seeds:
        try:
            train_config_for(cfg, seed)
        except KeyError as exc:
            raise ConfigError(f"{src}: train.recipe: {exc.args[0]}") from None
        except ValueError as exc:
            raise ConfigError(f"{src}: [train] (recipe {cfg.train.recipe or cfg.dataset.name!r} with its "
                              f"overrides) is refused by the trainer: {exc}") from None
    problem = _augment_problem(cfg, train_config_for(cfg, s.seeds[0]).augment)
    if problem:
        raise ConfigError(f"{src}: [train] recipe {cfg.train.recipe or cfg.dataset.name!r}: {problem}")
    meta = [m for m in s.methods if "cn_meta" in PRUNING_METHODS.get(m, ())]
    if s.kernel_output != "sum" and (meta or cfg.study.proxies):
        users = ", ".join(meta) if meta else "study.proxies"
        raise ConfigError(f"{src}: search.kernel_output = {s.kernel_output!r} works only for the plain NTK "
                          f"(method tenas); {users} score(s) the MetaNTK, whose tasks address samples: "
                          f"use kernel_output = \"sum\"")
    if cfg.resources.candidate_batch < 0:
        raise ConfigError(f"{src}: resources.candidate_batch = {cfg.resources.candidate_batch} must be >= 0 "
                          f"(0 = the device's default)")
    if s.kernel_output != "sum" and cfg.resources.candidate_batch > 1:
        raise ConfigError(f"{src}: search.kernel_output = {s.kernel_output!r} is scored one candidate at a "
                          f"time: set resources.candidate_batch = 1 (or kernel_output = \"sum\")")
    if not cfg.resources.trial_cpus > 0:
        raise ConfigError(f"{src}: resources.trial_cpus = {cfg.resources.trial_cpus} must be > 0")


def _toml_value(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
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
    lines = [f"# resolved from {cfg.source}"] + [f"# --set {item}" for item in cfg.sets]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        section = getattr(cfg, name)
        for f in fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"
