"""Row counts of CSV and compressed shards, made on the cluster instead of in the driver.

Uncompressed JSON Lines are cut by bytes and Parquet counts come from footers, but a CSV (whose
fields may hold newlines) or a gzip/zstd stream has to be read to be counted. Listing leaves
those uncounted; once the run holds its output, one Ray task per such file counts it, in
parallel across the cluster, and the count is kept under `_state/counts/` keyed by the file's
location, size and version, so a rerun reads nothing again. The driver holds a number per file.
A file that cannot be read becomes a task that fails with the reason, as at listing.

A compressed stream cannot be entered in the middle, so each task of a compressed shard
decompresses it from the start up to its rows: a shard of many tasks is decompressed about
tasks/2 times over. Such shards are named in a warning, with the fix (smaller shards).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter
from typing import Any

import ray

from pipelines.batch.cluster import connect
from pipelines.batch.preflight import Job
from pipelines.inputs.planning import Task, needs_count, plan_tasks
from pipelines.inputs.readers import COMPRESSIONS, InputError, InputFile, count_rows
from pipelines.interrupt import StopRequest
from pipelines.output.faults import check_write
from pipelines.output.state import digest_path, location_name
from pipelines.storage.tree import Tree

log = logging.getLogger(__name__)

AHEAD = 64  # counts running or queued at once, at the least
STREAM_TASKS = 8  # tasks of one compressed shard before a warning (4 decompressions of it)


def count_inputs(job: Job, stop: StopRequest) -> Job:
    """The job with every shard counted and its tasks planned."""
    todo = [f for f in job.files if needs_count(f)]
    if not todo:
        return job
    out = Tree(job.config.output.path, job.storage, before_publish=check_write)
    found: dict[str, int | str] = {}
    for file in todo:
        if (saved := _saved(out, file)) is not None:
            found[file.path] = saved
    asked = [f for f in todo if f.path not in found]
    if asked:
        log.info("counting the rows of %d CSV or compressed shard(s) on the cluster", len(asked))
        connect()
        stop.install()  # ray.init put its own SIGTERM handler in place of ours
        for file, count in zip(asked, _gather(asked, stop), strict=True):
            found[file.path] = count
            if isinstance(count, int):
                out.write_text(count_path(file), f"{count}\n")
    files = with_counts(job.files, found)
    tasks = plan_tasks(files, job.config.input.rows_per_task)
    warn_long_streams(tasks)
    return dataclasses.replace(job, files=files, tasks=tasks)


def warn_long_streams(tasks: list[Task]) -> None:
    per_file = Counter(t.file.path for t in tasks if t.file.path.endswith(COMPRESSIONS))
    long = sorted(path for path, n in per_file.items() if n > STREAM_TASKS)
    if long:
        log.warning(
            "%d compressed shard(s) of more than %d tasks, each decompressed from the start by "
            "every one of its tasks (e.g. %s, %d tasks); split them into shards of at most "
            "%d x input.rows_per_task rows for speed",
            len(long),
            STREAM_TASKS,
            long[0],
            per_file[long[0]],
            STREAM_TASKS,
        )


def with_counts(files: list[InputFile], found: dict[str, int | str]) -> list[InputFile]:
    """The files with their counts (by path); a message instead of a count fails the file."""
    counted = []
    for file in files:
        count = found.get(file.path)
        if isinstance(count, int):
            file = dataclasses.replace(file, rows=count)
        elif isinstance(count, str):
            file = dataclasses.replace(file, error=count)
        counted.append(file)
    return counted


def count_path(file: InputFile) -> str:
    return digest_path("counts", location_name(file.path), file.size, file.version, "rows")


def _saved(out: Tree, file: InputFile) -> int | None:
    text = out.read_text(count_path(file))
    return int(text) if text is not None and text.strip().isdigit() else None


def _gather(files: list[InputFile], stop: StopRequest) -> list[int | str]:
    """The files counted, two per CPU of the cluster at a time (at least AHEAD), not a task
    spec per file held at once."""
    ahead = max(AHEAD, 2 * int(ray.cluster_resources().get("CPU", 0)))
    found: dict[int, int | str] = {}
    todo, waiting = iter(enumerate(files)), dict[Any, int]()
    while True:
        stop.check()
        for i, file in itertools.islice(todo, ahead - len(waiting)):
            waiting[_count.remote(file)] = i
        if not waiting:
            break
        ended, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0.5)
        for ref in ended:
            found[waiting.pop(ref)] = ray.get(ref)
    return [found[i] for i in range(len(files))]


@ray.remote(num_cpus=1, max_retries=3)
def _count(file: InputFile) -> int | str:
    """Runs on the cluster: the file's rows, or why it cannot be read."""
    try:
        return count_rows(file.path, file.format, file.storage, file.size)
    except InputError as err:
        return str(err)
