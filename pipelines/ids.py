"""Repeated ids across the whole run, found without the driver reading any text.

Before embedding, each actor reads its task's id column (under use_cache with its text column, in
the same read, for reuse.py) and returns a 128-bit blake2b digest per id (16 bytes a row: 16 MB
for a million rows in the driver), cached under `_state/ids/` so a rerun does not read the ids
again. The driver then marks every occurrence after
the first (in plan order: files sorted, rows in order) as a repeat. At 128 bits two different ids
collide with a probability near 1e-20 for a billion rows.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.planning import Task
from pipelines.readers import read_rows
from pipelines.reuse import TextDigest, task_texts
from pipelines.state import cached_arrays, digest_path


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


def task_digest(task: Task, out: str, read_ids: Callable[[], list[object]]) -> IdDigest:
    """Runs on an actor: the task's id digests, from the cache when an earlier run made them."""

    def compute() -> dict[str, np.ndarray]:
        found = digest_ids([None if v is None else str(v) for v in read_ids()])
        return {"digests": found.digests, "null": found.null}

    saved = cached_arrays(digest_path(out, "ids", task.task_id, task.file.size), compute)
    return IdDigest(task.task_id, saved["digests"], saved["null"])


def find_repeats(tasks: list[Task], digests: dict[str, IdDigest]) -> dict[str, dict[int, str]]:
    """Per task: row offset -> reason, for every id seen earlier in the order of `tasks`.

    A lexsort by (digest, position) puts each id's occurrences side by side, earliest first;
    memory stays near 40 bytes a row (a million rows: ~40 MB), where np.unique(axis=0) took 130.
    """
    order = [t for t in tasks if t.task_id in digests]
    if not order:
        return {}
    parts = [digests[t.task_id] for t in order]
    starts = np.cumsum([0] + [len(p.null) for p in parts])
    high = np.concatenate([p.digests[:, 0] for p in parts])
    low = np.concatenate([p.digests[:, 1] for p in parts])
    ranked = np.lexsort((np.arange(len(high)), low, high))
    ranked = ranked[~np.concatenate([p.null for p in parts])[ranked]]
    high, low = high[ranked], low[ranked]
    repeat = (high[1:] == high[:-1]) & (low[1:] == low[:-1])
    del high, low
    # the first occurrence of each run of equal digests: the last position where a run began
    run_start = np.maximum.accumulate(np.where(np.r_[True, ~repeat], np.arange(len(ranked)), 0))
    later = ranked[1:][repeat]
    first = ranked[run_start[1:][repeat]]
    repeats: dict[str, dict[int, str]] = {}
    for row, first_row in zip(later.tolist(), first.tolist(), strict=True):
        at = int(np.searchsorted(starts, row, side="right")) - 1
        origin = int(np.searchsorted(starts, first_row, side="right")) - 1
        where = (
            f"row {order[origin].start + first_row - starts[origin]} of {order[origin].file.key}"
        )
        repeats.setdefault(order[at].task_id, {})[row - int(starts[at])] = f"repeats {where}"
    return repeats


def digest_on_actor(
    _embedder: object, args: tuple[Task, str, str, tuple[str, str] | None]
) -> tuple[IdDigest, TextDigest | None]:
    """The id pass as an actor call (the actor passes its embedder first; it is not needed):
    the id digests and, given (text column, prompt), the text digests (use_cache)."""
    task, id_column, out, text = args
    columns = [id_column, text[0]] if text else [id_column]

    @functools.cache  # one read for both passes, and none when both are cached
    def rows() -> pl.DataFrame:
        return read_rows(task.file, task.start, task.stop, columns)

    ids = task_digest(task, out, lambda: rows()[id_column].to_list())
    if text is None:
        return ids, None
    column, prompt = text
    return ids, task_texts(task, prompt, out, lambda: rows()[column].to_list())
