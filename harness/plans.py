"""The work a config plans, and how far the searches got: no harness imports below it.

`plan_searches` names every search (method x seed x cell count), `training_runs` every
training of a searched genotype; the search state file (`STATE_FILE`, written by
`harness.search`) records each search's progress. The search driver, the trials, the
identities of finished work (`harness.growth`) and the pipeline all plan with these.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config import ExperimentConfig

STATE_FILE = "state/searches.json"


@dataclass(frozen=True)
class SearchPlan:
    search_id: str
    dataset: str
    method: str
    seed: int
    cells: int


def plan_searches(cfg: ExperimentConfig) -> list[SearchPlan]:
    """One search per (method, seed, cells), in config order (ids are file-name safe)."""
    plans = []
    for method in cfg.search.methods:
        for seed in cfg.search.seeds:
            for cells in cfg.search.cells:
                safe = method.replace(":", "-").replace("+", "-")  # results keys allow no ':' or '+'
                plans.append(SearchPlan(f"{cfg.dataset.name}-{safe}-s{seed}-c{cells}", cfg.dataset.name,
                                        method, seed, cells))
    return plans


def training_runs(cfg: ExperimentConfig, row: dict[str, Any]) -> list[tuple[int, str]]:
    """(training seed, trial id) of each training of one searched genotype: its search seed
    and id by default; with `[study] train_seeds` one trial per seed, "<search id>-t<seed>"."""
    if not cfg.study.train_seeds:
        return [(int(row["seed"]), row["search_id"])]
    return [(t, f"{row['search_id']}-t{t}") for t in cfg.study.train_seeds]


def read_state_file(path: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """The state file's JSON; None (after a warning naming it, if `warn`) when it is unreadable.

    The state only records progress: rounds are pure functions of their ids, so a search
    restarted from zero rewrites the same candidate rows and ends with the same genotype.
    """
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("searches"), list):
            raise ValueError("not a search state object")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if warn:
            print(f"warning: {path} is unreadable ({exc}); the searches start over and rewrite the same rows",
                  file=sys.stderr)
        return None


def searches_with_progress(results_dir: Path) -> set[str]:
    """Ids of the searches whose saved state has progress (a finished round, or done)."""
    path = Path(results_dir) / STATE_FILE
    data = read_state_file(path, warn=False) if path.is_file() else None
    return {d.get("search_id") for d in (data or {}).get("searches", [])
            if isinstance(d, dict) and (d.get("round", 0) or d.get("stage") == "done")}
