"""Part files: one task's embeddings (and its rejects) as Parquet, written atomically.

Declared schema: `id` string (ids from CSV, JSON and Parquet shards agree, and "00123" stays
"00123"), `embedding` FixedSizeList<float32, dim> (or as output/layout.py says), `n_tokens`
int32, `truncated` bool, `text_hash` fixed_size_binary(16) (workers/text_hash.py says which
hash), then the kept columns; the run fingerprint rides in the schema metadata, so a lone part
file still says which model and options made it. A file is built whole in memory and written
whole (storage/tree.py: a rename locally, one PUT on an object store), so a reader never sees
half a file. Same rows in, same bytes out, wherever they are written.
"""

from __future__ import annotations

import io
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.output.faults import check_write
from pipelines.output.file_sizing import FileSizing
from pipelines.output.fingerprint import FINGERPRINT_KEY
from pipelines.storage.tree import Tree
from workers.text_hash import HASH_BYTES, HASH_DTYPE

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def embeddings_table(
    ids: list[str],
    vectors: np.ndarray,
    n_tokens: np.ndarray,
    truncated: np.ndarray,
    hashes: np.ndarray,
    kept: pa.Table,
    fingerprint: str,
    provenance: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """`provenance`: a chunk row's columns (chunk, n_chunks, char_start, char_end), after id."""
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1))  # the layout's dtype
    columns = {
        "id": pa.array(ids, pa.string()),
        **(provenance or {}),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        "n_tokens": pa.array(n_tokens, pa.int32()),
        "truncated": pa.array(truncated, pa.bool_()),
        "text_hash": hash_array(hashes),
    }
    table = pa.table({**columns, **{name: kept[name] for name in kept.column_names}})
    return table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint.encode()})


def hash_array(hashes: np.ndarray) -> pa.Array:
    """HASH_DTYPE digests as fixed_size_binary, from their bytes (no Python object per row)."""
    raw = np.ascontiguousarray(hashes, dtype=HASH_DTYPE)
    buffer = pa.py_buffer(raw.tobytes())
    return pa.Array.from_buffers(pa.binary(HASH_BYTES), len(raw), [None, buffer])


def hashes_of(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A text_hash column as HASH_DTYPE digests; null entries read as all zeros."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros(0, dtype=HASH_DTYPE)
    array = array.fill_null(b"\0" * HASH_BYTES) if array.null_count else array
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=HASH_DTYPE, count=len(array), offset=array.offset * HASH_BYTES)


def rejects_table(
    file_key: str,
    rows: list[int],
    ids: list[str | None],
    reasons: list[str],
    fingerprint: str,
    chunks: list[int | None] | None = None,
) -> pa.Table:
    """`chunks`, under chunking: the chunk rejected, null where the whole text was."""
    chunk = {} if chunks is None else {"chunk": pa.array(chunks, pa.int32())}
    table = pa.table(
        {
            "file": pa.array([file_key] * len(rows), pa.string()),
            "row": pa.array(rows, pa.int64()),
            **chunk,
            "id": pa.array(ids, pa.string()),
            "reason": pa.array(reasons, pa.string()),
        }
    )
    return table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint.encode()})


def partitions(table: pa.Table, partition_by: list[str]) -> list[tuple[str, pa.Table]]:
    """(relative directory, rows) per hive partition, in a stable order; [("", table)] if none."""
    if not partition_by or table.num_rows == 0:
        return [("", table)]
    keys = [tuple(table[c][i].as_py() for c in partition_by) for i in range(table.num_rows)]
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    rest = [c for c in table.column_names if c not in partition_by]
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        subdir = "/".join(f"{c}={_hive_value(v)}" for c, v in zip(partition_by, key, strict=True))
        out.append((subdir, table.take(groups[key]).select(rest)))
    return out


def _hive_value(value: object) -> str:
    return HIVE_NULL if value is None else urllib.parse.quote(str(value), safe="")


def parquet_bytes(table: pa.Table, sizing: FileSizing | None = None) -> bytes:
    """The table as one Parquet file (zstd unless `sizing` says otherwise), in memory: written
    whole (a rename locally, one PUT to an object store), so readers never see part of it."""
    sizing = sizing or FileSizing()
    out = io.BytesIO()
    pq.write_table(table, out, compression=sizing.compression, row_group_size=sizing.row_group_rows)
    return out.getvalue()


def write_parquet_atomic(table: pa.Table, path: Path) -> str:
    """Writes table to a local path via a temporary file and rename; returns the file's sha256.
    A failed write (disk full, read-only) removes its temporary file before the error goes up."""
    tree = Tree(str(path.parent), before_publish=check_write)
    return tree.write_bytes(path.name, parquet_bytes(table))
