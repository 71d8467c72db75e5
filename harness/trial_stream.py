"""Trials that start as soon as their search ends (`metantk-nas run`'s default): the Tune and
thread mechanics. `harness.trials.stream_trials` uses them.

`stream_trials` runs every search of an experiment in a driver thread
(`harness.search.run_searches` with `on_done`) and Tune for their trials in the main thread
(Tune's Ctrl-C handling needs the main thread). Each search, as it ends, puts its trials on a
queue. The main thread waits for the first of them, then runs a Tune experiment whose search
algorithm, `TrialFeedSearcher`, hands Tune the trials on the queue one at a time, each trial's
spec in its config: `None` ("nothing yet") while a trial it gave still runs, `FINISHED` once
none does and the queue is empty. The next trials to arrive start the next experiment. So a
random or fixed cell trains while the MetaNTK searches score, and a short search's cell does
not wait for the longest search. Scorer actors and trials share the cluster: a trial starts
on what the scorers leave free (Tune waits), and the scorers are shut down as soon as the
last search ends.

Why an experiment ends whenever nothing runs, instead of one experiment waiting for the
searches: with no trial pending or running, Tune's loop blocks in its search algorithm (up to
600 s, Ray 2.60 `TuneController._update_trial_queue`) and, blocked, never frees the finished
trial's placement group. A scorer actor that lost its node then waits for those resources and
its search for the scorer: the searches and Tune wait on each other until Tune's timeout
(found by the lost-nodes scenario, `tests/harness/cluster_scenario/lost_nodes.py`). Ctrl-C
too went unheard in that loop.

What holds as with the sequential stages (`harness.pipeline.search_stage`, then `trial_stage`):
- The Parquet decides what is done: a trial with rows is never handed to Tune.
- A trial of a recorded Tune experiment (an interrupted earlier run) is not streamed: after
  the searches, `harness.trials.run_trials` restores that experiment (its trials resume from
  their last epoch) and runs whatever is still missing. Each streamed experiment is recorded
  trial by trial as Tune is given each (`harness.tune_records.record_trial`), so the next run
  restores it for exactly those trials; a finished trial never joins a new experiment.
- Errors: a trial that fails for good raises once every search and trial is done (as
  before); a search error stops the hand-out, lets the trials already started finish, then
  is raised as it is sequentially; Ctrl-C stops Tune (which saves its state) and the
  searches (at their next scored job), and raises KeyboardInterrupt.
- Results: a trial's result depends only on its spec (seeded), never on when it starts, so
  genotypes and accuracies equal the sequential path's.
"""
from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable

from ray.tune.search import Searcher

# Put on the feed after the last search (or a search error): no trial follows.
FEED_END = None
# Seconds to wait for the searches to stop after Ctrl-C or an error (they notice at their
# next scored job); the thread is a daemon, so the command never hangs on it.
STOP_WAIT_S = 60.0
# Seconds between looks at an empty feed: the main thread hears Ctrl-C at least this often.
FEED_POLL_S = 0.5


def streamed_trial_name(trial: Any) -> str:
    """Tune's name of a streamed trial: its label (`config["trial"]`), as the status table of a
    grid over labels shows it (Tune's default would be an opaque id)."""
    return str(trial.config["trial"])


def streamed_trial_dirname(trial: Any) -> str:
    """A streamed trial's folder: `run_trial_<label>_<Tune id>` (Tune's default would spell
    out the whole spec of its config)."""
    return f"run_trial_{trial.config['trial']}_{trial.trial_id}"


class TrialFeedSearcher(Searcher):
    """Tune's search algorithm for streamed trials: `first`, then the next configs from `feed`
    (a queue of {"trial": label, "spec": `TrialSpec.to_dict()`}); `None` while the feed is
    empty and a trial it gave has not completed; `FINISHED` when the feed is empty and none
    runs, or at FEED_END (put back on the feed for the caller). `on_give(config)` runs as Tune
    takes each config (it records the trial). Restored with its experiment, a searcher has no
    feed (the feed and the hook belong to the run that made them, and are not pickled): it
    hands out nothing more, and Tune resumes the trials it had."""

    def __init__(self, feed: "queue.Queue[dict[str, Any] | None] | None" = None,
                 on_give: Callable[[dict[str, Any]], None] | None = None,
                 first: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._feed = feed
        self._on_give = on_give
        self._first = first
        self._running: set[str] = set()  # Tune ids of the trials given and not completed
        self.given: list[str] = []  # labels handed out, in order (saved with the experiment)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._feed is None:
            return Searcher.FINISHED
        item, self._first = self._first, None
        if item is None:
            try:
                item = self._feed.get_nowait()
            except queue.Empty:
                if self._running:
                    return None  # Tune asks again at its next step
                self._feed = None  # nothing runs: end here, the caller starts the next experiment
                return Searcher.FINISHED
        if item is FEED_END:
            self._feed.put(FEED_END)  # for the caller: no experiment follows
            self._feed = None
            return Searcher.FINISHED
        if self._on_give is not None:
            self._on_give(item)
        self.given.append(item["trial"])
        self._running.add(trial_id)
        return item

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn (the searches, not the results, decide the trials); one fewer runs."""
        self._running.discard(trial_id)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its search algorithm with the experiment (tuner.pkl); a queue cannot be
        # pickled, and a restored experiment must not wait for a feed nobody fills.
        return {**self.__dict__, "_feed": None, "_on_give": None, "_first": None}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as handle:
            json.dump({"given": self.given}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as handle:
            self.given = list(json.load(handle)["given"])


def next_trials(feed: "queue.Queue[Any]", poll_s: float = FEED_POLL_S) -> dict[str, Any] | None:
    """The next item of `feed` (a trial's config, or FEED_END), waited for in short polls so
    that Ctrl-C reaches the waiting main thread at once."""
    while True:
        try:
            return feed.get(timeout=poll_s)
        except queue.Empty:
            continue


class SearchThread(threading.Thread):
    """The searches in a driver thread: `search(stop)` (`harness.search.run_searches` with its
    `on_done` and `stop`) returns the `searches` rows; then, or after its error (kept in
    `error`, raised by `result()`), `release()` runs (the scorer pool's shutdown: the trials get
    its resources) and FEED_END goes on `feed`."""

    def __init__(self, search: Callable[[threading.Event], list[dict[str, Any]]], feed: "queue.Queue[Any]",
                 release: Callable[[], None] | None = None) -> None:
        super().__init__(name="metantk-searches", daemon=True)
        self.search, self.feed, self.release = search, feed, release
        self.stop_event = threading.Event()
        self.rows: list[dict[str, Any]] | None = None
        self.error: BaseException | None = None
        self.stopped = False  # the error came after `stop_event` was set (the searches were asked to stop)

    def run(self) -> None:
        try:
            self.rows = self.search(self.stop_event)
        except Exception as exc:  # raised in the main thread by `result()`
            self.error, self.stopped = exc, self.stop_event.is_set()
        finally:
            try:
                if self.release is not None:
                    self.release()
            finally:
                self.feed.put(FEED_END)

    def result(self) -> list[dict[str, Any]]:
        """The `searches` rows once every search is done; the search's own error otherwise."""
        self.join()
        if self.error is not None:
            raise self.error
        if self.rows is None:
            raise RuntimeError("the searches ended without rows or an error (see the messages above)")
        return self.rows

    def stop(self, cause: BaseException, wait_s: float = STOP_WAIT_S) -> None:
        """Ask the searches to stop (the command ends with `cause`) and wait up to `wait_s`;
        a search error of their own is added to `cause` as a note, never lost."""
        self.stop_event.set()
        self.join(wait_s)
        if self.error is not None and self.error is not cause and not self.stopped:
            cause.add_note(f"the searches ended with an error too: {self.error}")
