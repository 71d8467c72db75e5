"""The pruning driver (paper Algorithm 1): every search of an experiment, round by round.

All searches of an experiment (methods x seeds x cell counts) advance together: a round
collects the candidates of every active search, scores them on the shared `ScorerPool`,
then ranks and prunes each search on its own (`harness.ranking`). Per round and repeat the
origin net is scored once; candidates mask one more op. After 6 rounds every edge has one op;
then edge selection as the reference (`prune_func_rank_group`): per cell type (normal, then
reduce) and node group with more than 2 input edges ((2,5), then (5,9)), one round scores
removing each edge of that group against the current net, ranks the group on its own, keeps
its 2 most important edges and prunes the rest; the next group is scored with those already
pruned. So a pruning search has 6 + 4 = 10 rounds (the `rounds` column of `searches`).

After each round the state of every search is checkpointed (`state/searches.json`, atomic)
and the round's candidate rows are written under a deterministic key, so `resume=True`
continues from the last finished round and ends with the genotype an uninterrupted run gives.

Proxy methods (`harness.config.PRUNING_METHODS`): "<proxy>" ranks the proxy in the
CN slot (`measure_delta`: oriented so the op whose removal costs the proxy least is pruned
first), "<proxy>+regions" adds the regions slot. Their candidate rows hold the proxy's
values in the `cn_origin`/`cn_pruned` columns (the primary score of the method).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping

import numpy as np

from harness import store
from harness.config import (FIXED_METHODS, GENOTYPE_METHOD_PREFIX, PROXY_MEASURE_PREFIX, PRUNING_METHODS,
                            ExperimentConfig, absolute_root, to_toml)
from harness.errors import UserError
from harness.ranking import (Candidate, choose_prunes, keep_edges, oriented_delta, rank_candidates, ranking_mode,
                             relative_delta)
from harness.plans import (STATE_FILE, SearchPlan, plan_searches,  # noqa: F401  (re-exported)
                           read_state_file as _read_state_file, searches_with_progress)
from harness.scoring import N_CELL_TYPES, N_EDGES, N_OPS, Job, JobFeed, Score, ScoreSpec, spec_from_config
from search_spaces.genotypes import CELL_TYPES, INPUTS_PER_NODE, NODE_EDGES
from trainers.seeds import generator



def primary_measure(measures: tuple[str, ...]) -> str | None:
    """The measure ranked in the CN slot: a condition number or a "proxy:<name>".

    measures: a method's measure names (`harness.config.PRUNING_METHODS[method]`); the CN
    column (and rank) of a method is its one CN measure or, for a proxy method, its proxy."""
    return next((m for m in measures if m.startswith(("cn", PROXY_MEASURE_PREFIX))), None)


def measure_delta(measure: str, origin: float, pruned: float) -> float:
    """Per-repeat delta of one measure, oriented as its slot of the ranking expects:
    CN and regions as Algorithm 1 (`relative_delta`), proxies by `oriented_delta`."""
    if measure.startswith(PROXY_MEASURE_PREFIX):
        from kernels.proxy_names import PROXY_DIRECTIONS

        try:
            return oriented_delta(origin, pruned, PROXY_DIRECTIONS[measure[len(PROXY_MEASURE_PREFIX):]])
        except ValueError as exc:  # name the proxy: the message alone does not say which
            raise ValueError(f"{measure}: {exc}") from exc
    return relative_delta(origin, pruned)


class SearchInterrupted(RuntimeError):
    """Raised by `run_searches(stop_after_round=k)` (tests, and a user's Ctrl-C)."""


@dataclass
class SearchState:
    """The JSON-serialisable progress of one search."""

    search_id: str
    method: str
    seed: int
    cells: int
    stage: str = "ops"                    # ops | edges | done
    round: int = 0                        # scoring rounds finished
    masks: list = field(default_factory=lambda: np.ones((N_CELL_TYPES, N_EDGES, N_OPS), bool).tolist())
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
    return [(c, e, o) for c in range(N_CELL_TYPES) for e in range(N_EDGES) if masks[c, e].sum() > 1
            for o in range(N_OPS) if masks[c, e, o]]


KEEP_EDGES = INPUTS_PER_NODE  # inputs per intermediate node of a DARTS cell
# Edges feeding each intermediate node: node 0 <- edges 0,1; node 1 <- 2..4; node 2 <- 5..8.
EDGE_GROUPS: tuple[tuple[int, int], ...] = NODE_EDGES
# Rounds of a pruning search: 6 op rounds (7 ops -> 1 per edge), then one per node group with
# more than 2 inputs in each cell type (groups (2,5) and (5,9), normal and reduce).
SEARCH_ROUNDS = (N_OPS - 1) + N_CELL_TYPES * sum(1 for lo, hi in EDGE_GROUPS if hi - lo > KEEP_EDGES)


def pruning_networks_per_round() -> tuple[int, ...]:
    """Networks one pruning search scores per repeat in each of its SEARCH_ROUNDS rounds, in
    order: op round r (0-based) has N_OPS - r active ops on each of the N_CELL_TYPES x N_EDGES
    edges, then one round per node group with more than KEEP_EDGES inputs and cell type (its
    edges), each round with one origin. For the DARTS space: 126+108+90+72+54+36 op
    candidates, then 3, 4, 3, 4 edges (normal, then reduce), plus 1 per round."""
    ops = [N_CELL_TYPES * N_EDGES * (N_OPS - r) + 1 for r in range(N_OPS - 1)]
    edges = [hi - lo + 1 for _ in range(N_CELL_TYPES) for lo, hi in EDGE_GROUPS if hi - lo > KEEP_EDGES]
    return (*ops, *edges)


def pruning_network_count() -> int:
    """Networks one pruning search scores per repeat (`pruning_networks_per_round`, summed)."""
    return sum(pruning_networks_per_round())


def active_edges(masks: np.ndarray, cell_type: int, lo: int = 0, hi: int = N_EDGES) -> list[int]:
    """Edges in [lo, hi) of one cell type that still have an op."""
    return [e for e in range(lo, hi) if masks[cell_type, e].any()]


def next_edge_group(masks: np.ndarray) -> tuple[int, int, int] | None:
    """The next (cell_type, lo, hi) of edge selection: the first node group, cell types in
    order normal then reduce, that still has more than 2 input edges; None when done.
    Derived from the masks alone, so a resumed search continues with the right group."""
    for c in range(N_CELL_TYPES):
        for lo, hi in EDGE_GROUPS:
            if len(active_edges(masks, c, lo, hi)) > KEEP_EDGES:
                return c, lo, hi
    return None


def edge_candidates(masks: np.ndarray) -> list[tuple[int, int, int]]:
    """Removal of each remaining edge of the next node group (op = -1: the whole edge)."""
    group = next_edge_group(masks)
    if group is None:
        return []
    c, lo, hi = group
    return [(c, e, -1) for e in active_edges(masks, c, lo, hi)]


def pruned(masks: np.ndarray, cand: tuple[int, int, int]) -> np.ndarray:
    out = masks.copy()
    c, e, o = cand
    if o >= 0:
        out[c, e, o] = False
    else:
        out[c, e, :] = False  # the whole edge contributes nothing
    return out


def genotype_from_masks(masks: np.ndarray):
    """The genotype of fully pruned masks: one op on each of the 2 kept edges per node."""
    from search_spaces.genotypes import Genotype
    from search_spaces.ops import PRIMITIVES

    def edges(c: int) -> dict[int, str]:
        out = {}
        for e in active_edges(masks, c):
            ops = np.flatnonzero(masks[c, e])
            if len(ops) != 1:
                raise RuntimeError(f"edge {e} of {CELL_TYPES[c]} cell has {len(ops)} ops at edge selection")
            out[e] = PRIMITIVES[int(ops[0])]
        return out

    return Genotype.from_edges(normal=edges(0), reduce=edges(1))


def config_digest(cfg: ExperimentConfig) -> str:
    """What must not change between a run and its resume (everything but resources).

    The dataset root is hashed resolved, so `--root data/x` and `--root ./data/x` (or an
    absolute spelling of the same folder) resume the same run.
    """
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, root=absolute_root(cfg.dataset.root)),
                              resources=type(cfg.resources)(), source="", sets=())
    text = to_toml(cfg)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_state(results_dir: Path, digest: str, states: list[SearchState]) -> None:
    # Growth: the states of searches this config no longer lists are kept, so adding them
    # back resumes them instead of redoing them.
    path = results_dir / STATE_FILE
    old = _read_state_file(path, warn=False) if path.is_file() else None
    ids = {s.search_id for s in states}
    others = [d for d in (old or {}).get("searches", []) if isinstance(d, dict) and d.get("search_id") not in ids]
    data = {"config_digest": digest, "searches": [s.to_json() for s in states] + others}
    if data != old:  # a rerun with nothing to do rewrites nothing
        store.write_json_atomic(path, data)


# The way out of a state written by another config (`run` has no --resume: it always resumes).
FRESH_HINT = ("rerun with --fresh to move the old results aside into RESULTS_DIR/previous/ and start over "
              "(nothing is deleted), use another experiment name, or restore the original config")


def _load_state(cfg: ExperimentConfig, plans: list[SearchPlan], *, warn: bool = True,
                recorded: Mapping[str, Any] | None = None) -> list[SearchState] | None:
    """The saved state of each search of `plans` (a fresh one for a search without any).

    Growth: each search is checked on its own against the settings it was recorded with
    (`harness.identity`); other seeds, methods or cell counts in the file or the config do
    not matter. A search with progress made under other settings is refused (UserError
    naming the changed settings); one without progress starts over. `recorded`: the recorded
    identities (`harness.growth.recorded_identities`); default: the ledger on disk.
    """
    from harness.identity import changed_settings, read_ledger, search_identity, search_key

    results_dir = cfg.results_dir
    path = results_dir / STATE_FILE
    if not path.is_file():
        return None
    data = _read_state_file(path, warn=warn)
    if data is None:
        return None
    try:
        saved = {d["search_id"]: SearchState.from_json(d) for d in data["searches"]}
    except (TypeError, KeyError, ValueError) as exc:
        if warn:
            print(f"warning: {path} is unreadable ({exc}); the searches start over", file=sys.stderr)
        return None
    recorded = recorded if recorded is not None else (read_ledger(results_dir) or {})
    # A state file of older code has no identities: then its config must be this one.
    same_config = data.get("config_digest") == config_digest(cfg)
    states = []
    for p in plans:
        state = saved.get(p.search_id)
        old, new = recorded.get(search_key(p.search_id)), search_identity(cfg, p.method, p.seed, p.cells)
        if state is not None and ((old is None and not same_config) or (old is not None and old != new)):
            if state.round or state.stage == "done":
                changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed_settings(old or {}, new)[:3])
                raise UserError(f"{path} was written by a different experiment config for search {p.search_id}"
                                f"{f' ({changes})' if old is not None else ''}; {FRESH_HINT}")
            state = None
        states.append(state or SearchState(p.search_id, p.method, p.seed, p.cells))
    return states


def check_resumable(cfg: ExperimentConfig, recorded: Mapping[str, Any] | None = None) -> None:
    """Refuse (UserError) before anything is written if a search's saved progress was made
    with other settings (`_load_state`; `recorded` as there)."""
    _load_state(cfg, plan_searches(cfg), warn=False, recorded=recorded)  # run_searches warns


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
            "cells": plan.cells, "search_id": plan.search_id, "round": round_, "cell_type": CELL_TYPES[c.cell_type],
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


def search_bars(states: list[SearchState], repeats: int, progress: bool, stream: Any = None) -> dict[str, Any]:
    """Progress of the unfinished pruning searches among `states`, by search id, counting
    scored networks (candidates + origins, x `repeats`): tqdm's rate is then candidates/s. A
    resumed search starts at the networks of its finished rounds; finished searches (of an
    earlier run, or grown experiments) are not counted at all.

    On a terminal one tqdm bar per search; in a log (`stream`, default stderr, not a terminal)
    ONE periodic line for all of them together (18 bars for `ablation_mini` would garble a
    log); nothing when `progress` is false.
    """
    from trainers.progress import LineProgress, is_terminal, progress_bar

    per_round = pruning_networks_per_round()
    total = sum(per_round) * repeats
    todo = [s for s in states if s.method in PRUNING_METHODS and s.stage != "done"]
    done = {s.search_id: sum(per_round[:s.round]) * repeats for s in todo}
    if progress and todo and not is_terminal(stream):
        n = len(todo)
        shared = LineProgress(total * n, f"{n} search{'es' if n > 1 else ''}", "cand", stream=stream,
                              initial=sum(done.values()))
        return {s.search_id: shared for s in todo}
    return {s.search_id: progress_bar(total, f"{s.search_id} round {s.round + 1}/{SEARCH_ROUNDS}", "cand",
                                      enabled=progress, stream=stream, initial=done[s.search_id], position=i,
                                      leave=True, dynamic_ncols=True, mininterval=1.0)
            for i, s in enumerate(todo)}


def run_searches(cfg: ExperimentConfig, pool: Any, *, resume: bool = False, stop_after_round: int | None = None,
                 progress: bool = True, on_done: Callable[[dict[str, Any]], None] | None = None,
                 stop: Any = None) -> list[dict[str, Any]]:
    """Run (or resume) every search of `cfg` on `pool`; returns the `searches` rows.

    Writes `candidates/<search_id>-rNN.parquet` per round, `searches/<search_id>.parquet`
    per finished search, the state checkpoint, and the rendered cells.

    `on_done(row)`: called with each search's `searches` row as soon as that search is done
    (at once for fixed methods and searches found done; a pruning search after its last
    round), its row and cells then already written; this is how a searched cell's training
    starts while other searches still run (`harness.trial_stream`). Without it the rows are
    written when every search is done. `stop`: an event (`is_set()`); once set, the next
    scored job raises `SearchInterrupted` (the state keeps every finished round).
    """
    from trainers.progress import LineProgress

    results_dir = cfg.results_dir
    plans = plan_searches(cfg)
    digest = config_digest(cfg)
    states = (_load_state(cfg, plans) if resume else None) or [
        SearchState(p.search_id, p.method, p.seed, p.cells) for p in plans]
    for i, s in enumerate(states):
        if s.method in PRUNING_METHODS and not _rounds_on_disk(results_dir, s):
            print(f"warning: candidate rows of {s.search_id} are missing; that search starts over",
                  file=sys.stderr)
            states[i] = SearchState(s.search_id, s.method, s.seed, s.cells)
    by_id = {p.search_id: p for p in plans}
    # growth: searches found done are not rewritten (`_finish`); a fresh start rewrites all
    done_before = {s.search_id for s in states if s.stage == "done"}
    specs: dict[int, ScoreSpec] = {c: spec_from_config(cfg, c) for c in cfg.search.cells}
    mode = ranking_mode(cfg.search.ranking)
    for s in states:
        if s.stage != "done" and s.method not in PRUNING_METHODS:
            s.genotype = fixed_genotype(by_id[s.search_id], cfg.experiment.seed).to_str()
            s.stage = "done"
    _record_search_identities(cfg, plans)  # what each search is made with (`harness.identity`)
    _save_state(results_dir, digest, states)
    repeats = cfg.search.repeats
    bars = search_bars(states, repeats, progress)
    by_search = {s.search_id: s for s in states}
    rounds: dict[str, _Round] = {}
    feed = JobFeed()
    device_kind, pool_size = getattr(pool, "device_kind", "cpu"), getattr(pool, "size", 1)
    finished: dict[str, dict[str, Any]] = {}  # rows written (and handed to on_done) so far
    warned: list[str] = []  # said once for all searches, not once per search

    def announce(done: list[SearchState]) -> None:
        if on_done is None:
            return
        rows = _finish(cfg, done, by_id, device_kind, pool_size, done_before, warned)
        for s, row in zip(done, rows):
            finished[s.search_id] = row
            on_done(row)

    def start_round(s: SearchState) -> list[Job]:
        """The jobs of `s`'s next round (none when it is done or stops here)."""
        if s.stage not in ("ops", "edges") or (stop_after_round is not None and s.round >= stop_after_round):
            return []
        masks = np.array(s.masks, dtype=bool)
        cands = op_candidates(masks) if s.stage == "ops" else edge_candidates(masks)
        items: list[tuple[Hashable, np.ndarray]] = [((s.search_id, "origin"), masks)]
        items += [((s.search_id, cand), pruned(masks, cand)) for cand in cands]
        per_job = cfg.search.candidates_per_job
        jobs = [Job(specs[s.cells], (cfg.experiment.seed, s.search_id, s.round, r), PRUNING_METHODS[s.method],
                    tuple(((ident, r), m) for ident, m in items[i:i + per_job]))
                for r in range(repeats) for i in range(0, len(items), per_job)]
        rounds[s.search_id] = _Round(cands, len(jobs), time.perf_counter())
        return jobs

    def on_result(job: Job, label: str, results: list) -> None:
        if stop is not None and stop.is_set():
            raise SearchInterrupted("stopped: the command is ending")
        sid = job.key[1]  # the key start_round gave it: (experiment seed, search id, round, repeat)
        rnd = rounds[sid]
        for (ident, r), score in results:
            rnd.scores[(ident, r)] = score
            rnd.workers.setdefault(ident, set()).add(label)
            bar = bars.get(sid)
            if bar is not None:
                bar.update(1)
        rnd.jobs_left -= 1
        if rnd.jobs_left:
            return
        # This search's round is complete: prune, record, and submit its next round at once
        # (the other searches' rounds go on; none waits for another's).
        del rounds[sid]
        s = by_search[sid]
        _close_round(cfg, s, rnd, repeats, mode)
        _save_state(results_dir, digest, states)
        if sid in bars and not isinstance(bars[sid], LineProgress):
            bars[sid].set_description(f"{sid} round {min(s.round + 1, SEARCH_ROUNDS)}/{SEARCH_ROUNDS}", refresh=False)
        feed.add(start_round(s))
        if s.stage == "done":
            announce([s])

    announce([s for s in states if s.stage == "done"])
    for s in states:
        feed.add(start_round(s))
    if feed:
        pool.run(feed, on_result)
    if rounds:  # a pool returned with work in flight: a programming error, never a silent half-search
        raise RuntimeError(f"the scorer pool returned before rounds of {sorted(rounds)} were scored")
    if stop_after_round is not None and any(s.stage in ("ops", "edges") for s in states):
        for bar in bars.values():
            bar.close()
        raise SearchInterrupted(f"stopped after round {stop_after_round}")
    for bar in bars.values():
        bar.close()
    if on_done is not None:  # every row was written as its search ended
        return [finished[s.search_id] for s in states]
    return _finish(cfg, states, by_id, device_kind, pool_size, done_before)


@dataclass
class _Round:
    """One search's round in flight: its candidates, the scores so far, who scored them."""

    cands: list[tuple[int, int, int]]
    jobs_left: int
    started: float
    scores: dict[tuple, Score] = field(default_factory=dict)
    workers: dict[Hashable, set[str]] = field(default_factory=dict)


def _close_round(cfg: ExperimentConfig, s: SearchState, rnd: _Round, repeats: int, mode: Any) -> None:
    """Rank `s`'s candidates of the round `rnd` (all scored), prune, write its candidate rows and
    advance `s` (masks, stage, counters; the genotype when the last edge group is decided)."""
    masks = np.array(s.masks, dtype=bool)
    measures = PRUNING_METHODS[s.method]
    cn_name = primary_measure(measures)
    sid, scores = s.search_id, rnd.scores
    origin = {m: [scores[((sid, "origin"), r)].value(m) for r in range(repeats)] for m in measures}
    raw, deltas, secs, wk = {}, [], {}, {}
    for cand in rnd.cands:
        vals = {m: [scores[((sid, cand), r)].value(m) for r in range(repeats)] for m in measures}
        raw[cand] = vals

        def delta(m: str | None) -> float | None:
            if m is None or m not in measures:
                return None
            return mode.aggregate([measure_delta(m, o, p) for o, p in zip(origin[m], vals[m])])

        deltas.append(Candidate(cand[0], cand[1], cand[2], delta(cn_name), delta("rn")))
        secs[cand] = float(sum(scores[((sid, cand), r)].seconds for r in range(repeats)))
        wk[cand] = rnd.workers[(sid, cand)]
    ranked = rank_candidates(deltas, mode=cfg.search.ranking)
    if s.stage == "ops":
        chosen = choose_prunes(ranked)
        removed = {(c.cell_type, c.edge, c.op) for c in chosen.values()}
    else:  # one node group: keep its 2 most important edges
        kept = keep_edges(ranked, KEEP_EDGES)
        removed = {cand for cand in rnd.cands if cand[1] not in kept}
    for cand in removed:
        masks = pruned(masks, cand)
    if s.stage == "ops" and masks.sum(axis=2).max() == 1:
        s.stage = "edges"
    elif s.stage == "edges" and next_edge_group(masks) is None:
        s.genotype = genotype_from_masks(masks).to_str()
        s.stage = "done"
    rows = _candidate_rows(cfg, s, cfg.dataset.name, s.round + 1, ranked, raw, origin, cn_name, removed, wk, secs)
    store.write_rows(cfg.results_dir, "candidates", f"{sid}-r{s.round + 1:02d}", rows)
    s.round += 1
    s.masks = masks.tolist()
    s.candidates += len(rnd.cands)
    s.device_seconds += float(sum(v.seconds for v in scores.values()))
    s.wall_seconds += time.perf_counter() - rnd.started  # this search's own round, not the slowest one's
    s.workers |= set().union(*wk.values()) if wk else set()


def _finish(cfg: ExperimentConfig, states: list[SearchState], by_id: dict[str, SearchPlan], device_kind: str,
            pool_size: int, done_before: set[str] = frozenset(), warned: list[str] | None = None
            ) -> list[dict[str, Any]]:
    """Write the `searches` rows and render the cells of every finished search; a search of
    `done_before` (found done when the run started) keeps its readable row and cells.
    `warned`: the kinds of warning printed so far (appended to), so that one said by an earlier
    call (a search finished on its own, `run_searches(on_done=...)`) is not said again."""
    from harness.provenance import code_version
    from search_spaces.genotypes import Genotype
    from search_spaces.render import DotNotFoundError, render_genotype

    results_dir = cfg.results_dir
    rows = []
    warned = [] if warned is None else warned
    finished = _finished_search_rows(results_dir, [s.search_id for s in states if s.search_id in done_before])
    for s in states:
        if s.search_id in finished:  # growth: a finished search's row and cells are not rewritten
            rows.append(finished[s.search_id])
            continue
        genotype = Genotype.from_str(s.genotype)
        row = {
            "experiment": cfg.experiment.name, "dataset": cfg.dataset.name, "method": s.method, "seed": s.seed,
            "cells": s.cells, "search_id": s.search_id, "genotype": s.genotype, "rounds": s.round,
            "candidates": s.candidates, "wall_seconds": s.wall_seconds, "device_seconds": s.device_seconds,
            "workers": pool_size if s.method in PRUNING_METHODS else 0,
            "device_kind": device_kind if s.method in PRUNING_METHODS else "none",
            "params": network_params(cfg, genotype, s.cells),
            **kernel_columns(cfg, s.method, s.cells), "git_sha": code_version(),
        }
        store.write_rows(results_dir, "searches", s.search_id, [row])
        try:
            render_genotype(genotype, results_dir / "cells", s.search_id, formats=("svg", "png"))
        except DotNotFoundError as exc:  # the .gv sources are written; say once how to get images
            if type(exc).__name__ not in warned:  # each search's message names its own files
                print(f"warning: {exc}", file=sys.stderr)
                warned.append(type(exc).__name__)
        rows.append(row)
    return rows


def _record_search_identities(cfg: ExperimentConfig, plans: list[SearchPlan]) -> None:
    from harness.identity import merge_into_ledger, search_unit

    merge_into_ledger(cfg.results_dir, [search_unit(cfg, p.search_id, p.method, p.seed, p.cells) for p in plans])


def _finished_search_rows(results_dir: Path, search_ids: list[str]) -> dict[str, dict[str, Any]]:
    """search id -> its `searches` row, for the searches of `search_ids` with a readable row
    on disk (an unreadable one is rewritten)."""
    rows = {}
    for sid in search_ids:
        path = store.table_path(results_dir, "searches", sid)
        if not path.is_file():
            continue
        try:
            (row,) = store.read_file(path, "searches").to_pylist()
        except (store.SchemaError, ValueError):  # unreadable, or not exactly one row
            continue
        row.pop("schema_version", None)
        rows[sid] = row
    return rows


def kernel_columns(cfg: ExperimentConfig, method: str, cells: int) -> dict[str, Any]:
    """The `searches` columns algorithm / inner_time / reg: the MetaNTK settings a search with
    `cells` cells scored with; "ntk" for the plain NTK; "" and NaN when it scored no kernel."""
    measures = PRUNING_METHODS.get(method, ())
    if "cn_meta" in measures:
        k = cfg.search.kernel_for(cells)
        return {"algorithm": k.algorithm, "inner_time": k.inner_time, "reg": k.reg}
    return {"algorithm": "ntk" if "cn_ntk" in measures else "", "inner_time": math.nan, "reg": math.nan}


def network_params(cfg: ExperimentConfig, genotype: Any, cells: int) -> int:
    """Parameter count of the evaluation network (head over the training classes)."""
    from harness.specs import data_spec
    from search_spaces.network import Network

    split = data_spec(cfg).load(cfg.dataset.train_split)
    n_classes = len(split.class_names)
    channels = cfg.train.init_channels or cfg.search.init_channels
    net = Network(genotype, channels, n_classes, cells, in_channels=int(split.images.shape[1]))
    return int(sum(p.numel() for p in net.parameters()))
