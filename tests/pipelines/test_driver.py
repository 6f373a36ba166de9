"""The driver loop (batch/driver.py) against fake actors, with no Ray cluster: retries and their
backoff, inputs that cannot be read, actors that die, restart or are gone for good, and the
limit on waiting for actors that do not come back.

`ray.wait` and `ray.get` are replaced by a fake cluster's. What an actor call gives is scripted
per task (outcomes in call order, then done); what a `ready` probe says is scripted per actor
(answers in probe order, then ready). Every ref is ready at once, unless its probe is PENDING,
and `ray.wait` hands them back oldest first. A driver that loops without end fails its test
instead of hanging it: the fake cluster stops answering after GUARD_S, and jobs wait at most
5 s for actors to come back.
"""

from __future__ import annotations

import io
import itertools
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from pipelines.batch.cluster import ClusterError
from pipelines.batch.driver import Driver, TaskPlans
from pipelines.batch.preflight import Job
from pipelines.batch.prepass import RepeatTables, ReusePlan
from pipelines.batch.progress import Progress
from pipelines.config import Config
from pipelines.inputs.planning import Task, plan_tasks
from pipelines.inputs.readers import InputError, InputFile
from pipelines.output.markers import DoneMarker
from pipelines.output.state import RunState
from workers.model_dir import ModelCard

BACKOFF_S = 0.001
GUARD_S = 20.0
PENDING = "pending"  # a probe that never answers: the actor cannot be placed again
RESTARTING = "restarting"


def raised(cause: Exception) -> RayTaskError:
    """What Ray gives for a call whose task raised `cause` inside the actor."""
    trace = f"Traceback (most recent call last):\n  in run_task\n{type(cause).__name__}: {cause}"
    return RayTaskError("EmbedActor.call", trace, cause)


class FakeRef:
    made = itertools.count()

    def __init__(self, value: Any = None, error: Exception | None = None, pending: bool = False):
        self.value, self.error, self.pending = value, error, pending
        self.order = next(self.made)


class Method:
    """An actor method: `.remote(...)` gives a ref."""

    def __init__(self, remote: Any) -> None:
        self.remote = remote


class FakeActor:
    def __init__(self, cluster: FakeCluster, name: str, probes: Iterable[str], gone: bool):
        self.name, self.gone, self.probes = name, gone, deque(probes)
        self.call_with = Method(lambda fn, spec, *fetched: cluster.call(self, spec.task))
        self.ready = Method(lambda: cluster.probe(self))


class FakeCluster:
    """Fake actors and the `ray.wait` / `ray.get` that answer for them; records every call
    (actor name, task id) and every probe (actor name), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, scripts: dict[str, list[Exception]]):
        self.scripts = {task_id: deque(outcomes) for task_id, outcomes in scripts.items()}
        self.calls: list[tuple[str, str]] = []
        self.probes: list[str] = []
        self.deadline = time.monotonic() + GUARD_S
        monkeypatch.setattr(ray, "wait", self.wait)
        monkeypatch.setattr(ray, "get", self.get)

    def actor(self, name: str, probes: Iterable[str] = (), gone: bool = False) -> FakeActor:
        """An actor; `gone`: dead for good, so every call and every probe fails."""
        return FakeActor(self, name, probes, gone)

    def call(self, actor: FakeActor, task: Task) -> FakeRef:
        self.calls.append((actor.name, task.task_id))
        if actor.gone:
            return FakeRef(error=ActorDiedError())
        script = self.scripts.get(task.task_id)
        if script:
            return FakeRef(error=script.popleft())
        return FakeRef(done_marker(task))

    def probe(self, actor: FakeActor) -> FakeRef:
        self.probes.append(actor.name)
        said = "gone" if actor.gone else actor.probes.popleft() if actor.probes else "ready"
        if said == "gone":
            return FakeRef(error=ActorDiedError())
        if said == RESTARTING:
            return FakeRef(error=ActorUnavailableError("the actor is restarting", None))
        return FakeRef({"pid": 1}, pending=said == PENDING)

    def wait(self, refs: list[FakeRef], num_returns: int = 1, timeout: float | None = None):
        if time.monotonic() > self.deadline:
            raise AssertionError(f"the driver loop still runs after {GUARD_S:g} s")
        ready = sorted((r for r in refs if not r.pending), key=lambda r: r.order)[:num_returns]
        if not ready:
            time.sleep(min(timeout or 0.0, 0.01))  # the real one blocks up to `timeout`
        return ready, [ref for ref in refs if ref not in ready]

    def get(self, ref: FakeRef) -> Any:
        if isinstance(ref.error, RayTaskError):
            raise ref.error.as_instanceof_cause()  # as ray.get raises a task's error
        if ref.error is not None:
            raise ref.error
        return ref.value

    def calls_of(self, task_id: str) -> list[str]:
        """The actors that ran `task_id`, one per call."""
        return [actor for actor, task in self.calls if task == task_id]


def done_marker(task: Task) -> DoneMarker:
    return DoneMarker(
        task_id=task.task_id,
        input_key=task.file.key,
        input_size=task.file.size,
        rows=task.rows,
        embedded=task.rows,
        rejected=0,
        tokens=10 * task.rows,
        seconds={"device": 0.001},
    )


def make_job(
    tmp_path: Path, tasks: int, max_retries: int = 3, wait_timeout_s: float = 5, **run: Any
) -> Job:
    """A job of `tasks` tasks of 10 rows over one CSV; the driver never reads the file."""
    config = Config.model_validate(
        {
            "model": {"source": "stub"},
            "input": {"path": str(tmp_path / "in"), "rows_per_task": 10},
            "output": {"path": str(tmp_path / "out")},
            "run": {"max_retries": max_retries, "wait_timeout_s": wait_timeout_s, **run},
        }
    )
    file = InputFile(str(tmp_path / "in" / "a.csv"), "a.csv", "csv", rows=10 * tasks, size=999)
    card = ModelCard("stub", None, "0" * 64, 4, "mean", 16, "fp32", 17)
    return Job(config, tmp_path / "model", card, [file], plan_tasks([file], 10), {})


def driver_for(job: Job, actors: list[FakeActor]) -> Driver:
    progress = Progress(sum(t.rows for t in job.tasks), 0, stream=io.StringIO())
    return Driver(job, RunState(job.config.output.path), actors, progress, backoff_s=BACKOFF_S)


def run(job: Job, actors: list[FakeActor]) -> Driver:
    driver = driver_for(job, actors)
    driver.run(job.tasks)
    return driver


def ids(job: Job) -> list[str]:
    return [t.task_id for t in job.tasks]


# Tasks that raise


def test_a_task_that_raises_once_is_retried_and_ends_done(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=1)
    (a,) = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [raised(OSError("connection reset"))]})
    driver = run(job, [cluster.actor("x")])
    assert len(cluster.calls_of(a)) == 2 and driver.attempts[a] == 1
    assert set(driver.state.done()) == {a} and driver.state.failed() == {}


def test_a_task_that_keeps_raising_fails_after_max_retries_and_the_rest_finish(
    tmp_path, monkeypatch
):
    job = make_job(tmp_path, tasks=3, max_retries=2)
    a, b, c = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [raised(ValueError("bad row 7"))] * 10})
    driver = run(job, [cluster.actor("x")])
    assert len(cluster.calls_of(a)) == 3  # the first try and max_retries retries
    failed = driver.state.failed()[a]
    assert (failed.error_type, failed.message, failed.attempts) == (
        "ValueError",
        "ValueError: bad row 7",
        3,
    )
    assert "in run_task" in failed.traceback and failed.rows == (0, 10)  # the remote traceback
    assert set(driver.state.done()) == {b, c} and set(driver.state.failed()) == {a}


def test_retry_delays_double_from_backoff_s(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=1, max_retries=3)
    (a,) = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [raised(ValueError("flaky"))] * 3})
    driver = driver_for(job, [cluster.actor("x")])
    # (earliest, latest) delay each retry can have been scheduled with, read off the heap
    delays: list[tuple[float, float]] = []
    task_raised = driver.task_raised

    def spy(task: Task, err: RayTaskError) -> None:
        before = time.monotonic()
        task_raised(task, err)
        after = time.monotonic()
        (due,) = [due for due, _, queued in driver.retries if queued == task]
        delays.append((due - after, due - before))

    monkeypatch.setattr(driver, "task_raised", spy)
    driver.run(job.tasks)
    assert len(delays) == 3 and set(driver.state.done()) == {a}
    for (earliest, latest), expected in zip(delays, [1, 2, 4], strict=True):
        assert earliest - 1e-9 <= expected * BACKOFF_S <= latest + 1e-9


def test_an_input_error_fails_at_once_without_retry(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=2, max_retries=3)
    a, b = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [raised(InputError("a.csv: line 3 is not JSON"))]})
    driver = run(job, [cluster.actor("x")])
    assert len(cluster.calls_of(a)) == 1
    failed = driver.state.failed()[a]
    assert (failed.error_type, failed.attempts) == ("InputError", 1)
    assert failed.message == "InputError: a.csv: line 3 is not JSON"
    assert set(driver.state.done()) == {b}


# Tasks that copy vectors from earlier ones (use_cache)


def run_with_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, latest: list[int], **run: Any
) -> tuple[list[str], dict[str, set[str]], RunState]:
    """A run of len(latest) tasks on one actor (two slots), where task i copies texts from
    tasks up to latest[i] (reindex/plan.py); the first task fails for good. Each task's id,
    what was settled when it started, and the state."""
    job = make_job(tmp_path, tasks=len(latest), max_retries=1, **run)
    names = ids(job)
    cluster = FakeCluster(monkeypatch, {names[0]: [raised(OSError("connection reset"))] * 2})
    plans = TaskPlans(
        RepeatTables({t: i for i, t in enumerate(names)}), ReusePlan(np.array(latest))
    )
    progress = Progress(sum(t.rows for t in job.tasks), 0, stream=io.StringIO())
    state = RunState(job.config.output.path)
    driver = Driver(job, state, [cluster.actor("x")], progress, plans, backoff_s=BACKOFF_S)
    settled_at_start: dict[str, set[str]] = {}
    call = cluster.call

    def watched(actor: FakeActor, task: Task) -> FakeRef:
        settled_at_start.setdefault(task.task_id, set(state.done()) | set(state.failed()))
        return call(actor, task)

    cluster.call = watched  # type: ignore[method-assign]
    driver.run(job.tasks)
    return names, settled_at_start, state


def test_wait_for_copies_starts_a_task_once_all_up_to_its_latest_owner_settle(
    tmp_path, monkeypatch
):
    # c copies texts from a, d from c; a fails for good
    (a, b, c, d), settled_at_start, state = run_with_owners(
        tmp_path, monkeypatch, [-1, -1, 0, 2], wait_for_copies=True
    )
    assert a not in settled_at_start[b]  # b copies nothing: it does not wait on a's retry
    assert a in settled_at_start[c]  # settled, even failed: c then embeds a's texts itself
    assert {a, b, c} <= settled_at_start[d]
    assert set(state.done()) == {b, c, d} and set(state.failed()) == {a}


def test_by_default_a_task_whose_owners_run_starts_when_no_other_is_ready(tmp_path, monkeypatch):
    # each task copies from the one before: waiting would leave the actor's second slot idle
    (a, b, c, d), settled_at_start, state = run_with_owners(tmp_path, monkeypatch, [-1, 0, 1, 2])
    assert a not in settled_at_start[b]  # b embeds what a has not handed on
    assert set(state.done()) == {b, c, d} and set(state.failed()) == {a}


# Actors that die


def test_the_tasks_of_a_dead_actor_are_redone_first_once_it_answers_ready(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=3)
    a, b, c = ids(job)
    # the actor dies under both its running tasks, a and b, while c waits in the queue
    cluster = FakeCluster(monkeypatch, {a: [ActorDiedError()], b: [ActorDiedError()]})
    driver = run(job, [cluster.actor("x")])
    assert [task for _, task in cluster.calls][:2] == [a, b]
    redone, last = {task for _, task in cluster.calls[2:4]}, cluster.calls[4][1]
    assert redone == {a, b} and last == c  # back at the front of the queue, ahead of c
    assert cluster.probes == ["x", "x"]  # one probe per slot lost; each gave its slot back
    assert set(driver.state.done()) == {a, b, c} and driver.state.failed() == {}


def test_a_task_whose_actor_dies_more_than_max_retries_times_fails(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=2, max_retries=1)
    a, b = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [ActorDiedError()] * 10})
    driver = run(job, [cluster.actor("x")])
    assert len(cluster.calls_of(a)) == 2
    failed = driver.state.failed()[a]
    assert (failed.message, failed.attempts) == ("its actor died 2 time(s)", 2)
    assert failed.error_type == "ActorDiedError"
    assert set(driver.state.done()) == {b}


def test_a_restarting_actor_is_asked_again_rather_than_given_up(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=2)
    a, b = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [ActorDiedError()], b: [ActorDiedError()]})
    # first probe: Ray is restarting it; the second probe and the one asked again: ready
    driver = run(job, [cluster.actor("x", probes=[RESTARTING])])
    assert cluster.probes == ["x", "x", "x"]
    assert set(driver.state.done()) == {a, b} and driver.state.failed() == {}


def test_an_actor_gone_for_good_does_not_stop_the_run_while_others_live(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=4)
    cluster = FakeCluster(monkeypatch, {})
    driver = run(job, [cluster.actor("x", gone=True), cluster.actor("y")])
    assert "x" in cluster.probes  # x's calls did die, and x was found gone
    assert set(driver.state.done()) == set(ids(job)) and driver.state.failed() == {}
    assert all(cluster.calls_of(task)[-1] == "y" for task in ids(job))


def test_the_run_stops_when_every_actor_is_gone(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=5)
    cluster = FakeCluster(monkeypatch, {})
    actors = [cluster.actor("x", gone=True), cluster.actor("y", gone=True)]
    with pytest.raises(ClusterError, match=r"every actor died; the last error: .*died"):
        run(job, actors)


def test_no_actor_back_within_wait_timeout_s_stops_the_run_naming_the_resource(
    tmp_path, monkeypatch
):
    job = make_job(tmp_path, tasks=2, wait_timeout_s=0.05)
    a, b = ids(job)
    cluster = FakeCluster(monkeypatch, {a: [ActorDiedError()], b: [ActorDiedError()]})
    # both slots die; Ray cannot place the actor again, so its probes never answer
    actors = [cluster.actor("x", probes=[PENDING, PENDING])]
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"no actor came back within 0\.05 s") as stopped:
        run(job, actors)
    assert time.monotonic() - started >= 0.05
    assert "2 task(s) left" in str(stopped.value) and "CPUs or GPUs" in str(stopped.value)


def test_a_failure_after_raises_and_a_death_counts_the_deaths_and_keeps_what_it_raised(
    tmp_path, monkeypatch
):
    job = make_job(tmp_path, tasks=1, max_retries=2)
    (a,) = ids(job)
    script = [raised(ValueError("bad row")), raised(ValueError("bad row")), ActorDiedError()]
    cluster = FakeCluster(monkeypatch, {a: script})
    failed = run(job, [cluster.actor("x")]).state.failed()[a]
    assert failed.attempts == 3
    assert failed.message == "its actor died 1 time(s); before that it raised ValueError: bad row"


def test_a_dead_actors_idle_slot_gets_no_task_before_its_probe_answers(tmp_path, monkeypatch):
    job = make_job(tmp_path, tasks=1, max_retries=1)
    (a,) = ids(job)
    cluster = FakeCluster(monkeypatch, {})
    x, y = cluster.actor("x", gone=True), cluster.actor("y")
    driver = driver_for(job, [x, y])
    driver.idle = [y, x, x]  # the last is handed out first: a goes to x, x keeps a slot idle
    driver.run(job.tasks)
    # without the hold, a went straight back to x's idle slot, died again and failed
    assert cluster.calls_of(a) == ["x", "y"] and driver.state.failed() == {}
