"""One task, start to finish, inside an actor: read its rows, embed them, write its files.

This is the code the driver sends to an actor (which holds the loaded embedder), so it needs no
Ray. Every row of the task ends in exactly one place: its part file or the rejects, with the
reason. Ids are checked here (null, or repeated inside the task); texts by the embedder. Under
use_cache, rows whose text another part file already holds are copied from it (known.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.known import Resolved, embed_all, embed_or_copy, read_known
from pipelines.planning import Task
from pipelines.readers import read_rows
from pipelines.reuse import TextDigest
from pipelines.writers import embeddings_table, partitions, rejects_table, write_parquet_atomic
from workers import EmbedOptions
from workers.text_hash import text_hashes

if TYPE_CHECKING:  # the driver builds specs; only actors need the embedder (and onnxruntime)
    from workers import Embedder


@dataclass(frozen=True)
class TaskSpec:
    """What an actor needs to run one task; small and picklable."""

    task: Task
    out: str
    id_column: str
    text_column: str
    keep_columns: tuple[str, ...]
    partition_by: tuple[str, ...]
    options: EmbedOptions
    fingerprint: str
    repeats: dict[int, str] = field(default_factory=dict)  # row offset -> "repeats row N of F"
    prompt: str = ""  # what text_hash puts before each text
    use_cache: bool = False
    cache_files: tuple[str, ...] = ()  # cache_from part files that hold some of its texts
    run_files: tuple[str, ...] = ()  # this run's part files that hold some of its texts


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    rows: int
    embedded: int  # rows the model computed
    rejected: int
    tokens: int
    seconds: dict[str, float]
    files: list[dict[str, Any]] = field(default_factory=list)
    input_key: str = ""
    input_size: int = 0
    from_cache: int = 0
    deduplicated: int = 0
    oom_splits: int = 0  # batches split because the device ran out of memory
    max_batch_tokens: int = 0  # the actor's budget when the task ended (lowered by those)

    def as_marker(self) -> dict[str, Any]:
        return {
            "input": {"key": self.input_key, "size": self.input_size},
            "rows": self.rows,
            "embedded": self.embedded,
            "from_cache": self.from_cache,
            "deduplicated": self.deduplicated,
            "rejected": self.rejected,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "files": self.files,
            "device_oom": {"splits": self.oom_splits, "max_batch_tokens": self.max_batch_tokens},
        }


def run_task(embedder: Embedder, spec: TaskSpec) -> TaskResult:
    task, clock = spec.task, time.perf_counter()
    columns = list(dict.fromkeys([spec.id_column, spec.text_column, *spec.keep_columns]))
    frame = read_rows(task.file, task.start, task.stop, columns)
    read_s, clock = time.perf_counter() - clock, time.perf_counter()
    ids = [None if v is None else str(v) for v in frame[spec.id_column].to_list()]
    reasons = id_problems(ids, spec.repeats)
    live = [i for i, r in enumerate(reasons) if r is None]
    texts = frame[spec.text_column].to_list()
    live_texts = [texts[i] for i in live]
    digest = TextDigest(*text_hashes(spec.prompt, live_texts))
    result = resolve(embedder, spec, live_texts, digest)
    found = result.rows
    for i, error in zip(live, found.errors, strict=True):
        reasons[i] = error
    embed_s, clock = time.perf_counter() - clock, time.perf_counter()
    ok = found.ok
    rows = [live[i] for i in np.flatnonzero(ok)]
    kept = frame.select(list(spec.keep_columns)).to_arrow()
    table = embeddings_table(
        [str(ids[i]) for i in rows],
        found.vectors[ok],
        found.n_tokens[ok],
        found.truncated[ok],
        digest.hashes[ok],
        kept.take(pa.array(rows, pa.int64())),
        spec.fingerprint,
    )
    files = write_parts(table, spec)
    files += write_rejects(ids, reasons, spec)
    write_s = time.perf_counter() - clock
    return TaskResult(
        task_id=task.task_id,
        rows=task.rows,
        embedded=result.embedded,
        rejected=task.rows - len(rows),
        tokens=result.tokens,  # the model's: copied rows cost none
        # "device" is the part of "embed" spent running the model; the rest is tokenizing and
        # waiting for the other task of the actor to release the device.
        seconds={"read": read_s, "embed": embed_s, "device": found.device_s, "write": write_s},
        files=files,
        input_key=task.file.key,
        input_size=task.file.size,
        from_cache=result.from_cache,
        deduplicated=result.deduplicated,
        oom_splits=found.oom_splits,
        max_batch_tokens=embedder.max_batch_tokens,
    )


def resolve(
    embedder: Embedder, spec: TaskSpec, texts: list[object], digest: TextDigest
) -> Resolved:
    if not spec.use_cache:
        return embed_all(embedder, texts, spec.options)
    cache = read_known(spec.cache_files, digest.hashes, embedder.card.dim)
    run = read_known(spec.run_files, digest.hashes, embedder.card.dim)
    return embed_or_copy(embedder, texts, digest, spec.options, cache, run)


def id_problems(ids: list[str | None], repeats: dict[int, str]) -> list[str | None]:
    """Why each row's id is unusable: null, or a repeat the driver found; None when fine."""
    reasons: list[str | None] = []
    for row, value in enumerate(ids):
        if value is None:
            reasons.append("id is null")
        elif row in repeats:
            reasons.append(f"id {value!r} {repeats[row]}")
        else:
            reasons.append(None)
    return reasons


def write_parts(table: pa.Table, spec: TaskSpec) -> list[dict[str, Any]]:
    if table.num_rows == 0:
        return []
    files = []
    for subdir, rows in partitions(table, list(spec.partition_by)):
        relative = Path(subdir) / f"part-{spec.task.task_id}.parquet"
        sha = write_parquet_atomic(rows, Path(spec.out) / relative)
        files.append({"path": relative.as_posix(), "rows": rows.num_rows, "sha256": sha})
    return files


def write_rejects(
    ids: list[str | None], reasons: list[str | None], spec: TaskSpec
) -> list[dict[str, Any]]:
    bad = [i for i, r in enumerate(reasons) if r is not None]
    if not bad:
        return []
    task = spec.task
    table = rejects_table(
        task.file.key,
        [task.start + i for i in bad],
        [ids[i] for i in bad],
        [str(reasons[i]) for i in bad],
        spec.fingerprint,
    )
    relative = Path("_rejects") / f"part-{task.task_id}.parquet"
    sha = write_parquet_atomic(table, Path(spec.out) / relative)
    return [{"path": relative.as_posix(), "rows": len(bad), "sha256": sha, "rejects": True}]
