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
fails for good, it embeds those texts itself (as it does for any text it cannot find).

The links (task, cache file) and (task, earlier task) can number tasks squared, so they stay in
Ray's object store as LINK tables sorted by task, and each task finds its own there when it runs
(`RunLinks`). The driver keeps one number a task: the latest earlier task it waits for, and
starts it once every task up to that one is settled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.output.digest_files import (
    Part,
    as_hashes,
    digest_file,
    first_occurrences,
    read_bucket,
    row_keys,
    rows_of,
)
from pipelines.reindex.shares import shares_table
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers.text_hash import locate, text_hashes

# A task (by position in run order) and a source of some of its vectors: a cache file's number,
# or the position of an earlier task; tables of them are sorted by task, then source.
LINK = np.dtype([("task", "<u4"), ("source", "<u4")])


@dataclass(frozen=True)
class Sources:
    """Where one task copies vectors from instead of embedding them."""

    cache_files: tuple[str, ...] = ()  # cache_from part files holding some of its texts
    run_files: tuple[str, ...] = ()  # part files of earlier tasks done before this run
    share_owners: tuple[str, ...] = ()  # earlier tasks of this run, by their share files


@dataclass(frozen=True)
class RunLinks:
    """What every task of a use_cache run reads (from Ray's object store) to learn its sources
    and what it hands on; `flat` and `of` turn it into a call's arguments and back."""

    keys: np.ndarray  # waiter keys by position (shares.py)
    names: np.ndarray  # task ids by position, UTF-8
    done: dict[int, tuple[str, ...]]  # by position: part files of the tasks done before this run
    cache_files: tuple[str, ...]  # by number
    shares: tuple[np.ndarray, ...]  # one SHARE table per bucket
    copies: tuple[np.ndarray, ...]  # one LINK table per bucket, to cache files
    waits: tuple[np.ndarray, ...]  # one LINK table per bucket, to earlier tasks

    @staticmethod
    def flat(
        keys: Any,
        names: Any,
        done: Any,
        cache_files: Any,
        shares: Sequence[Any],
        copies: Sequence[Any],
        waits: Sequence[Any],
    ) -> tuple[Any, ...]:
        """The fields (or the ObjectRefs of them) in the order `of` reads them."""
        return (keys, names, done, cache_files, *shares, *copies, *waits)

    @classmethod
    def of(cls, fetched: tuple[Any, ...]) -> RunLinks:
        keys, names, done, cache_files, *tables = fetched
        b = len(tables) // 3
        shares, copies, waits = tables[:b], tables[b : 2 * b], tables[2 * b :]
        return cls(keys, names, done, cache_files, tuple(shares), tuple(copies), tuple(waits))

    def sources(self, position: int) -> Sources:
        owners = linked(position, self.waits)
        name = [self.names[o].decode() for o in owners if o not in self.done]
        return Sources(
            tuple(self.cache_files[f] for f in linked(position, self.copies)),
            tuple(f for o in owners for f in self.done.get(o, ())),
            tuple(name),
        )


def linked(position: int, tables: tuple[np.ndarray, ...]) -> list[int]:
    """The sources of the task at `position` in every bucket's LINK table, in order."""
    return np.unique(rows_of(position, tables, "task", LINK)["source"]).tolist()


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
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs on an actor: for one bucket of the text hashes, its number of links; per waiting
    task its latest owner (a LINK table); the LINK tables of (task, cache file number) for the
    rows a cache file holds and of (task, earlier task) for the rows whose text an earlier task
    embeds; and the SHARE table (shares.py) of which owner row each waiter copies. The rows in
    `repeat_tables` (batch/repeated_ids.py) are left out."""
    records, positions = read_bucket(Tree(ask.out, ask.storage), ask.parts)
    repeated = [row_keys(t["task"], t["row"]) for t in repeat_tables]
    keep = ~np.isin(
        row_keys(positions, records["row"]), np.concatenate([*repeated, np.zeros(0, np.uint64)])
    )
    records, positions = records[keep], positions[keep]
    cached = cache_lookup(Tree(ask.out, ask.storage), ask.cache, as_hashes(records))
    hit = cached >= 0
    copies = links(positions[hit], cached[hit])
    fresh_records, fresh_positions = records[~hit], positions[~hit]
    later, first = first_occurrences(fresh_records, fresh_positions)
    owner, waiter = fresh_positions[first], fresh_positions[later]
    other = owner != waiter  # a text repeated inside one task is embedded once there
    waits = links(waiter[other], owner[other])
    shares = shares_table(owner[other], fresh_records["row"][first][other], waiter[other])
    return len(copies) + len(waits), latest(waits), copies, waits, shares


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


def links(tasks: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """The distinct (task, source) pairs as a LINK table, sorted."""
    table = np.empty(len(tasks), LINK)
    table["task"], table["source"] = tasks, sources
    return np.unique(table)


def latest(waits: np.ndarray) -> np.ndarray:
    """Of a sorted LINK table, each task's last source."""
    if len(waits) == 0:
        return waits
    return waits[np.r_[waits["task"][1:] != waits["task"][:-1], True]]


def latest_owners(tasks: int, found: Iterable[np.ndarray]) -> np.ndarray:
    """By position, the latest earlier task each task waits for in any bucket, or -1."""
    owner = np.full(tasks, -1, np.int64)
    for table in found:
        np.maximum.at(owner, table["task"].astype(np.int64), table["source"].astype(np.int64))
    return owner
