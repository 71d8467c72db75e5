"""Fast tests of the scorer pool's dispatch (`harness.scorers.ScorerPool.run`) without a Ray
cluster: fake actors, `ray.wait` / `ray.get` monkeypatched, failures injected."""
from __future__ import annotations

import pytest
import ray

from harness import scorers
from harness.scoring import Score


class FakeActor:
    """An actor whose `score.remote(job, batch)` returns a ref; `dies` jobs' refs raise once."""

    def __init__(self, index: int, log: list, dies: set) -> None:
        self.index, self.log, self.dies = index, log, dies
        self.score = self  # `actor.score.remote(...)`

    def remote(self, job, batch):
        self.log.append(("submit", self.index, job.key))
        return (self.index, job, batch)


def _pool(monkeypatch: pytest.MonkeyPatch, size: int, dies: set = frozenset(), error: Exception | None = None):
    log: list = []
    died: set = set()

    def get(ref):
        index, job, batch = ref
        if job.key in dies and job.key not in died:
            died.add(job.key)
            raise ray.exceptions.RayActorError()
        if error is not None:
            raise error
        return f"actor{index}", [(ident, Score(rn=float(job.key))) for ident, _ in job.items]

    pool = object.__new__(scorers.ScorerPool)  # no Ray: the actors are fakes
    pool.size, pool.batch = size, 3
    pool._actors = [FakeActor(i, log, set(dies)) for i in range(size)]
    monkeypatch.setattr(pool, "_new_actor", lambda i: FakeActor(i + 100, log, set()))
    monkeypatch.setattr(scorers.ray, "wait", lambda refs, num_returns: (refs[:1], refs[1:]))
    monkeypatch.setattr(scorers.ray, "get", get)
    monkeypatch.setattr(scorers.time, "sleep", lambda s: None)
    return pool, log


def _jobs(n: int) -> list[scorers.Job]:
    return [scorers.Job(spec=None, key=k, measures=("rn",), items=((f"c{k}", None),)) for k in range(n)]


def test_every_job_is_scored_once_with_bounded_work_per_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, log = _pool(monkeypatch, size=2)
    real_get = scorers.ray.get
    returned: list[int] = []
    monkeypatch.setattr(scorers.ray, "get", lambda ref: returned.append(ref[0]) or real_get(ref))
    peak = {0: 0, 1: 0}

    def on_result(job, label, scores):
        results.append((job.key, label, scores[0][1].rn))

    results: list = []
    real_remote = FakeActor.remote

    def remote(self, job, batch):
        in_flight = sum(1 for e in log if e[1] == self.index) + 1 - returned.count(self.index)
        peak[self.index] = max(peak[self.index], in_flight)
        assert batch == pool.batch
        return real_remote(self, job, batch)

    monkeypatch.setattr(FakeActor, "remote", remote)
    pool.run(_jobs(7), on_result)
    assert sorted(k for k, _, _ in results) == list(range(7))
    assert all(rn == float(k) and label == f"actor{label[-1]}" for k, label, rn in results)
    assert peak == {0: scorers.IN_FLIGHT_PER_ACTOR, 1: scorers.IN_FLIGHT_PER_ACTOR}


def test_a_dead_actor_is_replaced_and_its_job_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, log = _pool(monkeypatch, size=2, dies={3})
    results = []
    pool.run(_jobs(5), lambda job, label, scores: results.append(job.key))
    assert sorted(results) == [0, 1, 2, 3, 4]                       # job 3 once, after its retry
    assert [e[2] for e in log].count(3) == 2                        # submitted twice
    assert any(a.index >= 100 for a in pool._actors)                # a fresh actor took its place


def test_an_application_error_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, _ = _pool(monkeypatch, size=1, error=ValueError("bad masks"))
    with pytest.raises(ValueError, match="bad masks"):
        pool.run(_jobs(2), lambda *a: None)


def test_actors_that_keep_dying_end_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, _ = _pool(monkeypatch, size=1)
    monkeypatch.setattr(scorers.ray, "get", lambda ref: (_ for _ in ()).throw(ray.exceptions.RayActorError()))
    with pytest.raises(ray.exceptions.RayActorError):
        pool.run(_jobs(2), lambda *a: None)
