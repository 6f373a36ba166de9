"""One task, start to finish, inside an actor: read its rows, embed them, write its files.

This is the code the driver sends to an actor (which holds the loaded embedder), so it needs no
Ray. Every row of the task ends in exactly one place: its part file or the rejects, with the
reason. Ids are checked here (null, or repeated inside the task); texts by the embedder. Under
use_cache, rows whose text another part file already holds are copied from it
(reindex/embed_or_copy.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.batch.chunk_rows import provenance
from pipelines.batch.repeated_ids import repeats_of
from pipelines.inputs.planning import Task, read_task
from pipelines.output.faults import check_write
from pipelines.output.file_sizing import FileSizing
from pipelines.output.layout import Layout
from pipelines.output.markers import DoneMarker, PartFile
from pipelines.output.part_files import (
    embeddings_table,
    parquet_bytes,
    partitions,
    rejects_table,
)
from pipelines.output.run_figures import token_histogram
from pipelines.reindex.embed_or_copy import (
    Resolved,
    embed_all,
    embed_or_copy,
    known_of,
    read_handed,
    read_known,
)
from pipelines.reindex.plan import RunLinks, Sources
from pipelines.reindex.shares import Shared, share_file, share_path, shared_rows, waiter_key
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers import EmbedOptions
from workers.chunking import Chunking
from workers.embeddings import TextModel
from workers.text_hash import TextDigest, text_hashes

if TYPE_CHECKING:  # the driver builds specs; only actors need the embedder (and onnxruntime)
    from workers import Embedder
    from workers.chunker import ChunkRows


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
    position: int = -1  # in run order, for the repeat tables of repeated_ids.py
    prompt: str = ""  # what text_hash puts before each text
    use_cache: bool = False
    # where it copies vectors from; under a planned run, set on the actor from RunLinks
    sources: Sources = field(default_factory=Sources)
    repeat_refs: int = 0  # how many of the objects fetched for it are repeated_ids.py's
    storage: StorageSettings = field(default_factory=StorageSettings)  # for s3:// cache_from
    layout: Layout | None = None  # output.dimensions and precision; None: the model's float32
    sizing: FileSizing = field(default_factory=FileSizing)  # output.max_rows_per_file, ...
    chunking: Chunking | None = None  # embedding.chunking

    def layout_for(self, dim: int) -> Layout:
        return self.layout or Layout.of(dim, None, "float32", self.options.normalize)


def run_task(embedder: Embedder, spec: TaskSpec, *fetched: Any) -> DoneMarker:
    """fetched: where the run's repeated ids are (the input files' keys, then one table per
    bucket; repeated_ids.py), without which spec.repeats holds them; then under use_cache where
    it copies from and what it hands on (reindex/plan.py's RunLinks)."""
    task, clock = spec.task, time.perf_counter()
    if spec.repeat_refs:
        keys, *tables = fetched[: spec.repeat_refs]
        repeats = repeats_of(spec.position, tuple(tables), keys)
        spec = dataclasses.replace(spec, repeats=repeats)
    links = RunLinks.of(fetched[spec.repeat_refs :]) if len(fetched) > spec.repeat_refs else None
    if links is not None:
        spec = dataclasses.replace(spec, sources=links.sources(spec.position))
    columns = list(dict.fromkeys([spec.id_column, spec.text_column, *spec.keep_columns]))
    frame = read_task(task, columns)
    read_s, clock = time.perf_counter() - clock, time.perf_counter()
    ids = [None if v is None else str(v) for v in frame[spec.id_column].to_list()]
    reasons = id_problems(ids, spec.repeats)
    live = [i for i, r in enumerate(reasons) if r is None]
    texts = frame[spec.text_column].to_list()
    units = units_of(embedder, spec, [texts[i] for i in live], np.array(live, np.int64))
    for row, reason in units.errors.items():
        reasons[row] = reason
    digest = text_hashes(spec.prompt, units.texts)
    result = resolve(model_for(embedder, spec), units.spec, units.texts, digest)
    found = result.rows
    embed_s, clock = time.perf_counter() - clock, time.perf_counter()
    ok = found.ok
    rows = units.rows[ok]
    kept = frame.select(list(spec.keep_columns)).to_arrow()
    table = embeddings_table(
        [str(ids[i]) for i in rows.tolist()],
        found.vectors[ok],
        found.n_tokens[ok],
        found.truncated[ok],
        digest.hashes[ok],
        kept.take(pa.array(rows, pa.int64())),
        spec.fingerprint,
        provenance(units.chunks, np.flatnonzero(ok)) if units.chunks else None,
    )
    if links is not None:  # before the part files: waiters start once it is done
        shared = shared_rows(spec.position, links.keys, links.shares, units.rows, digest, found)
        hand_on(spec, shared)
    files = write_parts(table, spec)
    rejects = Rejects.of(ids, reasons, units, found.errors)
    files += write_rejects(rejects, spec)
    write_s = time.perf_counter() - clock
    return DoneMarker(
        task_id=task.task_id,
        input_key=task.file.key,
        input_size=task.file.size,
        input_version=task.file.version,
        rows=frame.height,  # task.rows, once a byte range is numbered (inputs/planning.py)
        embedded=result.embedded,
        rejected=len(rejects.rows),
        tokens=result.tokens,
        seconds={"read": read_s, "embed": embed_s, "device": found.device_s, "write": write_s},
        files=tuple(files),
        from_cache=result.from_cache,
        deduplicated=result.deduplicated,
        oom_splits=found.oom_splits,
        max_batch_tokens=embedder.max_batch_tokens,
        chunks=table.num_rows if units.chunks else 0,
        token_counts=token_histogram(found.n_tokens[ok], embedder.card.max_seq_length),
        token_max=embedder.card.max_seq_length,
    )


@dataclass(frozen=True)
class Units:
    """What a task resolves: its live texts, or under pool: none their chunks, with the task
    row each came from (ascending), and the spec they are resolved under."""

    texts: Sequence[object]
    rows: np.ndarray  # (units,) int64
    spec: TaskSpec
    chunks: ChunkRows | None = None
    errors: dict[int, str] = field(default_factory=dict)  # task rows that have no unit: why


def units_of(embedder: Embedder, spec: TaskSpec, texts: list[object], live: np.ndarray) -> Units:
    """The task's live texts as the units it embeds (`live`: their task rows)."""
    if spec.chunking is None or spec.chunking.pool == "mean":
        return Units(texts, live, spec)
    from workers.chunker import Chunker, chunk_options  # the tokenizer: actors only

    card = embedder.card
    chunker = Chunker(embedder.preparer, card.max_seq_length, spec.chunking, spec.options)
    chunks, errors = chunker.rows(texts)
    chunk_spec = dataclasses.replace(spec, options=chunk_options(spec.options))
    bad = {int(live[i]): e for i, e in enumerate(errors) if e is not None}
    return Units(chunks.texts, live[chunks.owners], chunk_spec, chunks, bad)


def model_for(embedder: Embedder, spec: TaskSpec) -> TextModel:
    """What embeds a unit: the embedder, or under pool: mean one that pools a text's chunks."""
    if spec.chunking is not None and spec.chunking.pool == "mean":
        from workers.chunker import PooledEmbedder  # the tokenizer: actors only

        return PooledEmbedder(embedder, spec.chunking)
    return embedder


@dataclass(frozen=True)
class Rejects:
    """A task's reject rows: task row, id, reason, and under pool: none the chunk (None where
    the whole text is rejected)."""

    rows: list[int]
    ids: list[str | None]
    reasons: list[str]
    chunks: list[int | None] | None = None

    @classmethod
    def of(
        cls,
        ids: list[str | None],
        reasons: list[str | None],
        units: Units,
        errors: Sequence[str | None],
    ) -> Rejects:
        """Rows rejected whole (`reasons`), then the units the model could not embed."""
        whole = [(i, None, r) for i, r in enumerate(reasons) if r is not None]
        numbers = units.chunks.numbers.tolist() if units.chunks else [None] * len(errors)
        failed = [
            (int(units.rows[k]), numbers[k], e) for k, e in enumerate(errors) if e is not None
        ]
        found = sorted(whole + failed, key=lambda r: (r[0], -1 if r[1] is None else r[1]))
        return cls(
            [r for r, _, _ in found],
            [ids[r] for r, _, _ in found],
            [e for _, _, e in found],
            [c for _, c, _ in found] if units.chunks else None,
        )


def resolve(
    embedder: TextModel, spec: TaskSpec, texts: Sequence[object], digest: TextDigest
) -> Resolved:
    layout = spec.layout_for(embedder.card.dim)
    if not spec.use_cache:
        return embed_all(embedder, texts, spec.options, layout)
    sources = spec.sources
    cache = read_known(sources.cache_files, digest.hashes, layout, spec.storage)
    done = read_known(sources.run_files, digest.hashes, layout, spec.storage)
    key = waiter_key(spec.task.task_id)
    handed = read_handed(out_tree(spec), sources.share_owners, key, layout)
    run = known_of([(done.hashes, done.rows), (handed.hashes, handed.rows)], layout)
    return embed_or_copy(embedder, texts, digest, spec.options, cache, run, layout)


def hand_on(spec: TaskSpec, shared: Shared) -> None:
    """Writes the task's share file, when a later task copies any of its rows."""
    if len(shared.keys):
        out_tree(spec).write_bytes(share_path(spec.task.task_id), share_file(shared))


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


def write_parts(table: pa.Table, spec: TaskSpec) -> list[PartFile]:
    """The task's part files: one per partition, named part-<task>.parquet, or with
    output.max_rows_per_file numbered part-<task>-<k>.parquet in every partition."""
    if table.num_rows == 0:
        return []
    sizing, files = spec.sizing, []
    for subdir, rows in partitions(table, list(spec.partition_by)):
        pieces = sizing.pieces(rows)
        for k, piece in enumerate(pieces):
            number = "" if sizing.max_rows_per_file is None else f"-{k:05d}"
            relative = Path(subdir) / f"part-{spec.task.task_id}{number}.parquet"
            sha = out_tree(spec).write_bytes(relative.as_posix(), parquet_bytes(piece, sizing))
            files.append(PartFile(relative.as_posix(), piece.num_rows, sha))
    return files


def write_rejects(rejects: Rejects, spec: TaskSpec) -> list[PartFile]:
    if not rejects.rows:
        return []
    task = spec.task
    table = rejects_table(
        task.file.key,
        [task.start + i for i in rejects.rows],
        rejects.ids,
        rejects.reasons,
        spec.fingerprint,
        rejects.chunks,
    )
    relative = Path("_rejects") / f"part-{task.task_id}.parquet"
    sha = out_tree(spec).write_bytes(relative.as_posix(), parquet_bytes(table, spec.sizing))
    return [PartFile(relative.as_posix(), len(rejects.rows), sha, rejects=True)]


def out_tree(spec: TaskSpec) -> Tree:
    return Tree(spec.out, spec.storage, before_publish=check_write)
