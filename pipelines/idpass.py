"""The id pass: every task's id digests (and under use_cache its text digests), read by the
actors, before any task is embedded.

Embedding must not start while a task's digests are missing: its repeats would go unseen, and
which occurrence of an id is kept would then depend on timing. So an actor death here only
sends the task's call again (to the actors that answer), and a task whose actor died more than
`max_retries` times stops the run; the next run starts the pass again from its cache. A task
whose ids cannot be read is returned with its error, to be recorded as failed, not embedded;
a file already known to be unreadable is not asked for at all (its task fails with the reason).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from pipelines.cluster import ClusterError
from pipelines.ids import IdDigest, digest_on_actor
from pipelines.interrupt import StopRequest
from pipelines.planning import Task
from pipelines.reuse import TextDigest

log = logging.getLogger(__name__)


def collect_digests(
    actors: list[Any],
    tasks: list[Task],
    id_column: str,
    out: str,
    max_retries: int,
    stop: StopRequest,
    wait_s: float = 600.0,
    text: tuple[str, str] | None = None,
) -> tuple[dict[str, IdDigest], dict[str, TextDigest], dict[str, RayTaskError]]:
    """The id digests by task id, the text digests when `text` (text column, prompt) is given,
    and the error of each task whose ids or texts could not be read."""
    found: dict[str, IdDigest] = {}
    texts: dict[str, TextDigest] = {}
    unread: dict[str, RayTaskError] = {}
    deaths: dict[str, int] = {}
    todo = [t for t in tasks if t.file.error is None]
    while todo:
        stop.check()
        live = live_actors(actors, wait_s, stop)
        calls = [
            (live[i % len(live)].call.remote(digest_on_actor, (task, id_column, out, text)), task)
            for i, task in enumerate(todo)
        ]
        todo = []
        for ref, task in calls:
            try:
                found[task.task_id], digest = ray.get(ref)
                if digest is not None:
                    texts[task.task_id] = digest
            except RayActorError as err:
                deaths[task.task_id] = deaths.get(task.task_id, 0) + 1
                if deaths[task.task_id] > max_retries:
                    raise ClusterError(
                        f"the ids of {task.task_id} could not be read: its actor died "
                        f"{deaths[task.task_id]} times (last: {err}). Rerun to try again"
                    ) from err
                todo.append(task)
            except RayTaskError as err:
                unread[task.task_id] = err
    return found, texts, unread


def live_actors(actors: list[Any], wait_s: float, stop: StopRequest) -> list[Any]:
    """The actors that answer `ready`, waiting while Ray restarts the others; once one answers,
    the pass goes on with those that do rather than wait on a slow one."""
    deadline = time.monotonic() + wait_s
    probes = {actor.ready.remote(): actor for actor in actors}
    live: list[Any] = []
    while probes:
        stop.check()
        ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=1.0)
        for ref in ready:
            actor = probes.pop(ref)
            try:
                ray.get(ref)
                live.append(actor)
            except ActorUnavailableError:
                time.sleep(0.2)  # restarting: ask again
                probes[actor.ready.remote()] = actor
            except RayActorError:
                pass  # gone for good
        if (live and not ready) or time.monotonic() > deadline:
            break
    if not live:
        raise ClusterError(
            f"no actor answered within {wait_s:g} s; the cluster lacks the resources to "
            "restart them. Add nodes or lower workers.num_actors, and rerun"
        )
    return live
