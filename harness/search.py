"""The pruning driver (paper Algorithm 1): every search of an experiment, round by round.

All searches of an experiment (methods x seeds x cell counts) advance together: a round
collects the candidates of every active search, scores them on the shared `ScorerPool`,
then ranks and prunes each search on its own (`harness.ranking`). Per round and repeat the
origin net is scored once; candidates mask one more op. After 6 rounds every edge has one op;
a final edge round scores removing each whole edge and keeps 2 inputs per node.

After each round the state of every search is checkpointed (`state/searches.json`, atomic)
and the round's candidate rows are written under a deterministic key, so `resume=True`
continues from the last finished round and ends with the genotype an uninterrupted run gives.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable

import numpy as np

from harness import store
from harness.config import (FIXED_METHODS, GENOTYPE_METHOD_PREFIX, PRUNING_METHODS, ExperimentConfig, absolute_root,
                            to_toml)
from harness.errors import UserError
from harness.ranking import Candidate, EDGE_GROUPS, choose_edges, choose_prunes, mean_delta, rank_candidates, relative_delta
from harness.scoring import N_EDGES, N_OPS, Job, Score, ScoreSpec, generator, spec_from_config

STATE_FILE = "state/searches.json"
CELL_NAMES = ("normal", "reduce")
# Measure names of harness.scoring per method; the CN column of a method is its one CN measure.
METHOD_MEASURES: dict[str, tuple[str, ...]] = {
    m: tuple("cn_meta" if x == "cn_meta" else "cn_ntk" if x == "cn_ntk" else "rn" for x in ms)
    for m, ms in PRUNING_METHODS.items()
}


class SearchInterrupted(RuntimeError):
    """Raised by `run_searches(stop_after_round=k)` (tests, and a user's Ctrl-C)."""


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
                safe = method.replace(":", "-")
                plans.append(SearchPlan(f"{cfg.dataset.name}-{safe}-s{seed}-c{cells}", cfg.dataset.name,
                                        method, seed, cells))
    return plans


@dataclass
class SearchState:
    """The JSON-serialisable progress of one search."""

    search_id: str
    method: str
    seed: int
    cells: int
    stage: str = "ops"                    # ops | edges | done
    round: int = 0                        # scoring rounds finished
    masks: list = field(default_factory=lambda: np.ones((2, N_EDGES, N_OPS), bool).tolist())
    genotype: str = ""
    candidates: int = 0
    device_seconds: float = 0.0
    wall_seconds: float = 0.0
    workers: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["workers"] = sorted(self.workers)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SearchState":
        return cls(**{**d, "workers": set(d.get("workers", []))})


def fixed_genotype(plan: SearchPlan, experiment_seed: int):
    """Genotype of a method that needs no scoring: random, metanas, genotype:NAME."""
    from search_spaces.genotypes import get_genotype, sample_genotype

    if plan.method == "random":
        return sample_genotype(generator(experiment_seed, plan.search_id, "random-genotype"))
    if plan.method == "metanas":
        return get_genotype("metanas_og_v2" if plan.dataset == "omniglot" else "metanas_in_v2")
    if plan.method.startswith(GENOTYPE_METHOD_PREFIX):
        return get_genotype(plan.method[len(GENOTYPE_METHOD_PREFIX):])
    raise KeyError(f"{plan.method!r} is not a fixed method; fixed: {', '.join(FIXED_METHODS)}, genotype:NAME")


def op_candidates(masks: np.ndarray) -> list[tuple[int, int, int]]:
    """Active ops on edges that still have more than one: (cell_type, edge, op)."""
    return [(c, e, o) for c in range(2) for e in range(N_EDGES) if masks[c, e].sum() > 1
            for o in range(N_OPS) if masks[c, e, o]]


def edge_candidates() -> list[tuple[int, int, int]]:
    """Edges of nodes with more than 2 inputs (node 1: 2..4, node 2: 5..8); op = -1."""
    return [(c, e, -1) for c in range(2) for lo, hi in EDGE_GROUPS if hi - lo > 2 for e in range(lo, hi)]


def pruned(masks: np.ndarray, cand: tuple[int, int, int]) -> np.ndarray:
    out = masks.copy()
    c, e, o = cand
    if o >= 0:
        out[c, e, o] = False
    else:
        out[c, e, :] = False  # the whole edge contributes nothing
    return out


def genotype_from_masks(masks: np.ndarray, kept: dict[int, tuple[int, ...]]):
    from search_spaces.genotypes import Genotype
    from search_spaces.ops import PRIMITIVES

    def edges(c: int) -> dict[int, str]:
        out = {}
        for e in kept[c]:
            ops = np.flatnonzero(masks[c, e])
            if len(ops) != 1:
                raise RuntimeError(f"edge {e} of {CELL_NAMES[c]} cell has {len(ops)} ops at edge selection")
            out[e] = PRIMITIVES[int(ops[0])]
        return out

    return Genotype.from_edges(normal=edges(0), reduce=edges(1))


def config_digest(cfg: ExperimentConfig) -> str:
    """What must not change between a run and its resume (everything but resources).

    The dataset root is hashed resolved, so `--root data/x` and `--root ./data/x` (or an
    absolute spelling of the same folder) resume the same run.
    """
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, root=absolute_root(cfg.dataset.root)),
                              resources=type(cfg.resources)(), source="")
    text = to_toml(cfg)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_state(results_dir: Path, digest: str, states: list[SearchState]) -> None:
    store.write_json_atomic(results_dir / STATE_FILE,
                            {"config_digest": digest, "searches": [s.to_json() for s in states]})


# The way out of a state written by another config (`run` has no --resume: it always resumes).
FRESH_HINT = ("rerun with --fresh to move the old results aside into RESULTS_DIR/previous/ and start over "
              "(nothing is deleted), use another experiment name, or restore the original config")


def _read_state_file(path: Path, *, warn: bool = True) -> dict[str, Any] | None:
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


def _load_state(results_dir: Path, digest: str, plans: list[SearchPlan], *, warn: bool = True
                ) -> list[SearchState] | None:
    path = results_dir / STATE_FILE
    if not path.is_file():
        return None
    data = _read_state_file(path, warn=warn)
    if data is None:
        return None
    if data.get("config_digest") != digest:
        raise UserError(f"{path} was written by a different experiment config; {FRESH_HINT}")
    try:
        states = [SearchState.from_json(d) for d in data["searches"]]
    except (TypeError, KeyError, ValueError) as exc:
        if warn:
            print(f"warning: {path} is unreadable ({exc}); the searches start over", file=sys.stderr)
        return None
    if [s.search_id for s in states] != [p.search_id for p in plans]:
        raise UserError(f"{path} lists other searches than the config; {FRESH_HINT}")
    return states


def check_resumable(cfg: ExperimentConfig) -> None:
    """Refuse (UserError) before anything is written if the saved state belongs to another config."""
    _load_state(cfg.results_dir, config_digest(cfg), plan_searches(cfg), warn=False)  # run_searches warns


def _rounds_on_disk(results_dir: Path, state: SearchState) -> bool:
    """Whether every finished round of `state` still has its candidate rows (the Parquet
    tables, not the state file, decide what is done)."""
    folder = store.results_layout(results_dir).table("candidates")
    return all((folder / f"{state.search_id}-r{r:02d}.parquet").is_file() for r in range(1, state.round + 1))


def _candidate_rows(cfg: ExperimentConfig, plan: SearchState, dataset: str, round_: int, ranked: list[Candidate],
                    raw: dict[tuple, dict[str, list[float]]], origin: dict[str, list[float]], cn_name: str | None,
                    removed: set[tuple[int, int, int]], workers: dict[tuple, set[str]],
                    seconds: dict[tuple, float]) -> list[dict[str, Any]]:
    from search_spaces.ops import PRIMITIVES

    def avg(values: list[float] | None) -> float:
        return float(np.mean(values)) if values else math.nan

    rows = []
    for c in ranked:
        cand = (c.cell_type, c.edge, c.op)
        r = raw[cand]
        op_name = PRIMITIVES[c.op] if c.op >= 0 else "edge"
        rows.append({
            "experiment": cfg.experiment.name, "dataset": dataset, "method": plan.method, "seed": plan.seed,
            "cells": plan.cells, "search_id": plan.search_id, "round": round_, "cell_type": CELL_NAMES[c.cell_type],
            "edge": c.edge, "op": op_name, "repeats": cfg.search.repeats,
            "cn_origin": avg(origin.get(cn_name)) if cn_name else math.nan,
            "cn_pruned": avg(r.get(cn_name)) if cn_name else math.nan,
            "rn_origin": avg(origin.get("rn")), "rn_pruned": avg(r.get("rn")),
            "delta_cn": math.nan if c.delta_cn is None else c.delta_cn,
            "delta_rn": math.nan if c.delta_rn is None else c.delta_rn,
            "rank_cn": c.rank_cn, "rank_rn": c.rank_rn, "importance": c.importance, "pruned": cand in removed,
            "worker": ",".join(sorted(workers[cand])), "seconds": seconds[cand],
        })
    return rows


def run_searches(cfg: ExperimentConfig, pool: Any, *, resume: bool = False, stop_after_round: int | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) every search of `cfg` on `pool`; returns the `searches` rows.

    Writes `candidates/<search_id>-rNN.parquet` per round, `searches/<search_id>.parquet`
    per finished search, the state checkpoint, and the rendered cells.
    """
    from tqdm.auto import tqdm

    results_dir = cfg.results_dir
    plans = plan_searches(cfg)
    digest = config_digest(cfg)
    states = (_load_state(results_dir, digest, plans) if resume else None) or [
        SearchState(p.search_id, p.method, p.seed, p.cells) for p in plans]
    for i, s in enumerate(states):
        if s.method in PRUNING_METHODS and not _rounds_on_disk(results_dir, s):
            print(f"warning: candidate rows of {s.search_id} are missing; that search starts over",
                  file=sys.stderr)
            states[i] = SearchState(s.search_id, s.method, s.seed, s.cells)
    by_id = {p.search_id: p for p in plans}
    specs: dict[int, ScoreSpec] = {c: spec_from_config(cfg, c) for c in cfg.search.cells}
    for s in states:
        if s.stage != "done" and s.method not in PRUNING_METHODS:
            s.genotype = fixed_genotype(by_id[s.search_id], cfg.experiment.seed).to_str()
            s.stage = "done"
    _save_state(results_dir, digest, states)
    repeats = cfg.search.repeats
    # One bar per pruning search, counting scored networks (candidates + origins, x repeats);
    # tqdm's rate is then candidates/s. Total: 126+108+90+72+54+36 op candidates, 14 edges, 7 origins.
    total = (sum(range(36, 127, 18)) + 14 + 7) * repeats
    bars = {s.search_id: tqdm(total=total, desc=f"{s.search_id} round {s.round + 1}/7", unit="cand",
                              position=i, disable=not progress, leave=True, dynamic_ncols=True, mininterval=1.0)
            for i, s in enumerate(states) if s.method in PRUNING_METHODS}
    while True:
        active = [s for s in states if s.stage in ("ops", "edges")]
        if not active:
            break
        round_start = time.perf_counter()
        jobs, cands_of = [], {}
        for s in active:
            masks = np.array(s.masks, dtype=bool)
            cands = op_candidates(masks) if s.stage == "ops" else edge_candidates()
            cands_of[s.search_id] = cands
            measures = METHOD_MEASURES[s.method]
            items: list[tuple[Hashable, np.ndarray]] = [((s.search_id, "origin"), masks)]
            items += [((s.search_id, cand), pruned(masks, cand)) for cand in cands]
            per_job = cfg.search.candidates_per_job
            for r in range(repeats):
                key = (cfg.experiment.seed, s.search_id, s.round, r)
                for i in range(0, len(items), per_job):
                    jobs.append(Job(specs[s.cells], key, measures,
                                    tuple(((ident, r), m) for ident, m in items[i:i + per_job])))

        scores: dict[tuple, Score] = {}
        workers: dict[tuple, set[str]] = {}

        def on_result(job: Job, label: str, results: list) -> None:
            for (ident, r), score in results:
                scores[(ident, r)] = score
                workers.setdefault(ident, set()).add(label)
                bar = bars.get(ident[0])
                if bar is not None:
                    bar.update(1)

        pool.run(jobs, on_result)
        wall = time.perf_counter() - round_start

        for s in active:
            masks = np.array(s.masks, dtype=bool)
            measures = METHOD_MEASURES[s.method]
            cn_name = next((m for m in measures if m.startswith("cn")), None)
            sid = s.search_id
            origin = {m: [getattr(scores[((sid, "origin"), r)], m) for r in range(repeats)] for m in measures}
            raw, deltas, secs, wk = {}, [], {}, {}
            for cand in cands_of[sid]:
                vals = {m: [getattr(scores[((sid, cand), r)], m) for r in range(repeats)] for m in measures}
                raw[cand] = vals

                def delta(m: str | None) -> float | None:
                    if m is None or m not in measures:
                        return None
                    return mean_delta([relative_delta(o, p) for o, p in zip(origin[m], vals[m])])

                deltas.append(Candidate(cand[0], cand[1], cand[2], delta(cn_name), delta("rn")))
                secs[cand] = float(sum(scores[((sid, cand), r)].seconds for r in range(repeats)))
                wk[cand] = workers[(sid, cand)]
            ranked = rank_candidates(deltas, decimals=3 if cfg.search.round_deltas else None)
            if s.stage == "ops":
                chosen = choose_prunes(ranked)
                removed = {(c.cell_type, c.edge, c.op) for c in chosen.values()}
                for cand in removed:
                    masks = pruned(masks, cand)
                if masks.sum(axis=2).max() == 1:
                    s.stage = "edges"
            else:
                kept = choose_edges(ranked)
                removed = {cand for cand in cands_of[sid] if cand[1] not in kept[cand[0]]}
                s.genotype = genotype_from_masks(masks, kept).to_str()
                s.stage = "done"
            rows = _candidate_rows(cfg, s, cfg.dataset.name, s.round + 1, ranked, raw, origin, cn_name, removed,
                                   wk, secs)
            store.write_rows(results_dir, "candidates", f"{sid}-r{s.round + 1:02d}", rows)
            s.round += 1
            s.masks = masks.tolist()
            s.candidates += len(cands_of[sid])
            s.device_seconds += float(sum(v.seconds for k, v in scores.items() if k[0][0] == sid))
            s.wall_seconds += wall
            s.workers |= set().union(*wk.values()) if wk else set()
            if sid in bars:
                bars[sid].set_description(f"{sid} round {min(s.round + 1, 7)}/7", refresh=False)
        _save_state(results_dir, digest, states)
        if stop_after_round is not None and all(s.round >= stop_after_round for s in active):
            for bar in bars.values():
                bar.close()
            raise SearchInterrupted(f"stopped after round {stop_after_round}")
    for bar in bars.values():
        bar.close()
    return _finish(cfg, states, by_id, getattr(pool, "device_kind", "cpu"), getattr(pool, "size", 1))


def _finish(cfg: ExperimentConfig, states: list[SearchState], by_id: dict[str, SearchPlan], device_kind: str,
            pool_size: int) -> list[dict[str, Any]]:
    """Write the `searches` rows and render the cells of every finished search."""
    from search_spaces.genotypes import Genotype
    from search_spaces.render import DotNotFoundError, render_genotype

    results_dir = cfg.results_dir
    rows = []
    warned = False
    for s in states:
        genotype = Genotype.from_str(s.genotype)
        row = {
            "experiment": cfg.experiment.name, "dataset": cfg.dataset.name, "method": s.method, "seed": s.seed,
            "cells": s.cells, "search_id": s.search_id, "genotype": s.genotype, "rounds": s.round,
            "candidates": s.candidates, "wall_seconds": s.wall_seconds, "device_seconds": s.device_seconds,
            "workers": pool_size if s.method in PRUNING_METHODS else 0,
            "device_kind": device_kind if s.method in PRUNING_METHODS else "none",
            "params": network_params(cfg, genotype, s.cells),
        }
        store.write_rows(results_dir, "searches", s.search_id, [row])
        try:
            render_genotype(genotype, results_dir / "cells", s.search_id, formats=("svg", "png"))
        except DotNotFoundError as exc:  # the .gv sources are written; say once how to get images
            if not warned:
                print(f"warning: {exc}", file=sys.stderr)
                warned = True
        rows.append(row)
    return rows


def network_params(cfg: ExperimentConfig, genotype: Any, cells: int) -> int:
    """Parameter count of the evaluation network (head over the training classes)."""
    from search_spaces.network import Network
    from trainers.data import load_split

    split = load_split(cfg.dataset.name, cfg.dataset.root or None, cfg.dataset.train_split,
                       image_size=cfg.dataset.image_size or None, seed=cfg.experiment.seed, **cfg.dataset.options)
    n_classes = len(split.class_names)
    channels = cfg.train.init_channels or cfg.search.init_channels
    net = Network(genotype, channels, n_classes, cells, in_channels=int(split.images.shape[1]))
    return int(sum(p.numel() for p in net.parameters()))


def iter_states(results_dir: Path) -> Iterable[SearchState]:
    path = Path(results_dir) / STATE_FILE
    if path.is_file():
        yield from (SearchState.from_json(d) for d in json.loads(path.read_text())["searches"])
