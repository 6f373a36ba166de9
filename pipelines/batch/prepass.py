"""The prepass: every task's id digests (and under use_cache its text digests), made by the
actors, before any task is embedded; then the meets that find repeated ids and plan what each
task copies. The driver's half and the actors' half.

On an actor, `digest_task` reads the task's id column (under use_cache with its text column, in
the same read) and writes its digest files (output/digest_files.py, 20 bytes a row) under
`_state/ids/` and `_state/texts/`, keyed by the input's size and version, so a rerun reads
nothing again and the driver never reads a text. The driver keeps each file's group offsets and
hands the meets their slices: repeated ids (repeated_ids.py), then under use_cache the plan of
who embeds each distinct text (reindex/plan.py). Neither puts a row's digest in the driver.

Embedding must not start while a task's digests are missing: its repeats would go unseen, and
which occurrence of an id is kept would then depend on timing. So an actor death here only
sends the call again (to the actors that answer), and one whose actor died more than
`max_retries` times stops the run; the next run starts the pass again from its files. A task
whose ids cannot be read is returned with its error, to be recorded as failed, not embedded;
a file already known to be unreadable is not asked for at all (its task fails with the reason).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import ray
from ray.exceptions import RayActorError, RayTaskError

from pipelines.batch.chunk_rows import chunk_digest_file
from pipelines.batch.cluster import ClusterError, live_actors
from pipelines.batch.preflight import Job
from pipelines.batch.repeated_ids import MeetRequest, id_digest_file, meet
from pipelines.inputs.planning import Task, read_task
from pipelines.interrupt import StopRequest
from pipelines.output.digest_files import (
    DigestSummary,
    bucket_parts,
    buckets_for,
    summary_of,
)
from pipelines.output.faults import check_write
from pipelines.output.state import digest_path, location_name
from pipelines.reindex.cache_from import CacheFile, cache_digest_file
from pipelines.reindex.plan import (
    RunLinks,
    TextMeetRequest,
    latest_owners,
    meet_texts,
    text_digest_file,
)
from pipelines.reindex.shares import waiter_key
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers import EmbedOptions
from workers.actor import CONCURRENT_TASKS
from workers.chunking import Chunking

if TYPE_CHECKING:  # only actors load the embedder
    from workers import Embedder

log = logging.getLogger(__name__)

AHEAD = CONCURRENT_TASKS + 1  # calls waiting on one actor: enough that it never idles


@dataclass(frozen=True)
class DigestRequest:
    """What an actor needs to digest one task: small and picklable."""

    task: Task
    id_column: str
    out: str
    text: tuple[str, str] | None = None  # (text column, prompt) under use_cache
    storage: StorageSettings = field(default_factory=StorageSettings)
    # embedding.chunking with pool: none, and the texts' options: texts digested by chunk
    chunks: Chunking | None = None
    options: EmbedOptions = field(default_factory=EmbedOptions)


@dataclass(frozen=True)
class Digests:
    """The prepass's answer: digests by task id, and the error of each task it could not read."""

    ids: dict[str, DigestSummary] = field(default_factory=dict)
    texts: dict[str, DigestSummary] = field(default_factory=dict)
    unread: dict[str, Exception] = field(default_factory=dict)

    def failing(self, errors: dict[str, Exception]) -> Digests:
        """These digests less the tasks of `errors`, which fail with them."""
        ids = {k: v for k, v in self.ids.items() if k not in errors}
        texts = {k: v for k, v in self.texts.items() if k not in errors}
        return Digests(ids, texts, {**self.unread, **errors})


def collect_digests(job: Job, actors: list[Any], tasks: list[Task], stop: StopRequest) -> Digests:
    """Every readable task of `tasks` digested by the actors that answer."""
    found = Digests()
    todo = [t for t in tasks if t.file.error is None]
    asks = [request(job, task) for task in todo]
    send = functools.partial(_call, fn=digest_task, fetched=(), returns=1)
    for i, (ref,) in answers(actors, asks, send, job.config.run, stop, "reading the ids"):
        task = todo[i]
        try:
            found.ids[task.task_id], digest = ray.get(ref)
        except RayTaskError as err:
            found.unread[task.task_id] = err
            continue
        if digest is not None:
            found.texts[task.task_id] = digest
    return found


@dataclass(frozen=True)
class RepeatTables:
    """Where the meets left the run's repeated ids (repeated_ids.py), for the tasks to read."""

    positions: dict[str, int] = field(default_factory=dict)  # task id -> position in run order
    refs: tuple[Any, ...] = ()  # ObjectRefs: the input files' keys, then one table per bucket
    found: int = 0  # repeated rows in the run


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
    summaries = [(digest_file_path("ids", t), digests.ids[t.task_id]) for t in ready]
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


@dataclass(frozen=True)
class ReusePlan:
    """use_cache: by position, the latest earlier task each task waits for (-1: none), and
    where every task learns its sources and what it hands on (reindex/plan.py's RunLinks)."""

    latest: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    refs: tuple[Any, ...] = ()  # ObjectRefs, as RunLinks.of reads them


def plan_reuse(
    job: Job,
    actors: list[Any],
    digests: Digests,
    repeats: RepeatTables,
    cache: tuple[CacheFile, ...],
    done: dict[str, tuple[str, ...]],
    stop: StopRequest,
) -> ReusePlan:
    """use_cache: which cache files and earlier tasks each task copies vectors from
    (reindex/plan.py), one actor call per bucket of the text hashes; `done` are the part files
    of the tasks done before this run."""
    ready = sorted(repeats.positions, key=repeats.positions.__getitem__)
    if not ready:
        return ReusePlan()
    tasks = {t.task_id: t for t in job.tasks}
    summaries = [(digest_file_path("texts", tasks[t]), digests.texts[t]) for t in ready]
    cached, locations = digest_cache(job, actors, cache, stop)
    buckets = buckets_for(sum(s.rows for _, s in summaries + cached), len(actors))
    out = job.config.output.path
    asks = [
        TextMeetRequest(
            out,
            bucket_parts(b, buckets, summaries),
            bucket_parts(b, buckets, cached),
            job.storage,
        )
        for b in range(buckets)
    ]
    tables = repeats.refs[1:]
    counts, found = call_each(actors, meet_texts, asks, job.config.run, stop, tables, returns=5)
    log.info("use_cache: %d copy relation(s) planned in %d bucket(s)", sum(counts), buckets)
    latest = latest_owners(len(ready), (ray.get(f[0]) for f in found))  # one bucket at a time
    done_at = {repeats.positions[t]: files for t, files in done.items() if t in repeats.positions}
    refs = RunLinks.flat(
        ray.put(np.array([waiter_key(t) for t in ready], dtype=np.uint64)),
        ray.put(np.array([t.encode() for t in ready], dtype=np.bytes_)),
        ray.put(done_at),
        ray.put(locations),
        shares=[f[3] for f in found],
        copies=[f[1] for f in found],
        waits=[f[2] for f in found],
    )
    return ReusePlan(latest, refs)


@dataclass(frozen=True)
class CacheDigestRequest:
    file: CacheFile
    out: str
    storage: StorageSettings = field(default_factory=StorageSettings)


def digest_cache(
    job: Job, actors: list[Any], files: tuple[CacheFile, ...], stop: StopRequest
) -> tuple[list[tuple[str, DigestSummary]], tuple[str, ...]]:
    """The cache files' digest files, made by the actors (or kept from an earlier run of this
    output): each one's path and summary, and the files' locations, in cache_from order. A file
    that cannot be read now is left out (its texts are embedded), with a warning."""
    out = job.config.output.path
    asks = [CacheDigestRequest(f, out, job.storage) for f in files]
    _, results = call_each(actors, cache_digest, asks, job.config.run, stop)
    summaries, locations = [], []
    for file, found in zip(files, ray.get(results), strict=True):
        if isinstance(found, str):
            log.warning("cache_from: not using %s: %s", file.location, found)
            continue
        summaries.append((cache_digest_path(file), found))
        locations.append(file.location)
    return summaries, tuple(locations)


def cache_digest_path(file: CacheFile) -> str:
    return digest_path("cache", location_name(file.location), file.size, file.version)


def cache_digest(_embedder: object, ask: CacheDigestRequest) -> tuple[int, DigestSummary | str]:
    """Runs on an actor: a cache file's digest file, written unless an earlier run made it;
    its summary, or why the file cannot be read."""
    out = Tree(ask.out, ask.storage, before_publish=check_write)
    try:
        made = cached_file(
            out,
            cache_digest_path(ask.file),
            lambda: cache_digest_file(ask.file.location, ask.storage),
        )
    except (OSError, ValueError) as err:  # gone or damaged since it was listed
        return 0, f"cannot be read: {err}"
    return made.rows, made


def call_each(
    actors: list[Any],
    fn: Callable,
    asks: list[Any],
    run: Any,
    stop: StopRequest,
    fetched: tuple[Any, ...] = (),
    returns: int = 2,
) -> tuple[list[int], list[Any]]:
    """fn(ask, *fetched) on the actors, for every ask: each call's count, read, and its result
    (with `returns` above 2, its results), left in the object store."""
    counts: list[int] = [0] * len(asks)
    results: list[Any] = [None] * len(asks)
    send = functools.partial(_call, fn=fn, fetched=fetched, returns=returns)
    for i, (count, *result) in answers(actors, asks, send, run, stop, "meeting the digests"):
        counts[i], results[i] = ray.get(count), result[0] if returns == 2 else result
    return counts, results


def answers(
    actors: list[Any],
    asks: list[Any],
    send: Callable[..., Any],
    run: Any,
    stop: StopRequest,
    doing: str,
) -> Iterator[tuple[int, list[Any]]]:
    """send(actor, ask) for every ask, with at most AHEAD calls waiting on each actor that
    answers (a million tasks sent at once would hold a million call specs in the driver); each
    ask's number and refs, in the order the calls end. A call whose actor died goes again, up
    to run.max_retries times; then the run stops with a ClusterError."""
    deaths = [0] * len(asks)
    todo = deque(range(len(asks)))
    waiting: dict[Any, tuple[int, list[Any], Any]] = {}  # first ref -> (ask, refs, actor)
    load: Counter[Any] = Counter()
    while todo or waiting:
        stop.check()
        if todo and not load:
            live = live_actors(actors, run.wait_timeout_s, stop)
            load = Counter({a: 0 for a in live})
            load.update(a for *_, a in waiting.values() if a in load)
        while todo and load and min(load.values()) < AHEAD:
            actor = min(load, key=load.__getitem__)
            i = todo.popleft()
            refs = send(actor, asks[i])
            refs = refs if isinstance(refs, list) else [refs]
            waiting[refs[0]] = (i, refs, actor)
            load[actor] += 1
        ended, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
        for ref in ended:
            i, refs, actor = waiting.pop(ref)
            if actor in load:
                load[actor] -= 1
            try:
                ray.get(ref)
            except RayActorError as err:
                deaths[i] += 1
                if deaths[i] > run.max_retries:
                    raise ClusterError(
                        f"{doing}: an actor died {deaths[i]} times (last: {err}). Rerun to try "
                        "again"
                    ) from err
                todo.append(i)
                load = Counter()  # ask again which actors answer
                continue
            except RayTaskError:
                pass  # the caller's to read
            yield i, refs


def _call(actor: Any, ask: Any, fn: Callable, fetched: tuple[Any, ...], returns: int) -> Any:
    method = actor.call_with if fetched else actor.call
    if returns != 1:
        method = method.options(num_returns=returns)
    return method.remote(fn, ask, *fetched)


def request(job: Job, task: Task) -> DigestRequest:
    inp, out = job.config.input, job.config.output.path
    text = (inp.text_column, job.prompt) if job.config.run.use_cache else None
    chunking = job.config.embedding.chunked(job.card.max_seq_length)
    chunks = chunking if chunking is not None and chunking.pool == "none" else None
    options = job.config.embedding.options()
    return DigestRequest(task, inp.id_column, out, text, job.storage, chunks, options)


def digest_task(
    embedder: Embedder, ask: DigestRequest
) -> tuple[DigestSummary, DigestSummary | None]:
    """Runs on an actor (which passes its embedder first; its tokenizer chunks texts under
    chunking): the task's id digest file and, under use_cache, its text digest file, written
    unless an earlier run of this output made them; what the driver keeps of each."""
    task = ask.task
    columns = [ask.id_column, ask.text[0]] if ask.text else [ask.id_column]

    @functools.cache  # one read for both digests, and none when both are cached
    def rows() -> pl.DataFrame:
        return read_task(task, columns)

    def ids() -> list[str | None]:
        return [None if v is None else str(v) for v in rows()[ask.id_column].to_list()]

    out = Tree(ask.out, ask.storage, before_publish=check_write)
    id_summary = cached_file(out, digest_file_path("ids", task), lambda: id_digest_file(ids()))
    if ask.text is None:
        return id_summary, None
    column, prompt = ask.text

    def texts() -> bytes:
        if ask.chunks is not None:
            found = rows()[column].to_list()
            return chunk_digest_file(embedder, ask.chunks, ask.options, prompt, found, ids())
        return text_digest_file(prompt, rows()[column].to_list(), ids())

    return id_summary, cached_file(out, digest_file_path("texts", task), texts)


def digest_file_path(kind: str, task: Task) -> str:
    return digest_path(kind, task.task_id, task.file.size, task.file.version)


def cached_file(out: Tree, where: str, make: Callable[[], bytes]) -> DigestSummary:
    """The digest file at `where` that an earlier run of this output made (keyed by the
    input's size and version), else made and written there now."""
    saved = out.read_bytes(where)
    if saved is not None:
        with contextlib.suppress(ValueError):  # not one of ours: made again
            return summary_of(saved)
    data = make()
    try:
        out.write_bytes(where, data)
    except OSError as err:
        raise OSError(f"cannot write the digests at {out.at(where)}: {err}") from err
    return summary_of(data)
