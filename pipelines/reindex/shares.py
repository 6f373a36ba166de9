"""Vectors a task hands to the later tasks that repeat its texts (use_cache), without either
side reading more than it needs.

The text meets (plan.py) know, for every text first embedded by one task (its owner) and repeated
in later ones (its waiters), the owner's row and each waiter. They leave those triples in Ray's
object store, one SHARE table per bucket sorted by owner. When the owner runs, it takes its own
triples (`shares_of`) and, before its part files, writes a share file under `_state/shares/`:
the hash, vector, token count and truncation of each row a waiter wants, grouped by waiter. A
waiter then makes three small ranged reads per owner (`read_shared`: the header, the index, its
slice) instead of reading every owner's part files whole, so the reads a task makes grow with
the texts it copies, not with the number of tasks before it.

Waiters are named in the file by a 64-bit digest of their task id (`waiter_key`), not by their
position in run order, which a resumed run changes. A waiter matches what it reads by text
hash, so a slice that is stale or missing costs an embedding, never a wrong vector. Share files
are state: deleted when the run succeeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.output.digest_files import rows_of
from workers import Embeddings
from workers.text_hash import HASH_DTYPE, TextDigest

SHARES = "_state/shares"
MAGIC = b"EPSHR02\n"  # 02: rows as the output's layout stores them (raw bytes)
PREFIX = np.dtype([("magic", "S8"), ("waiters", "<u4"), ("row_bytes", "<u4")])
# One owner row a waiter wants: positions in run order, the row within the owner's task.
SHARE = np.dtype([("owner", "<u4"), ("row", "<u4"), ("waiter", "<u4")])


def record_dtype(row_bytes: int) -> np.dtype:
    """One shared row; its vector as the bytes of the output's layout (output/layout.py)."""
    return np.dtype(
        [
            ("hash", HASH_DTYPE),
            ("n_tokens", "<i4"),
            ("truncated", "u1"),
            ("vector", "u1", row_bytes),
        ]
    )


def share_path(task_id: str) -> str:
    return f"{SHARES}/{task_id}.shr"


def waiter_key(task_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(task_id.encode(), digest_size=8).digest(), "little")


def shares_table(owners: np.ndarray, rows: np.ndarray, waiters: np.ndarray) -> np.ndarray:
    """The distinct triples as a SHARE table sorted by owner and row."""
    table = np.empty(len(owners), SHARE)
    table["owner"], table["row"], table["waiter"] = owners, rows, waiters
    return np.unique(table)  # sorts by owner, then row, then waiter


def shares_of(position: int, tables: tuple[np.ndarray, ...]) -> np.ndarray:
    """One owner's triples from every bucket's table."""
    return rows_of(position, tables, "owner", SHARE)


@dataclass(frozen=True)
class Shared:
    """What an owner hands on: for each of its shared rows (already embedded), the waiters."""

    keys: np.ndarray  # (n,) uint64 waiter keys
    hashes: np.ndarray  # (n,) HASH_DTYPE
    rows: Embeddings  # (n,) the rows' vectors, token counts and truncation


def share_file(shared: Shared) -> bytes:
    """The file: PREFIX, the sorted distinct waiter keys, their record offsets, the records."""
    vectors = np.ascontiguousarray(shared.rows.vectors)
    row_bytes = vectors.shape[1] * vectors.dtype.itemsize
    order = np.argsort(shared.keys, kind="stable")
    keys = shared.keys[order]
    distinct, starts = np.unique(keys, return_index=True)
    records = np.empty(len(order), record_dtype(row_bytes))
    records["hash"] = shared.hashes[order]
    records["n_tokens"] = shared.rows.n_tokens[order]
    records["truncated"] = shared.rows.truncated[order]
    records["vector"] = vectors.view(np.uint8).reshape(len(vectors), row_bytes)[order]
    prefix = np.zeros((), PREFIX)
    prefix["magic"], prefix["waiters"], prefix["row_bytes"] = MAGIC, len(distinct), row_bytes
    at = np.append(starts, len(order)).astype("<u8")
    return prefix.tobytes() + distinct.astype("<u8").tobytes() + at.tobytes() + records.tobytes()


def read_shared(read: Callable[[int, int], bytes], key: int) -> np.ndarray | None:
    """The records one owner's file holds for the waiter `key`, through `read(offset, length)`
    (three ranged reads); None when the file is not a share file."""
    prefix = np.frombuffer(read(0, PREFIX.itemsize), PREFIX)[0]
    if prefix["magic"] != MAGIC:
        return None
    waiters, record = int(prefix["waiters"]), record_dtype(int(prefix["row_bytes"]))
    index = read(PREFIX.itemsize, 16 * waiters + 8)
    keys = np.frombuffer(index[: 8 * waiters], "<u8")
    at = np.frombuffer(index[8 * waiters :], "<u8")
    found = int(np.searchsorted(keys, np.uint64(key)))
    if found == waiters or keys[found] != np.uint64(key):
        return np.zeros(0, record)
    start = PREFIX.itemsize + len(index) + int(at[found]) * record.itemsize
    data = read(start, int(at[found + 1] - at[found]) * record.itemsize)
    return np.frombuffer(data, record)


def shared_rows(
    position: int,
    waiters: np.ndarray,
    tables: Sequence[np.ndarray],
    live: np.ndarray,
    digest: TextDigest,
    rows: Embeddings,
) -> Shared:
    """What the task at `position` hands on, from the rows it resolved: `live` are their rows
    in the task (ascending; under chunking a text's chunks share its row, and a waiter wanting
    one is handed them all), `digest` and `rows` theirs in that order; `waiters` the waiter keys
    by position. A row it could not embed is left out (its waiters embed it, and get its
    reason)."""
    mine = shares_of(position, tuple(tables))
    first = np.searchsorted(live, mine["row"], side="left")
    stop = np.searchsorted(live, mine["row"], side="right")
    sizes = stop - first
    pick = np.repeat(first - np.r_[0, np.cumsum(sizes)[:-1]], sizes) + np.arange(sizes.sum())
    wanted = np.repeat(mine["waiter"], sizes)
    ok = rows.ok[pick] if len(pick) else np.zeros(0, bool)
    pick = pick[ok]
    return Shared(waiters[wanted[ok]], digest.hashes[pick], rows.take(pick))
