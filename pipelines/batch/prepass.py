"""The prepass: every task's id digests (and under use_cache its text digests), read by the
actors, before any task is embedded; the driver's half and the actors' half.

On an actor, `digest_task` reads the task's id column (under use_cache with its text column, in
the same read) and digests each value (workers/text_hash.py, 16 bytes a row), cached under
`_state/ids/` and `_state/texts/` keyed by the input's size, so a rerun reads nothing again and
the driver never reads a text. The driver finds repeated ids from them (repeated_ids.py) and
plans which task embeds each distinct text (reindex/plan.py).

Embedding must not start while a task's digests are missing: its repeats would go unseen, and
which occurrence of an id is kept would then depend on timing. So an actor death here only
sends the task's call again (to the actors that answer), and a task whose actor died more than
`max_retries` times stops the run; the next run starts the pass again from its cache. A task
whose ids cannot be read is returned with its error, to be recorded as failed, not embedded;
a file already known to be unreadable is not asked for at all (its task fails with the reason).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import ray
from ray.exceptions import RayActorError, RayTaskError

from pipelines.batch.cluster import ClusterError, live_actors
from pipelines.batch.preflight import Job
from pipelines.batch.repeated_ids import (
    IdSummary,
    MeetRequest,
    bucket_parts,
    buckets_for,
    digest_file,
    meet,
    summary_of,
)
from pipelines.inputs.planning import Task
from pipelines.inputs.readers import read_rows
from pipelines.interrupt import StopRequest
from pipelines.output.faults import check_write
from pipelines.output.state import cached_arrays, digest_path
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers.text_hash import TextDigest, text_hashes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DigestRequest:
    """What an actor needs to digest one task: small and picklable."""

    task: Task
    id_column: str
    out: str
    text: tuple[str, str] | None = None  # (text column, prompt) under use_cache
    storage: StorageSettings = field(default_factory=StorageSettings)


@dataclass(frozen=True)
class Digests:
    """The prepass's answer: digests by task id, and the error of each task it could not read."""

    ids: dict[str, IdSummary] = field(default_factory=dict)
    texts: dict[str, TextDigest] = field(default_factory=dict)
    unread: dict[str, RayTaskError] = field(default_factory=dict)


def collect_digests(job: Job, actors: list[Any], tasks: list[Task], stop: StopRequest) -> Digests:
    """Every readable task of `tasks` digested by the actors that answer."""
    run = job.config.run
    found = Digests()
    deaths: dict[str, int] = {}
    todo = [t for t in tasks if t.file.error is None]
    while todo:
        stop.check()
        live = live_actors(actors, run.wait_timeout_s, stop)
        calls = [
            (live[i % len(live)].call.remote(digest_task, request(job, task)), task)
            for i, task in enumerate(todo)
        ]
        todo = []
        for ref, task in calls:
            try:
                found.ids[task.task_id], digest = ray.get(ref)
                if digest is not None:
                    found.texts[task.task_id] = digest
            except RayActorError as err:
                deaths[task.task_id] = deaths.get(task.task_id, 0) + 1
                if deaths[task.task_id] > run.max_retries:
                    raise ClusterError(
                        f"the ids of {task.task_id} could not be read: its actor died "
                        f"{deaths[task.task_id]} times (last: {err}). Rerun to try again"
                    ) from err
                todo.append(task)
            except RayTaskError as err:
                found.unread[task.task_id] = err
    return found


@dataclass(frozen=True)
class RepeatTables:
    """Where the meets left the run's repeated ids (repeated_ids.py), for the tasks to read."""

    positions: dict[str, int] = field(default_factory=dict)  # task id -> position in run order
    refs: tuple[Any, ...] = ()  # ObjectRefs: the input files' keys, then one table per bucket
    found: int = 0  # repeated rows in the run

    def usable(self, digests: Digests) -> dict[str, np.ndarray]:
        """Per task, the rows whose id is neither null nor a repeat (read into the driver:
        only use_cache's planning needs them)."""
        tables = ray.get(list(self.refs[1:]))
        masks = {}
        for task_id, position in self.positions.items():
            summary = digests.ids[task_id]
            mask = np.ones(summary.rows, dtype=bool)
            mask[summary.null_rows] = False
            for table in tables:
                first, stop = np.searchsorted(table["task"], [position, position + 1])
                mask[table["row"][first:stop]] = False
            masks[task_id] = mask
        return masks


def meet_repeats(
    job: Job, actors: list[Any], order: list[Task], digests: Digests, stop: StopRequest
) -> RepeatTables:
    """The repeats among the digested tasks of `order`, one actor call per bucket of the
    digest space; the tables stay in the object store."""
    ready = [t for t in order if t.task_id in digests.ids]
    if not ready:
        return RepeatTables()
    number = {f.key: i for i, f in enumerate(job.files)}
    origins = np.array([[number[t.file.key], t.start] for t in ready], dtype=np.int64)
    summaries = [(id_file(t), digests.ids[t.task_id]) for t in ready]
    buckets = buckets_for(sum(s.rows for _, s in summaries), len(actors))
    out = job.config.output.path
    asks = [
        MeetRequest(out, bucket_parts(b, buckets, summaries), origins, job.storage)
        for b in range(buckets)
    ]
    counts, tables = call_each(actors, meet, asks, job.config.run, stop)
    log.info("%d repeated id(s) found in %d bucket(s) of the digest space", sum(counts), buckets)
    keys = ray.put([f.key for f in job.files])
    positions = {t.task_id: i for i, t in enumerate(ready)}
    return RepeatTables(positions, (keys, *tables), sum(counts))


def call_each(
    actors: list[Any], fn: Callable, asks: list[Any], run: Any, stop: StopRequest
) -> tuple[list[int], list[Any]]:
    """fn(ask) on the actors, for every ask: each call's count, read, and its result, left in
    the object store. A call whose actor died goes again, up to run.max_retries times."""
    counts: list[int] = [0] * len(asks)
    results: list[Any] = [None] * len(asks)
    deaths = [0] * len(asks)
    todo = list(range(len(asks)))
    while todo:
        stop.check()
        live = live_actors(actors, run.wait_timeout_s, stop)
        calls = [
            (live[n % len(live)].call.options(num_returns=2).remote(fn, asks[i]), i)
            for n, i in enumerate(todo)
        ]
        todo = []
        for (count, result), i in calls:
            try:
                counts[i], results[i] = ray.get(count), result
            except RayActorError as err:
                deaths[i] += 1
                if deaths[i] > run.max_retries:
                    raise ClusterError(
                        f"the repeated ids could not be found: an actor died {deaths[i]} times "
                        f"meeting the ids (last: {err}). Rerun to try again"
                    ) from err
                todo.append(i)
    return counts, results


def request(job: Job, task: Task) -> DigestRequest:
    inp, out = job.config.input, job.config.output.path
    text = (inp.text_column, job.prompt) if job.config.run.use_cache else None
    return DigestRequest(task, inp.id_column, out, text, job.storage)


def digest_task(_embedder: object, ask: DigestRequest) -> tuple[IdSummary, TextDigest | None]:
    """Runs on an actor (which passes its embedder first; it is not needed): the task's id
    digests and, under use_cache, its text digests."""
    task = ask.task
    columns = [ask.id_column, ask.text[0]] if ask.text else [ask.id_column]

    @functools.cache  # one read for both digests, and none when both are cached
    def rows() -> pl.DataFrame:
        return read_rows(task.file, task.start, task.stop, columns)

    out = Tree(ask.out, ask.storage, before_publish=check_write)
    ids = task_ids(task, out, lambda: rows()[ask.id_column].to_list())
    if ask.text is None:
        return ids, None
    column, prompt = ask.text
    return ids, task_texts(task, prompt, out, lambda: rows()[column].to_list())


def task_ids(task: Task, out: Tree, read_ids: Callable[[], list[object]]) -> IdSummary:
    """Writes the task's id digest file (repeated_ids.py) unless an earlier run of this output
    made it; what the driver keeps of it."""
    where = id_file(task)
    saved = out.read_bytes(where)
    if saved is not None:
        with contextlib.suppress(ValueError):  # not one of ours: made again
            return summary_of(saved)
    data = digest_file([None if v is None else str(v) for v in read_ids()])
    try:
        out.write_bytes(where, data)
    except OSError as err:
        raise OSError(f"cannot write the id digests at {out.at(where)}: {err}") from err
    return summary_of(data)


def id_file(task: Task) -> str:
    return digest_path("ids", task.task_id, task.file.size, task.file.version, ".ids")


def task_texts(
    task: Task, prompt: str, out: Tree, read_texts: Callable[[], list[object]]
) -> TextDigest:
    """The task's text digests, from the cache when an earlier run of this output made them
    (the output's fingerprint fixes the prompt)."""

    def compute() -> dict[str, np.ndarray]:
        digest = text_hashes(prompt, read_texts())
        return {"hashes": digest.hashes, "missing": digest.missing}

    where = digest_path("texts", task.task_id, task.file.size, task.file.version)
    saved = cached_arrays(out, where, compute)
    return TextDigest(saved["hashes"], saved["missing"])
