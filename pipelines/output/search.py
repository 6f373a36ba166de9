"""`embedpipe query`: the top k rows of an output for one query vector, read file by file.

The part files are those the output's done markers name (an unfinished task's files are not
searched), read a batch at a time, so memory stays flat in the output's size: the scan keeps
the k best rows so far and the batch at hand. Each precision is searched as stored: cosine for
float32 and float16, cosine of the dequantized values (each at the middle of its step) for int8
and uint8, and for binary and ubinary 1 - Hamming distance / d, from the packed bytes. On a
chunked output the rows are chunks: a hit names its chunk and the characters of the text it holds.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.output.fingerprint import FINGERPRINT_FILE
from pipelines.output.layout import PACKED, QUANTIZED, Layout, stored_ranges
from pipelines.output.part_files import HIVE_NULL
from pipelines.output.state import RunState, StateError
from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings

# Rows scored at a time: a batch of 1024-value float32 rows is 32 MiB. A file is read one row
# group at a time (a run writes one per task unless output.row_group_rows says otherwise).
BATCH_ROWS = 8_192
# The packed bits of a byte (popcount table), for Hamming distances without unpacking rows.
BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# A chunked output's provenance columns (embedding.chunking): which chunk of the text matched.
CHUNK_COLUMNS = ("chunk", "n_chunks", "char_start", "char_end")


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    kept: dict[str, Any]  # the kept columns (hive partition values included)
    chunk: dict[str, int] | None = None  # on a chunked output: CHUNK_COLUMNS of the row


@dataclass(frozen=True)
class Output:
    fingerprint: dict[str, Any]
    files: tuple[str, ...]  # part file locations
    kept: tuple[str, ...]  # kept column names

    def layout(self) -> Layout:
        model, vectors = self.fingerprint["model"], self.fingerprint.get("vectors") or {}
        return Layout.of(
            int(model["dim"]),
            vectors.get("dimensions"),
            vectors.get("precision", "float32"),
            bool(self.fingerprint["options"].get("normalize", True)),
            stored_ranges(self.fingerprint),
        )


def open_output(out: str, storage: StorageSettings) -> Output:
    state = RunState(out, storage)
    stored = state.tree.read_text(FINGERPRINT_FILE)
    if stored is None:
        raise StateError(f"{out} holds no embedpipe run ({FINGERPRINT_FILE} is missing)")
    fingerprint = json.loads(stored)
    files = tuple(p for marker in state.done().values() for p in marker.part_paths(out))
    if not files:
        raise StateError(f"{out} has no finished task yet: nothing to search")
    kept = tuple(fingerprint["columns"]["keep"])
    return Output(fingerprint, tuple(sorted(files)), kept)


def search(output: Output, query: np.ndarray, k: int, storage: StorageSettings) -> list[Hit]:
    """The k best rows for `query`, one row of the output's layout (Layout.encode)."""
    layout = output.layout()
    scorer = _scorer(layout, query)
    best_scores = np.zeros(0)
    best: list[Hit] = []
    for batch, partition in _batches(output.files, output.kept, storage):
        rows = _rows(batch.column("embedding"), layout)
        scores = scorer(rows)
        top = np.argsort(-scores, kind="stable")[:k]
        found = [
            Hit(
                str(batch.column("id")[i]),
                float(scores[i]),
                _kept(batch, int(i), output.kept, partition),
                _chunk(batch, int(i)),
            )
            for i in top
        ]
        merged = np.concatenate([best_scores, scores[top]])
        order = np.argsort(-merged, kind="stable")[:k]
        pool = best + found
        best, best_scores = [pool[i] for i in order], merged[order]
    return best


def _scorer(layout: Layout, query: np.ndarray) -> Any:
    if layout.precision in PACKED:
        q = _bytes(query.reshape(1, -1), layout)

        def hamming(rows: np.ndarray) -> np.ndarray:
            distance = BITS[np.bitwise_xor(_bytes(rows, layout), q)].sum(axis=1, dtype=np.int64)
            return 1.0 - distance / layout.dimensions

        return hamming
    q = _floats(query.reshape(1, -1), layout)[0]
    q = q / max(float(np.linalg.norm(q)), 1e-12)

    def cosine(rows: np.ndarray) -> np.ndarray:
        floats = _floats(rows, layout)
        norms = np.maximum(np.linalg.norm(floats, axis=1), 1e-12)
        return (floats @ q) / norms

    return cosine


def _bytes(rows: np.ndarray, layout: Layout) -> np.ndarray:
    return (rows.astype(np.int16) + 128).astype(np.uint8) if layout.precision == "binary" else rows


def _floats(rows: np.ndarray, layout: Layout) -> np.ndarray:
    if layout.precision in QUANTIZED:
        return layout.dequantize(rows)
    return rows.astype(np.float32, copy=False)


def _rows(column: pa.ChunkedArray | pa.Array, layout: Layout) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(array), layout.width)


def _batches(
    files: tuple[str, ...], kept: tuple[str, ...], storage: StorageSettings
) -> Iterator[tuple[pa.RecordBatch, dict[str, str | None]]]:
    """Each file's record batches, with the hive partition values of its path."""
    for location in files:
        with stores.open_input(location, storage) as stream:
            parquet = pq.ParquetFile(stream)
            wanted = ("id", "embedding", *CHUNK_COLUMNS, *kept)
            present = [c for c in wanted if c in parquet.schema_arrow.names]
            partition = _partition(location)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
                yield batch, partition


def _partition(location: str) -> dict[str, str | None]:
    parts = [p.split("=", 1) for p in location.split("/")[:-1] if "=" in p]
    return {k: None if v == HIVE_NULL else urllib.parse.unquote(v) for k, v in parts}


def _kept(
    batch: pa.RecordBatch, i: int, kept: tuple[str, ...], partition: dict[str, str | None]
) -> dict[str, Any]:
    found = {c: partition[c] for c in kept if c in partition}
    names = batch.schema.names
    found.update({c: batch.column(names.index(c))[i].as_py() for c in kept if c in names})
    return found


def _chunk(batch: pa.RecordBatch, i: int) -> dict[str, int] | None:
    names = batch.schema.names
    if "chunk" not in names:
        return None
    return {c: int(batch.column(names.index(c))[i].as_py()) for c in CHUNK_COLUMNS}
