"""Repeated ids across the whole run, found without the driver reading any text.

The prepass (prepass.py) gives the driver a 128-bit BLAKE2b digest per id, 16 bytes a row (16 MB
for a million rows); this marks every occurrence after the first (in plan order: files sorted,
rows in order) as a repeat. At 128 bits two different ids collide with a probability near 1e-20
for a billion rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.inputs.planning import Task
from workers.text_hash import digest128


@dataclass(frozen=True)
class IdDigest:
    digests: np.ndarray  # (rows, 2) uint64; zeros where the id is null
    null: np.ndarray  # (rows,) bool


def digest_ids(values: list[str | None]) -> IdDigest:
    digests = np.zeros((len(values), 2), dtype=np.uint64)
    null = np.array([v is None for v in values], dtype=bool)
    for row, value in enumerate(values):
        if value is not None:
            digests[row] = np.frombuffer(digest128(value), dtype=np.uint64)
    return IdDigest(digests, null)


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
