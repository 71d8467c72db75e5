"""An experiment that grows: only new work runs, changed work is refused up front.

The ledger `RESULTS_DIR/identities.json` records, per unit of work (a search, a trial,
an evaluation: `harness.identity`), the settings it was made with. Before a command writes
anything (`check_growth`, called by `harness.cmd_search.results_folder`), every unit that has
work on disk and is part of this run is compared with its record: a changed setting refuses
the run, naming the units and what changed from what to what, and the ways out (`--fresh`,
another experiment name, or the old value). Units of other seeds, methods, cell counts or
shot counts are simply new work; units on disk that the config no longer lists are kept.

Work on disk: a search with candidate rows, a `searches` row or progress in the search state;
a trial with `trials` or `history` rows; an evaluation with `episodes` rows of its shot count.

Folders written before the ledger existed get it from their `config.toml` (the settings of
their last run) the first time.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness import store
from harness.errors import UserError
from harness.identity import (SEARCH, TRIAL, Unit, changed_settings, evaluation_key, plain,
                              planned_units)

LEDGER_FILE = "identities.json"
LEDGER_VERSION = 1
# Units named in a refusal before "and N more".
SHOWN = 4
# The ways out of a refusal (`run` always resumes, so there is no --resume to drop).
WAYS_OUT = ("rerun with --fresh to move the old results aside into RESULTS_DIR/previous/<time>/ and start over "
            "(nothing is deleted), give the experiment another name ([experiment] name, or "
            "--set experiment.name=NEW), or restore the old value(s)")


# ----------------------------------------------------------------------------- the ledger


def read_ledger(results_dir: Path) -> dict[str, Any] | None:
    """unit key -> recorded identity; None when the folder has no (readable) ledger."""
    import json

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


def ledger_from_config_file(results_dir: Path) -> dict[str, Any]:
    """The identities of every unit of the config recorded in `RESULTS_DIR/config.toml` (the
    last run's settings), for a folder without a ledger; {} when it cannot be read."""
    from harness.config import parse_config
    from harness.errors import ConfigError

    path = Path(results_dir) / "config.toml"
    if not path.is_file():
        return {}
    try:
        old = parse_config(tomllib.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ConfigError) as exc:
        print(f"warning: {path} cannot be read as an experiment config ({str(exc).splitlines()[0][:160]}); "
              f"the work on disk is taken to match this run's settings", file=sys.stderr)
        return {}
    return {key: dict(unit.identity) for key, unit in planned_units(old).items()}


def recorded_identities(results_dir: Path) -> dict[str, Any]:
    """The ledger, or for an older folder the identities implied by its config.toml."""
    ledger = read_ledger(results_dir)
    return ledger if ledger is not None else ledger_from_config_file(results_dir)


def record_units(results_dir: Path, units: Iterable[Unit]) -> Path:
    """Merge the identities of `units` into the ledger (other units' records are kept)."""
    results_dir = Path(results_dir)
    old = read_ledger(results_dir)
    ledger = dict(old if old is not None else ledger_from_config_file(results_dir))
    ledger |= {u.key: plain(u.identity) for u in units}
    if ledger != old:  # a rerun of the same config writes nothing
        store.write_json_atomic(results_dir / LEDGER_FILE, {"version": LEDGER_VERSION, "units": ledger})
    return results_dir / LEDGER_FILE


# ----------------------------------------------------------------------------- work on disk


def _stems(results_dir: Path, table: str) -> list[str]:
    return [p.stem for p in store.table_files(results_dir, table)]


def _episode_evaluations(results_dir: Path) -> set[str]:
    """Evaluation keys with rows in `episodes` (files that cannot be read are skipped: they
    are set aside and recomputed)."""
    keys = set()
    for path in store.table_files(results_dir, "episodes"):
        try:
            data = store.read_file(path, "episodes")
        except store.SchemaError:
            continue
        keys |= {evaluation_key(t, k) for t, k in zip(data.column("trial_id").to_pylist(),
                                                        data.column("shots").to_pylist())}
    return keys


def units_on_disk(results_dir: Path) -> set[str]:
    """Keys of every unit with work in `results_dir` (see the module doc)."""
    from harness.search import searches_with_progress

    results_dir = Path(results_dir)
    keys = {f"{SEARCH}:{s}" for s in _stems(results_dir, "searches")}
    keys |= {f"{SEARCH}:{s.rpartition('-r')[0]}" for s in _stems(results_dir, "candidates")}
    keys |= {f"{SEARCH}:{s}" for s in searches_with_progress(results_dir)}
    keys |= {f"{TRIAL}:{s}" for table in ("trials", "history") for s in _stems(results_dir, table)}
    return keys | _episode_evaluations(results_dir)


# ----------------------------------------------------------------------------- the check


def stale_units(recorded: Mapping[str, Any], planned: Mapping[str, Unit], on_disk: set[str]
                ) -> list[tuple[Unit, list[tuple[str, Any, Any]]]]:
    """(unit, changed settings) of every planned unit with work on disk whose recorded
    identity differs from the planned one, leaving out units whose parent is already listed
    (the trials of a changed search, the evaluations of a changed trial). Units without a
    record are taken as they are."""
    stale: dict[str, tuple[Unit, list]] = {}
    for key in sorted(on_disk & set(planned), key=lambda k: (k.count(":"), k)):  # parents first
        unit, old = planned[key], recorded.get(key)
        if old is None or unit.parent in stale:
            if unit.parent in stale:
                stale[key] = (unit, [])  # implied: hidden below, but its children are hidden too
            continue
        changes = changed_settings(old, unit.identity)
        if changes:
            stale[key] = (unit, changes)
    return [(u, c) for u, c in stale.values() if c]


def _value(v: Any) -> str:
    return "(unset)" if v is None else repr(v)


def refusal(results_dir: Path, stale: list[tuple[Unit, list[tuple[str, Any, Any]]]]) -> str:
    """One line: which finished units changed how, and the ways out."""
    parts = []
    for unit, changes in stale[:SHOWN]:
        what = ", ".join(f"{k} {_value(a)} -> {_value(b)}" for k, a, b in changes[:3])
        more = f", +{len(changes) - 3} more" if len(changes) > 3 else ""
        parts.append(f"{unit.label} ({what}{more})")
    rest = f" and {len(stale) - SHOWN} more" if len(stale) > SHOWN else ""
    return (f"{results_dir} holds work made with other settings than this config: {'; '.join(parts)}{rest}; "
            f"{WAYS_OUT}")


def check_growth(cfg: Any, *, search: bool, train: bool) -> dict[str, Unit]:
    """Refuse (UserError, before anything is written) a run that would redo finished work with
    changed settings; return the run's units (`harness.identity.planned_units`) for
    `record_units` once the run may start."""
    planned = planned_units(cfg, search=search, train=train)
    stale = stale_units(recorded_identities(cfg.results_dir), planned, units_on_disk(cfg.results_dir))
    if stale:
        raise UserError(refusal(cfg.results_dir, stale))
    return planned


# ----------------------------------------------------------------------------- Tune experiments

TUNE_RECORD_FILE = "state/tune_experiments.json"


def read_tune_records(results_dir: Path) -> list[dict[str, Any]] | None:
    """The Tune experiments this folder started: [{"name", "storage", "trials": {id: digest}}];
    None when there is no record (an older folder)."""
    import json

    path = Path(results_dir) / TUNE_RECORD_FILE
    if not path.is_file():
        return None
    try:
        records = json.loads(path.read_text())["experiments"]
        if not all(isinstance(r, dict) and {"name", "storage", "trials"} <= set(r) for r in records):
            raise ValueError("malformed experiment entry")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"warning: {path} is unreadable ({exc}); unfinished trials of earlier runs start over",
              file=sys.stderr)
        return []
    return records


def write_tune_records(results_dir: Path, records: list[dict[str, Any]]) -> Path:
    return store.write_json_atomic(Path(results_dir) / TUNE_RECORD_FILE, {"experiments": records})


def plan_tune_runs(records: list[dict[str, Any]], storage: str, digests: Mapping[str, str], missing: set[str],
                   new_name: Any) -> list[tuple[str, list[str], bool]]:
    """Which Tune experiments run the `missing` trials: [(name, trial ids, restored?)].

    A recorded experiment on the same storage is restored when it holds a missing trial and
    every trial in it still has the spec it was started with (`digests`: trial id -> spec
    digest): an interrupted trial then resumes from its last epoch. The missing trials left
    over run in one new experiment named `new_name(ids)` over them alone, so a finished trial
    is never part of a new grid (adding a seed trains only the new seed's trials).
    """
    runs, left = [], set(missing)
    for rec in records:
        trials = rec["trials"]
        if rec["storage"] != storage or not set(trials) & left:
            continue
        if any(digests.get(t) != d for t, d in trials.items()):
            continue
        runs.append((rec["name"], sorted(trials), True))
        left -= set(trials)
    if left:
        runs.append((new_name(sorted(left)), sorted(left), False))
    return runs


def tune_runs(results_dir: Path, storage: str, specs: list[Any], missing: set[str], digest_of: Any
              ) -> list[tuple[str, list[str], bool]]:
    """`plan_tune_runs` for the trial specs `specs` (`digest_of([spec])` -> spec digest), with
    the folder's record of Tune experiments; the new experiment is recorded before it starts,
    so an interrupted one is restored by the next run.

    A folder from before the record named its one experiment after every spec
    (`trials-<digest of all specs>`): that one is restored when it exists on the storage.
    """
    from ray import tune

    by_id = {s.trial_id: s for s in specs}
    digests = {t: digest_of([s]) for t, s in by_id.items()}
    records = read_tune_records(results_dir)
    if records is None:
        records = []
        legacy = f"trials-{digest_of(specs)}"
        if tune.Tuner.can_restore(f"{storage.rstrip('/')}/{legacy}"):
            records.append({"name": legacy, "storage": storage, "trials": digests})
    runs = plan_tune_runs(records, storage, digests, missing,
                          lambda ids: f"trials-{digest_of([by_id[i] for i in ids])}")
    new = [{"name": name, "storage": storage, "trials": {i: digests[i] for i in ids}}
           for name, ids, restored in runs if not restored]
    names = {r["name"] for r in new}
    write_tune_records(results_dir, [r for r in records if r["name"] not in names] + new)
    return runs


def forget_tune_experiments(results_dir: Path, names: list[str]) -> None:
    """Drop the records of Tune experiments that were moved aside."""
    records = read_tune_records(results_dir) or []
    write_tune_records(results_dir, [r for r in records if r["name"] not in set(names)])


# ----------------------------------------------------------------------------- added shot counts


def evaluations_on_disk(results_dir: Path) -> set[str]:
    """Evaluation keys (`harness.identity.evaluation_key`) with `episodes` rows."""
    return _episode_evaluations(Path(results_dir))


def added_evaluations(results_dir: Path, specs: list[Any], finished: set[str]) -> list[tuple[Any, int]]:
    """(spec, shots) of each shot count of a finished trial without episode rows: a shot count
    added to `[evaluate] shots` after the trial ran."""
    done = evaluations_on_disk(results_dir)
    return [(s, int(k)) for s in specs if s.trial_id in finished for k in s.eval_shots
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

    from harness.shared_data import split_key
    from harness.trials import (build_network, episode_table_rows, eval_settings, evaluate_trained, finished_trials,
                                load_episode_lists, model_file_path, read_model_file)

    todo = added_evaluations(cfg.results_dir, specs, finished_trials(cfg.results_dir))
    lost = sorted({s.trial_id for s, _ in todo if not model_file_path(cfg.results_dir, s.trial_id).is_file()})
    if lost:  # nothing to evaluate: say so and go on with the others
        print(f"warning: no model file for {len(lost)} finished trial(s) ({', '.join(lost[:3])}) in "
              f"{cfg.results_dir / 'models'}: their added shot counts are not evaluated; rerun with --fresh "
              f"to train them again", file=sys.stderr)
        todo = [(s, k) for s, k in todo if s.trial_id not in lost]
    if not todo:
        return []
    from harness.trials import ensure_episode_lists

    ensure_episode_lists(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lists = load_episode_lists(cfg.results_dir, todo[0][0])
    settings = eval_settings(todo[0][0], lists)
    split = split_key(settings.dataset, settings.root, settings.split, settings.image_size, settings.data_seed,
                      settings.dataset_options).load()
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


def accuracies_with_added_evaluations(trials: Any, episodes: Any) -> Any:
    """`trials` with each missing (NaN) `acc_<K>shot` / `ci_<K>shot` filled from the trial's
    `episodes` rows of K shots (mean, 95% t half-width): the shot counts evaluated after the
    trial's row was written. The rows on disk are not changed."""
    import math

    from trainers.stats import mean_confidence_interval

    if trials.empty or episodes.empty:
        return trials
    out = trials.copy()
    index = {t: i for i, t in zip(out.index, out["trial_id"])}
    for (trial_id, shots), group in episodes.groupby(["trial_id", "shots"]):
        acc, ci = f"acc_{int(shots)}shot", f"ci_{int(shots)}shot"
        i = index.get(trial_id)
        if i is None or acc not in out.columns or not math.isnan(out.at[i, acc]):
            continue
        mean, half = mean_confidence_interval(group["accuracy"].tolist())
        out.at[i, acc], out.at[i, ci] = float(mean), float(half)
    return out
