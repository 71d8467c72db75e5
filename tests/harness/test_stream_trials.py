"""Trials stream: a searched cell's training starts as soon as its own search ends, while
the other searches still run (`harness.trials.stream_trials`), with the same rows as the
sequential stages, and an interrupted run resumes with only the missing work.

A deterministic slow search: a fake scorer pool (scores are fixed linear functions of the
masks, as in test_search_rounds.py) that answers the pruning search's first job only once the
fixed-method trial has written its rows. Streaming, that happens while the pool waits;
in sequence (every search, then every trial) it never can, and the pool gives up."""
from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness import store
from harness.config import parse_config
from harness.scoring import N_EDGES, N_OPS, Score
from harness.search import SearchInterrupted, run_searches
from harness.trial_stream import FEED_END, SearchThread, TrialFeedSearcher
from tune_faults import failing_once_after_epoch_1

GATE_S = 120.0  # how long the slow pool waits for the fast search's trial before giving up


def stream_config(out: Path, **train):
    return parse_config({
        "experiment": {"name": "stream", "seed": 0, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 5, "val_classes": 3, "test_classes": 4, "images_per_class": 8}},
        "search": {"methods": ["random", "regions"], "seeds": [0], "cells": [2], "init_channels": 4,
                   "candidates_per_job": 50},
        "train": {"recipe": "synthetic", "epochs": 1, "batch_size": 32, **train},
        "evaluate": {"ways": 3, "shots": [1], "queries": 2, "episodes": 3},
        "resources": {"max_failures": 0},
    }, source="stream")


class LinearPool:
    """Scores = fixed random linear functions of the masks (no networks): the same genotype
    in any order. `gate(job)` runs before each job is answered."""

    size, device_kind = 1, "fake"

    def __init__(self) -> None:
        self.w_rn = np.random.default_rng(0).random((2, N_EDGES, N_OPS))
        self.events: list[str] = []
        self.answered = 0  # jobs scored so far

    def gate(self, job) -> None:
        pass

    def run(self, jobs, on_result) -> None:
        for job in jobs:  # a JobFeed keeps yielding what the handler adds
            self.gate(job)
            self.answered += 1
            on_result(job, "fake", [(ident, Score(rn=100.0 + float((self.w_rn * m).sum())))
                                    for ident, m in job.items])


class WaitsForTrial(LinearPool):
    """Holds the pruning search's first job until `trial_id` has its `trials` row (or GATE_S
    passes); records which came first. With `then_raise`, the search is interrupted there."""

    def __init__(self, results_dir: Path, trial_id: str, then_raise: bool = False) -> None:
        super().__init__()
        self.row = store.table_path(results_dir, "trials", trial_id)
        self.then_raise = then_raise

    def gate(self, job) -> None:
        if self.events:
            return
        deadline = time.monotonic() + GATE_S
        while not self.row.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.events.append("trial row, then search" if self.row.is_file() else "gave up waiting")
        if self.then_raise:
            raise SearchInterrupted("interrupted by the test after the fast search's trial")


def searcher(pool, cfg):
    def search(on_done, stop):
        return run_searches(cfg, pool, resume=True, progress=False, on_done=on_done, stop=stop)
    return search


def trial_id(cfg, method: str) -> str:
    from harness.plans import plan_searches

    return next(p.search_id for p in plan_searches(cfg) if p.method == method)


def results(cfg):
    trials = store.read_table(cfg.results_dir, "trials").set_index("trial_id").sort_index()
    searches = store.read_table(cfg.results_dir, "searches").set_index("search_id").sort_index()
    return searches["genotype"], trials[["genotype", "acc_1shot", "final_loss", "params"]]


# ----------------------------------------------------------------------------- unit: the feed


def test_the_searcher_hands_out_what_the_searches_put_while_a_trial_runs_and_finishes_when_none_does():
    """Finishing when nothing runs ends the experiment, so Tune frees the finished trials'
    resources (a blocked Tune held them: see harness.trial_stream); the caller starts the
    next experiment with the next trials."""
    feed: queue.Queue = queue.Queue()
    given = []
    x, y = {"trial": "x", "spec": {}}, {"trial": "y", "spec": {}}
    s = TrialFeedSearcher(feed, given.append, first=x)
    assert s.suggest("a") == x and given == [x]
    assert s.suggest("b") is None  # x still runs: Tune asks again later
    feed.put(y)
    assert s.suggest("c") == y and given == [x, y] and s.given == ["x", "y"]
    s.on_trial_complete("a")
    assert s.suggest("d") is None  # y still runs
    s.on_trial_complete("c", error=True)  # failed for good: it runs no more either
    assert s.suggest("e") == TrialFeedSearcher.FINISHED
    feed.put(x)
    assert s.suggest("f") == TrialFeedSearcher.FINISHED and feed.get_nowait() == x  # left for the next experiment


def test_the_feed_end_finishes_the_searcher_and_stays_on_the_feed_for_the_caller():
    feed: queue.Queue = queue.Queue()
    s = TrialFeedSearcher(feed, lambda c: None, first={"trial": "x", "spec": {}})
    s.suggest("a")
    feed.put(FEED_END)
    assert s.suggest("b") == TrialFeedSearcher.FINISHED  # although x runs: nothing follows
    assert feed.get_nowait() is FEED_END and feed.empty()


def test_a_restored_searcher_hands_out_nothing_and_keeps_what_it_gave(tmp_path):
    import pickle

    feed: queue.Queue = queue.Queue()
    s = TrialFeedSearcher(feed, lambda c: None)
    feed.put({"trial": "x", "spec": {}})
    s.suggest("a")
    s.save(str(tmp_path / "state.json"))
    restored = pickle.loads(pickle.dumps(s))  # as Tune stores it with the experiment
    restored.restore(str(tmp_path / "state.json"))
    assert restored.given == ["x"]
    assert restored.suggest("b") == TrialFeedSearcher.FINISHED  # no feed: Tune only resumes its trials


def test_the_search_thread_releases_ends_the_feed_and_raises_the_search_error_in_the_caller():
    feed: queue.Queue = queue.Queue()
    released = []

    def failing(stop):
        raise ValueError("bad search")

    t = SearchThread(failing, feed, lambda: released.append(True))
    t.start()
    with pytest.raises(ValueError, match="bad search"):
        t.result()
    assert released == [True] and feed.get_nowait() is FEED_END


def test_a_stopped_search_thread_adds_only_its_own_error_to_the_cause():
    def waits(stop):
        stop.wait(30)
        raise SearchInterrupted("stopped")

    t = SearchThread(waits, queue.Queue())
    t.start()
    cause = KeyboardInterrupt()
    t.stop(cause)
    assert not t.is_alive() and not getattr(cause, "__notes__", [])  # asked to stop: not a second error

    def fails(stop):
        raise ValueError("search broke")

    t = SearchThread(fails, queue.Queue())
    t.start()
    t.join()
    cause = RuntimeError("a trial failed")
    t.stop(cause)
    assert cause.__notes__ == ["the searches ended with an error too: search broke"]


def test_each_search_is_announced_as_it_ends_with_its_row_written_and_a_warning_said_once(tmp_path, monkeypatch,
                                                                                           capsys):
    from search_spaces import render

    def no_dot(*args, **kwargs):
        raise render.DotNotFoundError([tmp_path / f"{args[2]}.gv"])

    monkeypatch.setattr(render, "render_genotype", no_dot)
    cfg = stream_config(tmp_path)
    pool = LinearPool()
    seen = []

    def on_done(row):
        written = store.table_path(cfg.results_dir, "searches", row["search_id"]).is_file()
        seen.append((row["method"], written, pool.answered))

    rows = run_searches(cfg, pool, progress=False, on_done=on_done)
    # the fixed method at once, before any job is scored; the pruning search after its last job
    assert seen == [("random", True, 0), ("regions", True, pool.answered)] and pool.answered > 0
    assert [r["method"] for r in rows] == ["random", "regions"]
    assert capsys.readouterr().err.count("'dot' executable not found") == 1  # once, not once per search


def test_a_set_stop_event_interrupts_the_searches_at_the_next_scored_job(tmp_path):
    cfg = stream_config(tmp_path)
    stop = threading.Event()
    stop.set()
    with pytest.raises(SearchInterrupted, match="stopped"):
        run_searches(cfg, LinearPool(), progress=False, on_done=lambda row: None, stop=stop)


# ----------------------------------------------------------------------------- end to end (Ray, Tune)


@pytest.mark.slow
def test_a_fast_search_trains_while_a_slow_one_runs_and_rows_equal_the_sequential_path(tmp_path, ray_session):
    from harness.pipeline import trial_stage
    from harness.trials import stream_trials

    cfg = stream_config(tmp_path / "stream")
    pool = WaitsForTrial(cfg.results_dir, trial_id(cfg, "random"))
    rows = stream_trials(cfg, searcher(pool, cfg), verbose=0)
    assert pool.events == ["trial row, then search"]  # the random cell trained during the search
    assert sorted(r["method"] for r in rows) == ["random", "regions"]
    assert trial_stage(cfg, rows, verbose=0) == sorted(r["search_id"] for r in rows)  # nothing left
    records = json.loads((cfg.results_dir / "state" / "tune_experiments.json").read_text())["experiments"]
    # one experiment per batch of trials that arrive while none runs: here one or two
    assert all(r["name"].startswith("trials-stream-") for r in records) and 1 <= len(records) <= 2
    assert sorted(t for r in records for t in r["trials"]) == sorted(r["search_id"] for r in rows)
    # each trial's folder is named by its label (not by the spec its config carries)
    folders = sorted(p.name for r in records for p in (cfg.results_dir / "tune" / r["name"]).glob("run_trial_*"))
    assert [f.rsplit("_", 1)[0] for f in folders] == ["run_trial_random-s0-c2", "run_trial_regions-s0-c2"]

    # the sequential stages on the same config: every search, then every trial
    seq = stream_config(tmp_path / "sequential")
    seq_rows = run_searches(seq, LinearPool(), progress=False)
    trial_stage(seq, seq_rows, verbose=0)
    streamed, sequential = results(cfg), results(seq)
    assert streamed[0].equals(sequential[0])  # genotypes
    assert streamed[1].equals(sequential[1])  # same trials, same accuracies, bit for bit


@pytest.mark.slow
def test_an_interrupted_stream_reruns_only_the_missing_trials(tmp_path, ray_session):
    from harness.pipeline import trial_stage
    from harness.trials import stream_trials

    cfg = stream_config(tmp_path / "stream")
    fast = trial_id(cfg, "random")
    with pytest.raises(SearchInterrupted):  # the search's error, once the started trial is done
        stream_trials(cfg, searcher(WaitsForTrial(cfg.results_dir, fast, then_raise=True), cfg), verbose=0)
    row = store.table_path(cfg.results_dir, "trials", fast)
    assert row.is_file() and not (cfg.results_dir / "searches" / f"{trial_id(cfg, 'regions')}.parquet").exists()
    stamp = row.stat().st_mtime_ns

    rows = stream_trials(cfg, searcher(LinearPool(), cfg), verbose=0)
    trial_stage(cfg, rows, verbose=0)
    records = json.loads((cfg.results_dir / "state" / "tune_experiments.json").read_text())["experiments"]
    # the second run's experiment holds only the missing trial; the finished one is not rewritten
    assert [sorted(r["trials"]) for r in records] == [[fast], [trial_id(cfg, "regions")]]
    assert row.stat().st_mtime_ns == stamp
    assert sorted(store.read_table(cfg.results_dir, "trials")["trial_id"]) == sorted(r["search_id"] for r in rows)


def test_the_signal_handlers_a_tune_run_leaves_behind_are_undone():
    """Tune installs its SIGINT handler and undoes it only when a signal arrives; a finished
    run's handler would swallow the next Ctrl-C (a streamed run waiting for its trials)."""
    import signal

    from harness.trials import tune_signal_handlers_undone

    def mine(sig, frame):
        pass

    before = signal.signal(signal.SIGINT, mine)
    try:
        with tune_signal_handlers_undone():
            signal.signal(signal.SIGINT, lambda sig, frame: None)  # as tune.run does
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_only_searches_run_stops_them_and_raises_at_once(tmp_path, ray_session):
    """The main thread waits for the next trials in short polls, so Ctrl-C is heard while a
    long search runs and no trial does (Tune's own wait there ignored it for up to 600 s)."""
    import _thread
    import signal

    from harness.trials import stream_trials

    asked_to_stop = threading.Event()

    def long_search(on_done, stop):
        threading.Timer(0.5, _thread.interrupt_main).start()  # Ctrl-C
        if stop.wait(60):
            asked_to_stop.set()
        raise SearchInterrupted("stopped")

    # Python's own Ctrl-C handler, as in a terminal (a background job may start with SIGINT
    # ignored, and then interrupt_main does nothing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            stream_trials(stream_config(tmp_path / "stream"), long_search, verbose=0)
        assert asked_to_stop.is_set() and time.monotonic() - started < 30
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_failed_streamed_trial_is_resumed_from_its_epoch_by_the_next_run(tmp_path, ray_session, monkeypatch):
    """The streamed Tune experiment is restored (not started over) for the trials it holds."""
    from harness import trials
    from harness.pipeline import trial_stage
    from harness.trials import stream_trials

    cfg = stream_config(tmp_path / "stream", epochs=2)
    markers = tmp_path / "markers"
    markers.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(trials, "run_trial", failing_once_after_epoch_1(marker_dir=str(markers)))
        with pytest.raises(RuntimeError, match="trial\\(s\\) failed"):  # the same error as the sequential path
            stream_trials(cfg, searcher(LinearPool(), cfg), verbose=0)
        assert not store.table_files(cfg.results_dir, "trials")
        streamed = json.loads((cfg.results_dir / "state" / "tune_experiments.json").read_text())["experiments"]
        rows = stream_trials(cfg, searcher(LinearPool(), cfg), verbose=0)  # nothing new to stream
        trial_stage(cfg, rows, verbose=0)  # restores the streamed experiment
    assert sorted(p.name for p in markers.iterdir()) == sorted(trials.trial_label(s)
                                                               for s in trials.trial_specs(cfg, rows))
    history = store.read_table(cfg.results_dir, "history")
    assert sorted(zip(history["trial_id"], history["epoch"])) == sorted((r["search_id"], e) for r in rows
                                                                        for e in (1, 2))
    records = json.loads((cfg.results_dir / "state" / "tune_experiments.json").read_text())["experiments"]
    assert [r["name"] for r in records] == [r["name"] for r in streamed]  # restored, no new experiment


@pytest.mark.parametrize("proxies, stream, expect", [
    (False, True, ["streamed_stage", "trial_stage"]),
    (False, False, ["search_stage", "trial_stage"]),
    (True, True, ["search_stage", "proxy_stage", "trial_stage", "finish_proxy_study"]),  # the study needs every genotype first
])
def test_run_streams_its_trials_unless_the_proxy_study_needs_every_genotype_first(tmp_path, monkeypatch, proxies,
                                                                                  stream, expect):
    import dataclasses

    from harness import pipeline

    cfg = stream_config(tmp_path)
    cfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, proxies=proxies))
    calls = []
    for stage in ("streamed_stage", "search_stage", "proxy_stage", "trial_stage", "finish_proxy_study"):
        monkeypatch.setattr(pipeline, stage, lambda *a, _name=stage, **k: calls.append(_name) or [])
    monkeypatch.setattr(pipeline, "check_cluster_storage", lambda cfg: None)
    monkeypatch.setattr(pipeline, "report_stage", lambda cfg: None)
    pipeline.run_experiment(cfg, progress=False, stream=stream)
    assert calls == expect
