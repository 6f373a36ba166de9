"""Which rows of the run need the model, and where the others get their vectors (use_cache).

Before embedding, each actor hashes its task's texts (workers/text_hash.py) into the task's
text digest file under `_state/texts/` (output/digest_files.py; rows with a null id or no text
have none), so the driver never reads a text. Then one actor call per bucket of the hash space
(`meet_texts`) decides, for every row whose id lets it be written (not null, not a repeat):

- its text is in a cache_from part file: the task copies the vector from that file;
- else its text first appears in an earlier task of the run (done tasks first, then plan order):
  the task waits for that one, which hands it the vector (shares.py);
- else the task embeds it, once however often the text repeats inside the task.

So each distinct text of the run is embedded once, by the first task that has it. A task that
waits only ever waits on earlier tasks, so there is no cycle; and when the task it waits on
fails for good, it embeds those texts itself (as it does for any text it cannot find). The
meets return pairs (task, cache file) and (task, earlier task); the driver keeps those, per task.
The rows behind each pair (which owner row a waiter copies) stay in the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.output.digest_files import (
    Part,
    as_hashes,
    digest_file,
    first_occurrences,
    read_bucket,
    row_keys,
)
from pipelines.reindex.shares import shares_table
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers.text_hash import locate, text_hashes


@dataclass(frozen=True)
class Reuse:
    """What one task copies instead of embedding, as the driver planned it."""

    cache_files: tuple[str, ...] = ()  # cache_from part files holding some of its texts
    owners: tuple[str, ...] = ()  # earlier tasks of this run holding some of its texts


@dataclass(frozen=True)
class TextMeetRequest:
    out: str
    parts: tuple[Part, ...]
    cache: tuple[Part, ...] = ()  # this bucket's slices of the cache files' digest files
    storage: StorageSettings = field(default_factory=StorageSettings)


def text_digest_file(prompt: str, texts: list[object], ids: list[str | None]) -> bytes:
    """A task's text digest file: the hash of each row's text, except where the text is
    missing or the id null (such rows are rejects, never a source of vectors)."""
    digest = text_hashes(prompt, texts)
    keep = ~digest.missing & np.array([v is not None for v in ids], dtype=bool)
    rows = np.flatnonzero(keep).astype(np.uint32)
    return digest_file(digest.hashes[keep].tobytes(), rows, len(keep))


def meet_texts(
    _embedder: object, ask: TextMeetRequest, *repeat_tables: np.ndarray
) -> tuple[int, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Runs on an actor: for one bucket of the text hashes, the pairs (task, cache file number)
    of the rows a cache file holds, and (task, earlier task) of the rows whose text an earlier
    task embeds; and the SHARE table (shares.py) of which owner row each waiter copies. The
    rows in `repeat_tables` (batch/repeated_ids.py) are left out."""
    records, positions = read_bucket(Tree(ask.out, ask.storage), ask.parts)
    repeated = [row_keys(t["task"], t["row"]) for t in repeat_tables]
    keep = ~np.isin(
        row_keys(positions, records["row"]), np.concatenate([*repeated, np.zeros(0, np.uint64)])
    )
    records, positions = records[keep], positions[keep]
    cached = cache_lookup(Tree(ask.out, ask.storage), ask.cache, as_hashes(records))
    hit = cached >= 0
    copies = pairs(positions[hit], cached[hit])
    fresh_records, fresh_positions = records[~hit], positions[~hit]
    later, first = first_occurrences(fresh_records, fresh_positions)
    owner, waiter = fresh_positions[first], fresh_positions[later]
    other = owner != waiter  # a text repeated inside one task is embedded once there
    waits = pairs(waiter[other], owner[other])
    shares = shares_table(owner[other], fresh_records["row"][first][other], waiter[other])
    return len(copies) + len(waits), (copies, waits), shares


def cache_lookup(out: Tree, cache: tuple[Part, ...], hashes: np.ndarray) -> np.ndarray:
    """Per digest, the number of a cache file that holds it (the first, in cache_from order),
    or -1; from one bucket's slices of the cache files' digest files."""
    records, files = read_bucket(out, cache)
    known = as_hashes(records)
    order = np.argsort(known, kind="stable")  # read in file order: ties keep it
    known, files = known[order], files[order]
    first = np.r_[True, known[1:] != known[:-1]] if len(known) else np.zeros(0, bool)
    known, files = known[first], files[first]
    at = locate(known, hashes)
    found = np.full(len(hashes), -1, dtype=np.int64)
    found[at >= 0] = files[at[at >= 0]]
    return found


def pairs(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The distinct (left, right) pairs, sorted."""
    if len(left) == 0:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.stack([left.astype(np.int64), right.astype(np.int64)], axis=1), axis=0)


def assemble(
    task_ids: list[str], found: list[tuple[np.ndarray, np.ndarray]], files: tuple[str, ...]
) -> dict[str, Reuse]:
    """Per task (by position in run order), its Reuse from every bucket's pairs."""
    copies = pairs(*np.concatenate([c for c, _ in found] or [np.zeros((0, 2))]).T)
    waits = pairs(*np.concatenate([w for _, w in found] or [np.zeros((0, 2))]).T)
    cache_files: dict[int, list[str]] = {}
    for task, file in copies.tolist():
        cache_files.setdefault(task, []).append(files[file])
    owners: dict[int, list[str]] = {}
    for task, owner in waits.tolist():
        owners.setdefault(task, []).append(task_ids[owner])
    return {
        task_id: Reuse(tuple(cache_files.get(i, ())), tuple(owners.get(i, ())))
        for i, task_id in enumerate(task_ids)
    }
