"""Which settings determine a unit of work: a search, a trial, an evaluation.

A unit's identity is a flat mapping "table.key" -> value of exactly the settings its result
depends on, and nothing else: not the other seeds, methods or cell counts of the experiment,
not the resources. So an experiment can grow (more seeds, methods, cell counts, shot counts)
without touching what is done, and a change that does alter finished work is found by
comparing identities (`harness.growth`).

- A search: the dataset it reads (name, resolved root, image size, training split, options),
  the experiment seed (every draw is keyed by it), its method, seed and cell count, the
  supernet width, and the [search] keys its measures read (`MEASURE_KEYS`); a MetaNTK search
  also its kernel ("kernel.*": [search] algorithm / inner_time / reg, or its
  [search.kernel_by_cells.N] table). Fixed methods (random, metanas, genotype:NAME) read no
  [search] key beyond the width.
- A trial: its search's identity, the resolved training recipe ("train.*", with the training
  seed) and the network width it trains.
- An evaluation (one shot count of one trial): the trial's identity and the [evaluate]
  settings of that shot count, with the split it samples from.

Values are plain JSON (tuples become lists, infinities the string "inf"), so identities are
stored as they are compared (`RESULTS_DIR/identities.json`).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from harness.methods import PRUNING_METHODS, PROXY_MEASURE_PREFIX
from harness.specs import absolute_root

if TYPE_CHECKING:
    from harness.config import ExperimentConfig

Identity = Mapping[str, Any]

# [search] keys read by the scorer for each measure (harness.scoring.Scorer). The MetaNTK's
# kernel settings come per cell count (`kernel.*`); `candidates_per_job` only groups work.
_KERNEL_BATCH = ("tasks", "ways", "shots", "queries", "kernel_image_size", "kernel_output", "kernel_params",
                 "kernel_backend", "norm", "kernel_normalization")
MEASURE_KEYS: dict[str, tuple[str, ...]] = {
    "cn_meta": _KERNEL_BATCH,
    "cn_ntk": (*_KERNEL_BATCH, "ntk_batch"),
    "rn": ("region_inputs", "region_batches"),
}
# A proxy reads the kernel batch, the region inputs and the proxies' own MetaNTK settings
# (`harness.scoring.proxy_options_from_config`).
PROXY_KEYS: tuple[str, ...] = (*MEASURE_KEYS["cn_ntk"], *MEASURE_KEYS["rn"], "inner_time", "reg")
PROXY_STUDY_KEYS: tuple[str, ...] = ("anil_inner_time", "anil_reg")
# Every pruning search: repeats averaged and how deltas are ranked.
PRUNING_KEYS: tuple[str, ...] = ("repeats", "ranking")
EVALUATE_KEYS: tuple[str, ...] = ("ways", "queries", "episodes", "C", "support_augment")

SEARCH, TRIAL, EVALUATION = "search", "trial", "evaluation"


def plain(value: Any) -> Any:
    """`value` as the JSON the ledger stores: tuples -> lists, mappings with sorted string
    keys, non-finite floats -> "inf" / "-inf" / "nan" (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return value


@dataclass(frozen=True)
class Unit:
    """One unit of work: `key` ("search:<id>", "trial:<id>", "evaluation:<trial id>:<K>shot"),
    its identity, and the key of the unit it builds on ("" for a search)."""

    key: str
    identity: Identity
    parent: str = ""

    @property
    def label(self) -> str:
        """How messages name it: "search X", "trial Y", "evaluation Y 5-shot"."""
        kind, _, rest = self.key.partition(":")
        if kind == EVALUATION:
            trial, _, shots = rest.rpartition(":")
            return f"evaluation {trial} {shots.removesuffix('shot')}-shot"
        return f"{kind} {rest}"


def search_key(search_id: str) -> str:
    return f"{SEARCH}:{search_id}"


def trial_key(trial_id: str) -> str:
    return f"{TRIAL}:{trial_id}"


def evaluation_key(trial_id: str, shots: int) -> str:
    return f"{EVALUATION}:{trial_id}:{int(shots)}shot"


def search_identity(cfg: ExperimentConfig, method: str, seed: int, cells: int) -> dict[str, Any]:
    """The settings that determine the search (`method`, `seed`, `cells`) of `cfg`."""
    d, s = cfg.dataset, cfg.search
    ident: dict[str, Any] = {
        "experiment.seed": cfg.experiment.seed, "dataset.name": d.name, "dataset.root": absolute_root(d.root),
        "dataset.image_size": d.image_size, "dataset.train_split": d.train_split, "dataset.options": dict(d.options),
        "search.method": method, "search.seed": seed, "search.cells": cells, "search.init_channels": s.init_channels,
    }
    measures = PRUNING_METHODS.get(method, ())
    keys: list[str] = list(PRUNING_KEYS) if measures else []
    for m in measures:
        keys += PROXY_KEYS if m.startswith(PROXY_MEASURE_PREFIX) else MEASURE_KEYS[m]
    ident |= {f"search.{k}": getattr(s, k) for k in dict.fromkeys(keys)}
    if any(m.startswith(PROXY_MEASURE_PREFIX) for m in measures):
        ident |= {f"study.{k}": getattr(cfg.study, k) for k in PROXY_STUDY_KEYS}
    if "cn_meta" in measures:
        k = s.kernel_for(cells)
        ident |= {"kernel.algorithm": k.algorithm, "kernel.inner_time": k.inner_time, "kernel.reg": k.reg}
    return plain(ident)


def trial_identity(cfg: ExperimentConfig, search: Identity, train_seed: int) -> dict[str, Any]:
    """A trial's identity: its search's (`search_identity`), the resolved training recipe with
    its training seed, and the width of the network it trains."""
    from harness.specs import train_config_for

    train = train_config_for(cfg, train_seed).to_dict()
    ident = {**search, **{f"train.{k}": v for k, v in train.items()},
             "train.init_channels": cfg.train.init_channels or cfg.search.init_channels}
    return plain(ident)


def evaluation_identity(cfg: ExperimentConfig, trial: Identity, shots: int) -> dict[str, Any]:
    """The evaluation of `shots` shots of a trial: its identity and the [evaluate] settings."""
    e = cfg.evaluate
    ident = {**trial, "dataset.eval_split": cfg.dataset.eval_split, "evaluate.shots": int(shots),
             **{f"evaluate.{k}": getattr(e, k) for k in EVALUATE_KEYS}}
    return plain(ident)


def trial_units(cfg: ExperimentConfig, search: Unit, trial_id: str, train_seed: int) -> list[Unit]:
    """The trial `trial_id` of `search` and one evaluation per shot count of `cfg`."""
    trial = Unit(trial_key(trial_id), trial_identity(cfg, search.identity, train_seed), search.key)
    return [trial] + [Unit(evaluation_key(trial_id, k), evaluation_identity(cfg, trial.identity, k), trial.key)
                      for k in cfg.evaluate.shots]


def digest(identity: Identity) -> str:
    """A short stable hash of an identity (16 hex digits)."""
    text = json.dumps(plain(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_settings(old: Identity, new: Identity) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of every setting that differs, sorted by key; a key
    missing on one side has the value None there."""
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


# ----------------------------------------------------------------------------- the ledger

LEDGER_FILE = "identities.json"
LEDGER_VERSION = 1


def read_ledger(results_dir: Path) -> dict[str, Any] | None:
    """unit key -> recorded identity (`RESULTS_DIR/LEDGER_FILE`); None when the folder has no
    (readable) ledger."""
    path = Path(results_dir) / LEDGER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        units = data["units"]
        if not isinstance(units, dict):
            raise ValueError("'units' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"warning: {path} is unreadable ({exc}); the settings of the work on disk are taken from "
              f"config.toml", file=sys.stderr)
        return None
    return units


def merge_into_ledger(results_dir: Path, units: Iterable[Unit], base: Mapping[str, Any] | None = None) -> Path:
    """Write the ledger: `base` (default: the ledger on disk) with the identities of `units`
    merged in; nothing is written when that changes nothing (a rerun of the same config)."""
    from harness import store

    results_dir = Path(results_dir)
    old = read_ledger(results_dir)
    ledger = dict(base if base is not None else (old or {}))
    ledger |= {u.key: plain(u.identity) for u in units}
    if ledger != old:
        store.write_json_atomic(results_dir / LEDGER_FILE, {"version": LEDGER_VERSION, "units": ledger})
    return results_dir / LEDGER_FILE


def search_unit(cfg: ExperimentConfig, search_id: str, method: str, seed: int, cells: int) -> Unit:
    """The unit of one search of `cfg`."""
    return Unit(search_key(search_id), search_identity(cfg, method, seed, cells))


def evaluations_on_disk(results_dir: Path) -> set[str]:
    """Evaluation keys with rows in `episodes` (files that cannot be read are skipped: they
    are set aside and recomputed)."""
    from harness import store

    keys = set()
    for path in store.table_files(results_dir, "episodes"):
        try:
            data = store.read_file(path, "episodes")
        except store.SchemaError:
            continue
        keys |= {evaluation_key(t, k) for t, k in zip(data.column("trial_id").to_pylist(),
                                                        data.column("shots").to_pylist())}
    return keys
