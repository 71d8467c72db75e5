"""Which Tune experiments hold which trials of a results folder (`state/tune_experiments.json`).

Only the missing trials of an experiment go to Tune (`harness.trials.run_trials`): an
interrupted Tune experiment whose trials are unchanged is restored (its trials resume from
their last epoch); the other missing trials run in a new experiment over them alone, so
adding a seed never retrains a finished trial. This module keeps the record that makes
that possible: plain file bookkeeping, no Ray beyond `Tuner.can_restore`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from harness import store

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


def recorded_trial_ids(results_dir: Path, storage: str) -> set[str]:
    """Ids of every trial a recorded Tune experiment on `storage` holds: those are restored
    (`tune_runs`), never handed to a new experiment."""
    return {t for r in read_tune_records(results_dir) or [] if r["storage"] == storage for t in r["trials"]}


def record_trial(results_dir: Path, name: str, storage: str, trial_id: str, digest: str) -> None:
    """Add one trial (with its spec digest) to the record of experiment `name`, created if
    new: a streamed experiment (`harness.trial_stream`) learns its trials one by one, and an
    interrupted one is restored for exactly the trials it was given."""
    records = read_tune_records(results_dir) or []
    entry = next((r for r in records if r["name"] == name), None)
    if entry is None:
        entry = {"name": name, "storage": storage, "trials": {}}
        records.append(entry)
    entry["trials"][trial_id] = digest
    write_tune_records(results_dir, records)
