"""The driver loop: hand tasks to idle actors, collect results, resubmit and retry.

- Each actor runs two tasks at once (one infers while the other reads or writes), so it has two
  slots in the idle list.
- A task whose actor died (RayActorError) goes back to the front of the queue; the actor is
  probed until Ray has restarted it, and each probe gives one slot back. Deaths count against
  the task too, so a task that kills every actor it touches ends as failed instead of looping.
- A task that raised (RayTaskError) is retried after a backoff of backoff_s * 2**attempt, up to
  max_retries times, then recorded as failed with its traceback; the rest of the run goes on.
- A stop request (SIGINT, SIGTERM) ends submission; running tasks get the grace period to be
  recorded, then the loop returns and the caller reports.
- A task whose input cannot be read (InputError) fails at once: reading it again gives the same
  error, so retrying would only delay the report.
- Actors that do not come back (their node is gone and no other has room) are waited for at
  most `stall_s`; then the run stops with the resource they need, instead of hanging.
- Under use_cache a task that copies texts from earlier tasks of the run (reindex/plan.py) is ready
  once every task up to the latest of those is settled (one number a task, where its whole
  list of owners could make tasks squared). Ready tasks go first; when none is, the first
  queued one goes anyway and embeds what its running owners have not handed on yet, unless
  run.wait_for_copies holds it back: repeats scattered over a corpus make each task wait for
  the one before, which would leave all but one actor idle.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from pipelines.batch.cluster import GONE, RESTARTING, ClusterError, answer
from pipelines.batch.preflight import Job
from pipelines.batch.prepass import RepeatTables, ReusePlan
from pipelines.batch.progress import Progress
from pipelines.batch.task import TaskSpec, run_task
from pipelines.inputs.planning import Task
from pipelines.inputs.readers import InputError
from pipelines.interrupt import StopRequest
from pipelines.output.markers import DoneMarker, FailedMarker
from pipelines.output.state import RunState
from workers.actor import CONCURRENT_TASKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskPlans:
    """What the prepass decided per task id: its repeated rows and what it copies."""

    repeats: RepeatTables = field(default_factory=RepeatTables)
    reuse: ReusePlan = field(default_factory=ReusePlan)


class Driver:
    """Retries follow job.config.run (max_retries, and wait_timeout_s for actors to come
    back); backoff_s is the first retry's delay, doubling with each attempt."""

    def __init__(
        self,
        job: Job,
        state: RunState,
        actors: list[Any],
        progress: Progress,
        plans: TaskPlans | None = None,
        stop: StopRequest | None = None,
        backoff_s: float = 1.0,
    ) -> None:
        self.job, self.state, self.progress = job, state, progress
        plans = plans or TaskPlans()
        self.repeats, self.latest = plans.repeats, plans.reuse.latest
        self.links = plans.reuse.refs
        # by position in run order: settled (done before this run, done or failed in it)
        self.settled = np.ones(len(self.latest), bool)
        self.settled_upto = 0  # every position below it is settled
        self.wait_for_copies = job.config.run.wait_for_copies
        self.max_retries, self.backoff_s = job.config.run.max_retries, backoff_s
        self.stop = stop or StopRequest()
        self.stall_s = job.config.run.wait_timeout_s
        self._no_actor_since: float | None = None
        # One slot per call an actor runs at once; a slot returns when its call ends.
        self.idle = [actor for actor in actors for _ in range(CONCURRENT_TASKS)]
        self.queue: deque[Task] = deque()
        self.retries: list[tuple[float, int, Task]] = []
        self.in_flight: dict[Any, tuple[Any, Task]] = {}
        self.probing: dict[Any, Any] = {}
        self.suspended: Counter[Any] = Counter()  # idle slots held back while an actor is probed
        self.attempts: Counter[str] = Counter()  # raises and actor deaths, per task
        self.deaths: Counter[str] = Counter()
        self.last_raised: dict[str, str] = {}  # what a task raised last, for its failure
        self._order = itertools.count()
        self.actor_count = len(actors)
        self.device_s = 0.0  # summed over this run's tasks: the actors' time on their device
        self.wall_s = 0.0

    def run(self, tasks: list[Task], unread: dict[str, Exception] | None = None) -> None:
        """Runs tasks; those in `unread` (their ids could not be read, so their repeats are
        unknown, or their rows could not be numbered) are recorded as failed without being
        embedded."""
        unread = unread or {}
        for task in tasks:
            if task.file.error is not None:  # known unreadable at listing: no actor needed
                self.attempts[task.task_id] = 1
                self.fail(task, InputError(task.file.error), f"InputError: {task.file.error}")
            elif task.task_id in unread:
                err = unread[task.task_id]
                self.attempts[task.task_id] = 1
                cause = getattr(err, "cause", None) or err
                self.fail(task, err, f"its ids could not be read: {cause}")
        self.queue.extend(t for t in tasks if t.file.error is None and t.task_id not in unread)
        for task in self.queue:
            if 0 <= (position := self._position(task)) < len(self.settled):
                self.settled[position] = False
        self._advance()
        started = time.monotonic()
        try:
            self._loop()
        finally:
            self.wall_s = time.monotonic() - started

    def device_idle_share(self) -> float | None:
        """The share of the actors' time in this run that their devices sat idle."""
        if self.wall_s <= 0 or not self.actor_count:
            return None
        return max(0.0, 1.0 - self.device_s / (self.actor_count * self.wall_s))

    def _loop(self) -> None:
        # Probes alone do not keep the loop going: an actor that cannot be placed again must
        # not hold up a run whose tasks are all settled.
        while self.queue or self.retries or self.in_flight:
            if self.stop.requested and (not self.in_flight or self.stop.must_stop_now()):
                break
            if not self.stop.requested:
                self.release_due_retries()
                self.submit()
            self.collect(timeout_s=0.5)
            self.check_stalled()
            self.progress.tick()
        self.progress.close()
        if self.in_flight:
            log.warning(
                "abandoned %d running task(s); the next run redoes them", len(self.in_flight)
            )

    def check_stalled(self) -> None:
        """Raises once work waits and no actor has been usable for stall_s."""
        if self.idle or self.in_flight or not (self.queue or self.retries):
            self._no_actor_since = None
            return
        now = time.monotonic()
        self._no_actor_since = self._no_actor_since or now
        if now - self._no_actor_since > self.stall_s:
            raise ClusterError(
                f"no actor came back within {self.stall_s:g} s after the last one died, with "
                f"{len(self.queue) + len(self.retries)} task(s) left; the cluster lacks the "
                "CPUs or GPUs to restart them. Add nodes, lower workers.num_actors, and rerun"
            )

    def submit(self) -> None:
        while self.idle and (task := self.next_ready()) is not None:
            actor = self.idle.pop()
            call = actor.call_with.remote(
                run_task, self.spec(task), *self.repeats.refs, *self.links
            )
            self.in_flight[call] = (actor, task)

    def next_ready(self) -> Task | None:
        """The first queued task whose latest owner (reindex/plan.py) and every task before it
        are settled, else (unless run.wait_for_copies) the first queued one; taken off the
        queue."""
        for at, task in enumerate(self.queue):
            position = self._position(task)
            if not 0 <= position < len(self.latest) or self.latest[position] < self.settled_upto:
                del self.queue[at]
                return task
        if self.queue and not self.wait_for_copies:
            return self.queue.popleft()
        return None

    def _position(self, task: Task) -> int:
        return self.repeats.positions.get(task.task_id, -1)

    def _settle(self, task: Task) -> None:
        if 0 <= (position := self._position(task)) < len(self.settled):
            self.settled[position] = True
        self._advance()

    def _advance(self) -> None:
        while self.settled_upto < len(self.settled) and self.settled[self.settled_upto]:
            self.settled_upto += 1

    def spec(self, task: Task) -> TaskSpec:
        return dataclasses.replace(
            self.job.spec(task),
            position=self._position(task),
            repeat_refs=len(self.repeats.refs),
        )

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
            marker: DoneMarker = ray.get(ref)
        except RayActorError as err:
            self.actor_lost(actor, task, err)
            return
        except RayTaskError as err:
            self.idle.append(actor)
            self.task_raised(task, err)
            return
        self.idle.append(actor)
        # when, and after how many attempts: the run's figures (output/run_figures.py)
        attempts = self.attempts[task.task_id] + 1
        marker = dataclasses.replace(marker, finished=time.time(), attempts=attempts)
        self.state.mark_done(marker)
        self._settle(task)
        self.device_s += marker.seconds.get("device", 0.0)
        self.progress.task_done(marker)

    def actor_lost(self, actor: Any, task: Task, err: RayActorError) -> None:
        log.warning("actor died running %s; resubmitting it (%s)", task.task_id, err)
        self.probing[actor.ready.remote()] = actor
        # Its idle slots wait for the probe too: a task sent there before it answers would die
        # again and be charged for it.
        self.suspended[actor] += sum(slot is actor for slot in self.idle)
        self.idle = [slot for slot in self.idle if slot is not actor]
        self.attempts[task.task_id] += 1
        self.deaths[task.task_id] += 1
        if self.attempts[task.task_id] > self.max_retries:
            died = f"its actor died {self.deaths[task.task_id]} time(s)"
            raised = self.last_raised.get(task.task_id)
            self.fail(task, err, f"{died}; before that it raised {raised}" if raised else died)
        else:
            self.queue.appendleft(task)

    def probed(self, ref: Any) -> None:
        actor = self.probing.pop(ref)
        said, err = answer(ref)
        if said == RESTARTING:
            time.sleep(0.2)  # ask again rather than give the slot up
            self.probing[actor.ready.remote()] = actor
        elif said == GONE:
            log.error("an actor is gone for good: %s", err)
            self.suspended.pop(actor, None)
            if not (self.idle or self.in_flight or self.probing):
                raise ClusterError(f"every actor died; the last error: {err}") from err
        else:  # its slot back, and those held while it was probed
            self.idle += [actor] * (1 + self.suspended.pop(actor, 0))

    def task_raised(self, task: Task, err: RayTaskError) -> None:
        self.attempts[task.task_id] += 1
        attempt = self.attempts[task.task_id]
        cause = err.cause if err.cause is not None else err
        self.last_raised[task.task_id] = f"{type(cause).__name__}: {cause}"
        if attempt > self.max_retries or isinstance(cause, InputError):
            self.fail(task, err, f"{type(cause).__name__}: {cause}")
            return
        delay = self.backoff_s * 2 ** (attempt - 1)
        log.warning(
            "%s failed (attempt %d), retrying in %.1f s: %s", task.task_id, attempt, delay, cause
        )
        heapq.heappush(self.retries, (time.monotonic() + delay, next(self._order), task))

    def fail(self, task: Task, err: Exception, reason: str) -> None:
        self._settle(task)  # tasks waiting on it embed its texts themselves
        cause = getattr(err, "cause", None) or err
        self.state.mark_failed(
            FailedMarker(
                task_id=task.task_id,
                file=task.file.path,
                rows=(task.start, task.stop),
                error_type=type(cause).__name__,
                message=reason,
                traceback=str(err),
                attempts=self.attempts[task.task_id],
            )
        )
        self.progress.task_failed()
        log.error(
            "%s failed for good after %d attempts: %s",
            task.task_id,
            self.attempts[task.task_id],
            reason,
        )
