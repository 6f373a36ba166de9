"""How the prepass sends its calls (batch/prepass.py's `answers`), against fake actors with no
Ray cluster: a few at a time per actor, not one per task at once, and a call whose actor died
sent again."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
import ray
from ray.exceptions import ActorDiedError

from pipelines.batch.cluster import ClusterError
from pipelines.batch.prepass import AHEAD, answers
from pipelines.interrupt import StopRequest

RUN = SimpleNamespace(max_retries=2, wait_timeout_s=5.0)


class Ref:
    made = itertools.count()

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value, self.error, self.order = value, error, next(self.made)


class Actor:
    def __init__(self) -> None:
        self.ready = SimpleNamespace(remote=lambda: Ref("ready"))


class Cluster:
    """Actors whose calls end in the order sent, one per `ray.wait`; `dies` names the asks
    whose first calls find their actor dead, and how many times."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, dies: dict[int, int]) -> None:
        self.dies, self.waiting, self.most_waiting = dict(dies), 0, 0
        self.sent: list[int] = []
        monkeypatch.setattr(ray, "wait", self.wait)
        monkeypatch.setattr(ray, "get", self.get)

    def actor(self) -> Any:
        return Actor()

    def send(self, actor: Any, ask: int) -> Ref:
        self.sent.append(ask)
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        if self.dies.get(ask, 0) > 0:
            self.dies[ask] -= 1
            return Ref(error=ActorDiedError())
        return Ref(ask * 10)

    def wait(self, refs: list[Ref], num_returns: int = 1, timeout: float | None = None):
        ended = sorted(refs, key=lambda r: r.order)[:num_returns]
        self.waiting -= sum(r.value != "ready" for r in ended)
        return ended, [r for r in refs if r not in ended]

    def get(self, ref: Ref) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value


def test_calls_go_a_few_per_actor_at_a_time_and_every_ask_is_answered(monkeypatch):
    cluster = Cluster(monkeypatch, {})
    actors = [cluster.actor(), cluster.actor()]
    found = {
        i: ray.get(refs[0])
        for i, refs in answers(actors, list(range(50)), cluster.send, RUN, StopRequest(), "x")
    }
    assert found == {i: i * 10 for i in range(50)}
    assert cluster.most_waiting == AHEAD * len(actors)  # not 50 call specs held at once


def test_a_call_whose_actor_died_goes_again_and_too_many_deaths_stop_the_run(monkeypatch):
    cluster = Cluster(monkeypatch, {3: 2})
    actors = [cluster.actor()]
    found = dict(answers(actors, list(range(5)), cluster.send, RUN, StopRequest(), "x"))
    assert sorted(found) == [0, 1, 2, 3, 4] and cluster.sent.count(3) == 3
    cluster = Cluster(monkeypatch, {3: 3})
    with pytest.raises(ClusterError, match="reading the ids: an actor died 3 times"):
        list(answers(actors, list(range(5)), cluster.send, RUN, StopRequest(), "reading the ids"))
