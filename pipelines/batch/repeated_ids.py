"""Repeated ids across the whole run, found where their digests meet: on the actors, one bucket
of the digest space each, so the driver never holds a digest.

1. Map (prepass.py, on the actor that reads a task): the task's id digest file under
   `_state/ids/` (output/digest_files.py); null ids have none.
2. Meet (`meet`, one actor call per bucket): reads its slice of every task's file and keeps each
   id's first occurrence in run order (done tasks first, then plan order; rows in order). Every
   other occurrence is a repeat, recorded with the file and row of the first one. The table stays
   in Ray's object store.
3. Task (`repeats_of`, on the actor that runs it): its own rows of every table.

The same rule as one sort over the whole run, since an id's occurrences all fall in one bucket.
At 128 bits, two different ids collide with a probability near 1e-20 for a billion rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.output.digest_files import (
    Part,
    digest_file,
    first_occurrences,
    read_bucket,
    rows_of,
)
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers.text_hash import digest128

# One repeated row: the task (its position in run order) and row, and where the id came first.
REPEAT = np.dtype([("task", "<u4"), ("row", "<u4"), ("file", "<u4"), ("file_row", "<u8")])


def id_digest_file(ids: list[str | None]) -> bytes:
    rows = np.array([i for i, v in enumerate(ids) if v is not None], dtype=np.uint32)
    digests = b"".join(digest128(v) for v in ids if v is not None)
    return digest_file(digests, rows, len(ids))


@dataclass(frozen=True)
class MeetRequest:
    out: str
    parts: tuple[Part, ...]
    origins: np.ndarray  # (tasks, 2): per position, its file's number and its first row
    storage: StorageSettings = field(default_factory=StorageSettings)


def meet(_embedder: object, ask: MeetRequest) -> tuple[int, np.ndarray]:
    """Runs on an actor (which passes its embedder first; it is not needed): the repeats among
    one bucket's ids, and how many."""
    records, positions = read_bucket(Tree(ask.out, ask.storage), ask.parts)
    found = repeats_among(records, positions, ask.origins)
    return len(found), found


def repeats_among(records: np.ndarray, positions: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Every occurrence of an id after its first, as REPEAT rows sorted by task and row."""
    later, first = first_occurrences(records, positions)
    found = np.empty(len(later), REPEAT)
    found["task"], found["row"] = positions[later], records["row"][later]
    origin = origins[positions[first]]
    found["file"] = origin[:, 0]
    found["file_row"] = origin[:, 1] + records["row"][first]
    return found[np.lexsort((found["row"], found["task"]))]


def repeats_of(position: int, tables: tuple[np.ndarray, ...], keys: list[str]) -> dict[int, str]:
    """One task's repeated rows (row offset -> "repeats row N of FILE") from every bucket's
    table."""
    return {
        int(item[1]): f"repeats row {item[3]} of {keys[item[2]]}"
        for item in rows_of(position, tables, "task", REPEAT).tolist()
    }
