"""Digest files under `_state/`: one per task and kind (ids, texts), read a bucket at a time.

A file holds a 128-bit digest per row (BLAKE2b: workers/text_hash.py) with its row, grouped by
the digest's first byte (FINE groups), and the rows that have none (a null id, a missing text).
Its header says where each group starts, so the actor that meets one bucket of the digest space
(a range of groups) reads only that slice of every task's file: one ranged read per task, also
on an object store. The driver keeps the header's offsets (`DigestSummary`), a few numbers per
task, never a row's digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.storage.tree import Tree

FINE = 256  # groups in a digest file: by the digest's first byte
MAGIC = b"EPDIG01\n"
RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("row", "<u4")])  # 20 bytes, packed
HEADER = np.dtype([("magic", "S8"), ("rows", "<u8"), ("absent", "<u8"), ("at", "<u8", FINE + 1)])
ROWS_PER_BUCKET = 4_000_000  # a meet holds ~60 bytes a row: ~250 MB


@dataclass(frozen=True)
class DigestSummary:
    """What the driver keeps of a task's digest file: 1 KB, whatever its rows."""

    rows: int
    at: np.ndarray  # (FINE + 1,) uint32 record offsets of the groups


def digest_file(digests: bytes, rows: np.ndarray, total: int) -> bytes:
    """The file of a task of `total` rows: `digests` (16 bytes each) of `rows`, in row order."""
    words = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    records = np.empty(len(rows), RECORD)
    records["hi"], records["lo"], records["row"] = words[:, 0], words[:, 1], rows
    group = (records["hi"] >> np.uint64(56)).astype(np.int64)
    grouped = np.argsort(group, kind="stable")
    records = records[grouped]
    absent = np.setdiff1d(np.arange(total, dtype=np.uint32), rows.astype(np.uint32))
    header = np.zeros((), HEADER)
    header["magic"], header["rows"], header["absent"] = MAGIC, total, len(absent)
    header["at"] = np.searchsorted(group[grouped], np.arange(FINE + 1))
    return header.tobytes() + records.tobytes() + absent.astype(np.uint32).tobytes()


def summary_of(data: bytes) -> DigestSummary:
    header = _header(data)
    return DigestSummary(int(header["rows"]), header["at"].astype(np.uint32))


def absent_rows(data: bytes) -> np.ndarray:
    """The rows of the file's task that have no digest."""
    header = _header(data)
    start = HEADER.itemsize + int(header["at"][-1]) * RECORD.itemsize
    return np.frombuffer(data[start : start + 4 * int(header["absent"])], np.uint32)


def _header(data: bytes) -> np.ndarray:
    header = np.frombuffer(data[: HEADER.itemsize], HEADER)[0]
    if header["magic"] != MAGIC:
        raise ValueError("not an embedpipe digest file")
    return header


def buckets_for(rows: int, actors: int) -> int:
    """How many meets: a power of two, enough for ROWS_PER_BUCKET and for every actor."""
    need = max(-(-rows // ROWS_PER_BUCKET), actors, 1)
    return min(1 << (need - 1).bit_length(), FINE)


def groups_of(bucket: int, buckets: int) -> tuple[int, int]:
    width = FINE // buckets
    return bucket * width, (bucket + 1) * width


@dataclass(frozen=True)
class Part:
    """One task's slice of a bucket: its position in run order and its digest file."""

    position: int
    path: str  # below the output
    first: int  # record offsets
    stop: int


def bucket_parts(
    bucket: int, buckets: int, summaries: list[tuple[str, DigestSummary]]
) -> tuple[Part, ...]:
    """Every task's slice of one bucket; summaries in run order, each with its file's path."""
    first, stop = groups_of(bucket, buckets)
    return tuple(
        Part(pos, path, int(s.at[first]), int(s.at[stop]))
        for pos, (path, s) in enumerate(summaries)
        if s.at[stop] > s.at[first]
    )


def read_bucket(out: Tree, parts: tuple[Part, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The records of one bucket from every task's file, and each record's task position."""
    chunks, positions = [], []
    for part in parts:
        offset = HEADER.itemsize + part.first * RECORD.itemsize
        data = out.read_range(part.path, offset, (part.stop - part.first) * RECORD.itemsize)
        chunks.append(np.frombuffer(data, RECORD))
        positions.append(np.full(part.stop - part.first, part.position, np.uint32))
    if not chunks:
        return np.zeros(0, RECORD), np.zeros(0, np.uint32)
    return np.concatenate(chunks), np.concatenate(positions)


def first_occurrences(records: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every record whose digest came earlier (by position, then row): its index, and the
    index of that digest's first record. A lexsort puts equal digests side by side."""
    if len(records) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ranked = np.lexsort((records["row"], positions, records["lo"], records["hi"]))
    hi, lo = records["hi"][ranked], records["lo"][ranked]
    repeat = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    # the first record of each run of equal digests: the last position where a run began
    run_start = np.maximum.accumulate(np.where(np.r_[True, ~repeat], np.arange(len(ranked)), 0))
    return ranked[1:][repeat], ranked[run_start[1:][repeat]]


def as_hashes(records: np.ndarray) -> np.ndarray:
    """The records' digests as 16-byte strings (workers/text_hash.py's HASH_DTYPE)."""
    words = np.empty((len(records), 2), dtype=">u8")
    words[:, 0], words[:, 1] = records["hi"], records["lo"]
    return words.view("S16").reshape(-1)


def row_keys(positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of the run as one number each: task position << 32 | row."""
    return (positions.astype(np.uint64) << np.uint64(32)) | rows.astype(np.uint64)


def rows_of(
    position: int, tables: Sequence[np.ndarray], column: str, dtype: np.dtype
) -> np.ndarray:
    """The rows for the task at `position` (in run order) of every bucket's table, each sorted
    by that position's `column`."""
    found = [t[slice(*np.searchsorted(t[column], [position, position + 1]))] for t in tables]
    return np.concatenate([*found, np.zeros(0, dtype)])
