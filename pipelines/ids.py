"""Repeated ids across the whole run, found without the driver reading any text.

Before embedding, each actor reads only its task's id column and returns a 128-bit blake2b
digest per id (16 bytes a row: 16 MB for a million rows in the driver), cached under
`_state/ids/` so a rerun does not read the ids again. The driver then marks every occurrence after
the first (in plan order: files sorted, rows in order) as a repeat. At 128 bits two different ids
collide with a probability near 1e-20 for a billion rows.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.planning import Task
from pipelines.readers import read_rows


@dataclass(frozen=True)
class IdDigest:
    task_id: str
    digests: np.ndarray  # (rows, 2) uint64; zeros where the id is null
    null: np.ndarray  # (rows,) bool


def digest_ids(values: list[str | None]) -> IdDigest:
    digests = np.zeros((len(values), 2), dtype=np.uint64)
    null = np.array([v is None for v in values], dtype=bool)
    for row, value in enumerate(values):
        if value is not None:
            raw = hashlib.blake2b(value.encode(), digest_size=16).digest()
            digests[row] = np.frombuffer(raw, dtype=np.uint64)
    return IdDigest("", digests, null)


def task_digest(task: Task, id_column: str, out: str) -> IdDigest:
    """Runs on an actor: the task's id digests, from the cache when an earlier run made them."""
    cache = Path(out) / "_state" / "ids" / f"{task.task_id}.npz"
    if cache.is_file():
        saved = np.load(cache)
        return IdDigest(task.task_id, saved["digests"], saved["null"])
    frame = read_rows(task.file, task.start, task.stop, [id_column])
    found = digest_ids([None if v is None else str(v) for v in frame[id_column].to_list()])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, digests=found.digests, null=found.null)
    os.replace(tmp, cache)
    return IdDigest(task.task_id, found.digests, found.null)


def find_repeats(tasks: list[Task], digests: dict[str, IdDigest]) -> dict[str, dict[int, str]]:
    """Per task: row offset -> reason, for every id seen earlier in the order of `tasks`."""
    order = [t for t in tasks if t.task_id in digests]
    if not order:
        return {}
    stacked = np.concatenate([digests[t.task_id].digests for t in order])
    null = np.concatenate([digests[t.task_id].null for t in order])
    owner = np.repeat(np.arange(len(order)), [len(digests[t.task_id].null) for t in order])
    offset = np.concatenate([np.arange(len(digests[t.task_id].null)) for t in order])
    live = np.flatnonzero(~null)
    _, first, inverse = np.unique(stacked[live], axis=0, return_index=True, return_inverse=True)
    first_of = live[first[inverse.reshape(-1)]]
    repeats: dict[str, dict[int, str]] = {}
    for row, first_row in zip(live[live != first_of], first_of[live != first_of], strict=True):
        task, origin = order[owner[row]], order[owner[first_row]]
        where = f"row {origin.start + offset[first_row]} of {origin.file.key}"
        repeats.setdefault(task.task_id, {})[int(offset[row])] = f"repeats {where}"
    return repeats


def digest_on_actor(_embedder: object, args: tuple[Task, str, str]) -> IdDigest:
    """The id pass as an actor call (the actor passes its embedder first; it is not needed)."""
    return task_digest(*args)
