"""Batching: length-sorted batches under a padded-token budget, as plain numpy.

A batch costs `longest_in_batch * rows` tokens of compute and memory once padded, so texts are
sorted by length and cut greedily where that product would pass `max_batch_tokens`. Longest texts
come first: a budget too large for the device fails on the first batch, not after an hour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(lengths: np.ndarray, max_batch_tokens: int) -> list[np.ndarray]:
    """Groups row indices into batches; a single text longer than the budget gets its own batch."""
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, max_batch_tokens // longest)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def pad_batch(ids: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token id arrays into (input_ids, attention_mask), both int64."""
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return input_ids, mask
