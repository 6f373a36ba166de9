"""Which rows of the run need the model, and where the others get their vectors (use_cache).

Before embedding, each actor hashes its task's texts (workers/text_hash.py; cached under
`_state/texts/` like the id digests, so the driver never reads a text). The driver then decides,
for every row with a usable id:

- its text is in a cache_from part file: the task copies the vector from that file;
- else its text first appears in an earlier task of the run (done tasks first, then plan order):
  the task waits for that one and copies from its part files;
- else the task embeds it, once however often the text repeats inside the task.

So each distinct text of the run is embedded once, by the first task that has it. A task that
waits only ever waits on earlier tasks, so there is no cycle; and when the task it waits on
fails for good, it embeds those texts itself (as it does for any text it cannot find).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.inputs.planning import Task
from pipelines.reindex.cache_from import CacheIndex
from workers.text_hash import HASH_DTYPE, TextDigest


@dataclass(frozen=True)
class Reuse:
    """What one task copies instead of embedding, as the driver planned it."""

    cache_files: tuple[str, ...] = ()  # cache_from part files holding some of its texts
    owners: tuple[str, ...] = ()  # earlier tasks of this run holding some of its texts


def plan_reuse(
    order: list[Task],
    texts: dict[str, TextDigest],
    usable: dict[str, np.ndarray],
    index: CacheIndex,
) -> dict[str, Reuse]:
    """Per task of `order` with digests: the cache files and earlier tasks it copies from.

    `usable` masks the rows whose id lets them be written (not null, not a repeat): only those
    can hold a vector for a later row. Memory: about 40 bytes a row, in numpy.
    """
    tasks = [t for t in order if t.task_id in texts]
    if not tasks:
        return {}
    sizes = [len(texts[t.task_id].hashes) for t in tasks]
    keys = np.concatenate([texts[t.task_id].hashes for t in tasks]).astype(HASH_DTYPE)
    ok = np.concatenate([~texts[t.task_id].missing & usable[t.task_id] for t in tasks])
    task_of = np.repeat(np.arange(len(tasks)), sizes)
    cached = np.full(len(keys), -1, dtype=np.int32)
    cached[ok] = index.lookup(keys[ok])
    hit = cached >= 0
    fresh = np.flatnonzero(ok & ~hit)
    # the first row of each distinct text is its owner (np.unique's index is the first one)
    _, first, inverse = np.unique(keys[fresh], return_index=True, return_inverse=True)
    owner_task = task_of[fresh[first[inverse.reshape(-1)]]]
    row_task = task_of[fresh]
    waits = _pairs(row_task[owner_task != row_task], owner_task[owner_task != row_task])
    copies = _pairs(task_of[hit], cached[hit])
    return {
        task.task_id: Reuse(
            cache_files=tuple(index.files[f] for f in copies.get(i, [])),
            owners=tuple(tasks[o].task_id for o in waits.get(i, [])),
        )
        for i, task in enumerate(tasks)
    }


def _pairs(left: np.ndarray, right: np.ndarray) -> dict[int, list[int]]:
    """The distinct right values of each left value."""
    if len(left) == 0:
        return {}
    found: dict[int, list[int]] = {}
    for a, b in np.unique(np.stack([left, right], axis=1), axis=0).tolist():
        found.setdefault(a, []).append(b)
    return found
