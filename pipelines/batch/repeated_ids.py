"""Repeated ids across the whole run, found where their digests meet: on the actors, one slice
of the digest space each, so the driver never holds a digest.

1. Map (prepass.py, on the actor that reads a task): each id's 128-bit BLAKE2b digest goes into
   the task's digest file under `_state/ids/`, grouped by the digest's first byte (FINE groups),
   with the rows whose id is null. The driver keeps where each group starts (`IdSummary`).
2. Meet (`meet`, one actor call per bucket: a range of groups): reads its slice of every task's
   file, puts each id's occurrences side by side, and keeps the first in run order (done tasks
   first, then plan order; rows in order). Every other occurrence is a repeat, recorded with the
   file and row of the first one. The table stays in Ray's object store.
3. Task (`repeats_of`, on the actor that runs it): its own rows of every table.

So the same rule as one sort over the whole run, bucket by bucket: an id's occurrences all fall
in one bucket. At 128 bits, two different ids collide with a probability near 1e-20 for a
billion rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers.text_hash import digest128

FINE = 256  # groups in a digest file: by the digest's first byte
MAGIC = b"EPIDS01\n"
RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("row", "<u4")])  # 20 bytes, packed
HEADER = np.dtype([("magic", "S8"), ("rows", "<u8"), ("nulls", "<u8"), ("at", "<u8", FINE + 1)])
# One repeated row: the task (its position in run order) and row, and where the id came first.
REPEAT = np.dtype([("task", "<u4"), ("row", "<u4"), ("file", "<u4"), ("file_row", "<u8")])
ROWS_PER_BUCKET = 4_000_000  # a meet holds ~60 bytes a row: ~250 MB


@dataclass(frozen=True)
class IdSummary:
    """What the driver keeps of a task's digest file."""

    rows: int
    at: np.ndarray  # (FINE + 1,) record offsets of the groups
    null_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))


def digest_file(ids: list[str | None]) -> bytes:
    """The digest file of a task's ids, in row order."""
    rows = np.array([i for i, v in enumerate(ids) if v is not None], dtype=np.uint32)
    raw = b"".join(digest128(v) for v in ids if v is not None)
    words = np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    records = np.empty(len(rows), RECORD)
    records["hi"], records["lo"], records["row"] = words[:, 0], words[:, 1], rows
    group = (records["hi"] >> np.uint64(56)).astype(np.int64)
    grouped = np.argsort(group, kind="stable")
    records = records[grouped]
    header = np.zeros((), HEADER)
    header["magic"], header["rows"], header["nulls"] = MAGIC, len(ids), len(ids) - len(rows)
    header["at"] = np.searchsorted(group[grouped], np.arange(FINE + 1))
    nulls = np.array([i for i, v in enumerate(ids) if v is None], dtype=np.uint32)
    return header.tobytes() + records.tobytes() + nulls.tobytes()


def summary_of(data: bytes) -> IdSummary:
    header = np.frombuffer(data[: HEADER.itemsize], HEADER)[0]
    if header["magic"] != MAGIC:
        raise ValueError("not an embedpipe id digest file")
    records = int(header["at"][-1])
    start = HEADER.itemsize + records * RECORD.itemsize
    nulls = np.frombuffer(data[start : start + 4 * int(header["nulls"])], np.uint32)
    return IdSummary(int(header["rows"]), header["at"].astype(np.int64), nulls.copy())


def buckets_for(rows: int, actors: int) -> int:
    """How many meets: a power of two, enough for ROWS_PER_BUCKET and for every actor."""
    need = max(-(-rows // ROWS_PER_BUCKET), actors, 1)
    return min(1 << (need - 1).bit_length(), FINE)


@dataclass(frozen=True)
class Part:
    """One task's slice of a bucket: its position in run order and its digest file."""

    position: int
    path: str  # below the output
    first: int  # record offsets
    stop: int


@dataclass(frozen=True)
class MeetRequest:
    out: str
    parts: tuple[Part, ...]
    origins: np.ndarray  # (tasks, 2): per position, its file's number and its first row
    storage: StorageSettings = field(default_factory=StorageSettings)


def bucket_parts(
    bucket: int, buckets: int, summaries: list[tuple[str, IdSummary]]
) -> tuple[Part, ...]:
    """Every task's slice of one bucket; summaries in run order, each with its file's path."""
    width = FINE // buckets
    first, stop = bucket * width, (bucket + 1) * width
    return tuple(
        Part(pos, path, int(s.at[first]), int(s.at[stop]))
        for pos, (path, s) in enumerate(summaries)
        if s.at[stop] > s.at[first]
    )


def meet(_embedder: object, ask: MeetRequest) -> tuple[int, np.ndarray]:
    """Runs on an actor (which passes its embedder first; it is not needed): the repeats among
    one bucket's digests, and how many."""
    out = Tree(ask.out, ask.storage)
    chunks, positions = [], []
    for part in ask.parts:
        offset = HEADER.itemsize + part.first * RECORD.itemsize
        data = out.read_range(part.path, offset, (part.stop - part.first) * RECORD.itemsize)
        chunks.append(np.frombuffer(data, RECORD))
        positions.append(np.full(part.stop - part.first, part.position, np.uint32))
    if not chunks:
        return 0, np.zeros(0, REPEAT)
    found = repeats_among(np.concatenate(chunks), np.concatenate(positions), ask.origins)
    return len(found), found


def repeats_among(records: np.ndarray, positions: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Every occurrence of an id after its first (by position, then row), as REPEAT rows
    sorted by task and row. A lexsort puts each id's occurrences side by side, earliest first."""
    if len(records) == 0:
        return np.zeros(0, REPEAT)
    ranked = np.lexsort((records["row"], positions, records["lo"], records["hi"]))
    hi, lo = records["hi"][ranked], records["lo"][ranked]
    repeat = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    # the first occurrence of each run of equal digests: the last position where a run began
    run_start = np.maximum.accumulate(np.where(np.r_[True, ~repeat], np.arange(len(ranked)), 0))
    later, first = ranked[1:][repeat], ranked[run_start[1:][repeat]]
    found = np.empty(len(later), REPEAT)
    found["task"], found["row"] = positions[later], records["row"][later]
    origin = origins[positions[first]]
    found["file"] = origin[:, 0]
    found["file_row"] = origin[:, 1] + records["row"][first]
    return found[np.lexsort((found["row"], found["task"]))]


def repeats_of(position: int, tables: tuple[np.ndarray, ...], keys: list[str]) -> dict[int, str]:
    """One task's repeated rows (row offset -> "repeats row N of FILE") from every bucket's
    table."""
    found: dict[int, str] = {}
    for table in tables:
        first, stop = np.searchsorted(table["task"], [position, position + 1])
        for item in table[first:stop].tolist():
            found[int(item[1])] = f"repeats row {item[3]} of {keys[item[2]]}"
    return found
