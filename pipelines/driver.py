"""The driver loop: hand tasks to idle actors, collect results, resubmit and retry.

- Each actor runs two tasks at once (one infers while the other reads or writes), so it has two
  slots in the idle list.
- A task whose actor died (RayActorError) goes back to the front of the queue; the actor is
  probed until Ray has restarted it, and each probe gives one slot back. Deaths count against
  the task too, so a task that kills every actor it touches ends as failed instead of looping.
- A task that raised (RayTaskError) is retried after a backoff of backoff_s * 2**attempt, up to
  max_retries times, then recorded as failed with its traceback; the rest of the run goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter, deque
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from pipelines.cluster import ClusterError
from pipelines.ids import IdDigest, digest_on_actor
from pipelines.job import Job
from pipelines.planning import Task
from pipelines.progress import Progress
from pipelines.state import RunState
from pipelines.task import TaskResult, run_task
from workers.actor import CONCURRENT_TASKS

log = logging.getLogger(__name__)


class Driver:
    def __init__(
        self,
        job: Job,
        state: RunState,
        actors: list[Any],
        progress: Progress,
        max_retries: int,
        repeats: dict[str, dict[int, str]] | None = None,
        backoff_s: float = 1.0,
    ) -> None:
        self.job, self.state, self.progress = job, state, progress
        self.repeats = repeats or {}
        self.max_retries, self.backoff_s = max_retries, backoff_s
        # One slot per call an actor runs at once; a slot returns when its call ends.
        self.idle = [actor for actor in actors for _ in range(CONCURRENT_TASKS)]
        self.queue: deque[Task] = deque()
        self.retries: list[tuple[float, int, Task]] = []
        self.in_flight: dict[Any, tuple[Any, Task]] = {}
        self.probing: dict[Any, Any] = {}
        self.attempts: Counter[str] = Counter()
        self._order = itertools.count()

    def run(self, tasks: list[Task]) -> None:
        self.queue.extend(tasks)
        while self.queue or self.retries or self.in_flight or self.probing:
            self.release_due_retries()
            self.submit()
            self.collect(timeout_s=0.5)
            self.progress.tick()
        self.progress.close()

    def submit(self) -> None:
        while self.idle and self.queue:
            actor, task = self.idle.pop(), self.queue.popleft()
            spec = self.job.spec(task, self.repeats.get(task.task_id))
            self.in_flight[actor.call.remote(run_task, spec)] = (actor, task)

    def release_due_retries(self) -> None:
        now = time.monotonic()
        while self.retries and self.retries[0][0] <= now:
            self.queue.append(heapq.heappop(self.retries)[2])

    def collect(self, timeout_s: float) -> None:
        refs = [*self.in_flight, *self.probing]
        if not refs:
            time.sleep(min(timeout_s, 0.05))
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        for ref in ready:
            if ref in self.probing:
                self.probed(ref)
            else:
                self.finished(ref)

    def finished(self, ref: Any) -> None:
        actor, task = self.in_flight.pop(ref)
        try:
            result: TaskResult = ray.get(ref)
        except RayActorError as err:
            self.actor_lost(actor, task, err)
            return
        except RayTaskError as err:
            self.idle.append(actor)
            self.task_raised(task, err)
            return
        self.idle.append(actor)
        self.state.mark_done(task.task_id, result.as_marker())
        self.progress.task_done(result.rows, result.tokens)

    def actor_lost(self, actor: Any, task: Task, err: RayActorError) -> None:
        log.warning("actor died running %s; resubmitting it (%s)", task.task_id, err)
        self.probing[actor.ready.remote()] = actor
        self.attempts[task.task_id] += 1
        if self.attempts[task.task_id] > self.max_retries:
            self.fail(task, err, f"its actor died {self.attempts[task.task_id]} times")
        else:
            self.queue.appendleft(task)

    def probed(self, ref: Any) -> None:
        actor = self.probing.pop(ref)
        try:
            ray.get(ref)
        except ActorUnavailableError:
            time.sleep(0.2)  # still restarting: ask again rather than give the slot up
            self.probing[actor.ready.remote()] = actor
            return
        except RayActorError as err:
            log.error("an actor is gone for good: %s", err)
            if not (self.idle or self.in_flight or self.probing):
                raise ClusterError(f"every actor died; the last error: {err}") from err
            return
        self.idle.append(actor)

    def task_raised(self, task: Task, err: RayTaskError) -> None:
        self.attempts[task.task_id] += 1
        attempt = self.attempts[task.task_id]
        cause = err.cause if err.cause is not None else err
        if attempt > self.max_retries:
            self.fail(task, err, f"{type(cause).__name__}: {cause}")
            return
        delay = self.backoff_s * 2 ** (attempt - 1)
        log.warning(
            "%s failed (attempt %d), retrying in %.1f s: %s", task.task_id, attempt, delay, cause
        )
        heapq.heappush(self.retries, (time.monotonic() + delay, next(self._order), task))

    def fail(self, task: Task, err: Exception, reason: str) -> None:
        cause = getattr(err, "cause", None) or err
        self.state.mark_failed(
            task.task_id,
            {
                "file": task.file.path,
                "rows": [task.start, task.stop],
                "error_type": type(cause).__name__,
                "message": reason,
                "traceback": str(err),
                "attempts": self.attempts[task.task_id],
            },
        )
        self.progress.task_failed()
        log.error(
            "%s failed for good after %d attempts: %s",
            task.task_id,
            self.attempts[task.task_id],
            reason,
        )


def collect_digests(
    actors: list[Any], tasks: list[Task], id_column: str, out: str, max_retries: int
) -> dict[str, IdDigest]:
    """The id pass over every task, spread over the actors. A task whose ids cannot be read is
    left out here; its embedding attempt fails and records why."""
    found: dict[str, IdDigest] = {}
    todo = list(tasks)
    for _ in range(max_retries + 1):
        calls = [
            (actors[i % len(actors)].call.remote(digest_on_actor, (task, id_column, out)), task)
            for i, task in enumerate(todo)
        ]
        todo = []
        for ref, task in calls:
            try:
                found[task.task_id] = ray.get(ref)
            except RayActorError:
                todo.append(task)  # the actor died; ask again once Ray has restarted it
            except RayTaskError as err:
                log.warning("cannot read the ids of %s: %s", task.task_id, err.cause or err)
        if not todo:
            break
        time.sleep(1.0)
    return found
