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
from harness.report import accuracies_with_added_evaluations  # noqa: F401  (re-exported)
from harness.identity import (LEDGER_FILE, LEDGER_VERSION, SEARCH, TRIAL, Unit,  # noqa: F401 (ledger re-exported)
                              changed_settings, evaluations_on_disk, merge_into_ledger, read_ledger, search_unit,
                              trial_units)

# Units named in a refusal before "and N more".
SHOWN = 4
# The ways out of a refusal (`run` always resumes, so there is no --resume to drop).
WAYS_OUT = ("rerun with --fresh to move the old results aside into RESULTS_DIR/previous/<time>/ and start over "
            "(nothing is deleted), give the experiment another name ([experiment] name, or "
            "--set experiment.name=NEW), or restore the old value(s)")


# ----------------------------------------------------------------------------- the ledger


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
    """Merge the identities of `units` into the ledger (other units' records are kept; a
    folder without a ledger starts from the identities its config.toml implies)."""
    old = read_ledger(results_dir)
    return merge_into_ledger(results_dir, units, base=old if old is not None else ledger_from_config_file(results_dir))


def planned_units(cfg: Any, *, search: bool = True, train: bool = True) -> dict[str, Unit]:
    """key -> `Unit` of every search of `cfg` (`harness.search.plan_searches`), and with
    `train` of every trial (`harness.trials.training_runs`) and evaluation."""
    from harness.plans import plan_searches, training_runs

    units: dict[str, Unit] = {}
    for plan in plan_searches(cfg):
        unit = search_unit(cfg, plan.search_id, plan.method, plan.seed, plan.cells)
        if search:
            units[unit.key] = unit
        if train:
            for train_seed, trial_id in training_runs(cfg, {"seed": plan.seed, "search_id": plan.search_id}):
                units |= {u.key: u for u in trial_units(cfg, unit, trial_id, train_seed)}
    return units




# ----------------------------------------------------------------------------- work on disk


def _stems(results_dir: Path, table: str) -> list[str]:
    return [p.stem for p in store.table_files(results_dir, table)]


def units_on_disk(results_dir: Path) -> set[str]:
    """Keys of every unit with work in `results_dir` (see the module doc)."""
    from harness.plans import searches_with_progress

    results_dir = Path(results_dir)
    keys = {f"{SEARCH}:{s}" for s in _stems(results_dir, "searches")}
    keys |= {f"{SEARCH}:{s.rpartition('-r')[0]}" for s in _stems(results_dir, "candidates")}
    keys |= {f"{SEARCH}:{s}" for s in searches_with_progress(results_dir)}
    keys |= {f"{TRIAL}:{s}" for table in ("trials", "history") for s in _stems(results_dir, table)}
    return keys | evaluations_on_disk(results_dir)


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
    changed settings; return the run's units (`planned_units`) for
    `record_units` once the run may start."""
    planned = planned_units(cfg, search=search, train=train)
    stale = stale_units(recorded_identities(cfg.results_dir), planned, units_on_disk(cfg.results_dir))
    if stale:
        raise UserError(refusal(cfg.results_dir, stale))
    return planned
