"""Batching: length-sorted batches under a padded-token budget, as plain numpy.

A batch costs `width * rows` tokens of compute and memory once padded, so texts are sorted by
length and cut where that product would pass `max_batch_tokens`. On a GPU (`plan_batches`) the
cuts are greedy, also where the next text is much shorter than the batch is wide
(`MIN_LENGTH_SHARE`); the first batch is the widest and the fullest, so a budget too large for
the device fails on it, not after an hour. On a CPU (`plan_least_cost`), where a batch's fixed
cost is small and every padded token costs as much as a real one, the cuts are the ones that
minimise the padded compute of the whole call (a dynamic programme over the sorted lengths).

Batches are shaped so that a text's vector does not depend on its batch mates, which is what
lets a vector copied from an earlier run equal, byte for byte, the one a recompute gives (on the
CPU provider; see `PAD_MULTIPLE` and `MIN_ROWS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

# onnxruntime's CPU kernels sum a text's last few positions in a different order when the batch
# ends exactly at its last token than when at least a few padded positions follow; padding every
# batch to a multiple of 4 tokens made each text's vector the same at every width we tried (300
# stdlib texts, widths up to 512; tests/workers/test_batching.py keeps checking it).
PAD_MULTIPLE = 4
# A batch of one row takes another reduction path (ReduceSum over a (1, S, H) tensor is summed
# as (S, H)), so a lone row is run beside a copy of itself: two rows or more all agree.
MIN_ROWS = 2
# A text joins a batch only if it is at least this share of the batch's longest text. Cutting on the
# budget alone is fine for a large task, whose sorted lengths lie close together, but a re-index
# embeds a tenth of each task, and its batches were 47% padding. Padding undercounts the waste:
# attention costs the square of the width, so a short text in a wide batch pays far more than its
# padded tokens. At 0.9 a full task's batches are 6% padding (8% at 0.7) and a re-index's 12% (16%
# at 0.7), for 1.37x the batches; the stdlib corpus embedded 9% faster than at 0.7 on the CPU (8
# tasks, MiniLM fp32, budget 2048: 95.1 and 96.4 s at 0.7, 89.3 and 84.0 s at 0.9).
MIN_LENGTH_SHARE = 0.9


# The CPU cost model of plan_least_cost, in tokens at width 0. A padded token in a batch W wide
# costs 1 + W / ATTENTION_WIDTH (attention grows with the width; the matrix products do not): one
# onnxruntime thread took 262, 277, 282 and 315 us a token at widths 16, 64, 128 and 256 for
# MiniLM fp32 (2,048-token batches), 159 to 194 us for int8, both about 1/1000 more per unit of
# width. A batch also costs a fixed BATCH_OVERHEAD_TOKENS (a 2 x 4 batch took 4.0 ms, some 8
# tokens' worth beyond its own, for fp32; int8 about 2); 16 ran as fast as 4 and 8 and faster
# than 64 or 256 (fewer cuts, more padding) over two stdlib tasks.
ATTENTION_WIDTH = 1000
BATCH_OVERHEAD_TOKENS = 16


def padded_width(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    return int(padded_widths(np.array([longest]), multiple)[0])


def padded_widths(lengths: np.ndarray, multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """Each length rounded up to a multiple of `multiple`, at least one multiple."""
    return np.maximum(multiple, -(-np.maximum(lengths, 1) // multiple) * multiple)


def plan_batches(lengths: np.ndarray, max_batch_tokens: int) -> list[np.ndarray]:
    """Groups row indices into batches; a single text longer than the budget gets its own batch."""
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    falling = -np.asarray(lengths)[order]  # ascending: searchable
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(-falling[start])
        rows = max(1, max_batch_tokens // padded_width(longest))
        too_short = int(np.searchsorted(falling, -MIN_LENGTH_SHARE * longest, side="right"))
        stop = max(start + 1, min(start + rows, too_short))
        batches.append(order[start:stop])
        start = stop
    return batches


def pad_batch(
    ids: Sequence[np.ndarray],
    pad_id: int,
    multiple: int = PAD_MULTIPLE,
    min_rows: int = MIN_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token id arrays into (input_ids, attention_mask), both int64, `multiple` wide;
    a batch under `min_rows` gets copies of its first row after its own (drop their outputs)."""
    width = padded_width(max(len(row) for row in ids), multiple)
    rows = [*ids, *[ids[0]] * (min_rows - len(ids))]
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return input_ids, mask


def plan_least_cost(
    lengths: np.ndarray, max_batch_tokens: int, min_rows: int = MIN_ROWS
) -> list[np.ndarray]:
    """Groups row indices into the batches of least padded compute under the CPU cost model
    above: each batch a run of the length-sorted texts (longest first), under the budget but for
    a single text longer than it, a batch under `min_rows` paying for its copies. Over the stdlib
    corpus in 8 tasks, chunked as the embedder does, this pads 3.4% where plan_batches pads 7.3%
    (rounding each text up to PAD_MULTIPLE alone is 2.9%). Cost: for each text, numpy over the
    at most max_batch_tokens / PAD_MULTIPLE batches that can end with it (0.06 s for 4,096
    texts at a budget of 2,048, 0.1 s at 65,536)."""
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    widths = padded_widths(lengths[order])
    row_cost = widths * (1.0 + widths / ATTENTION_WIDTH)  # a row at its batch's first width
    best = np.zeros(len(order) + 1)  # least cost of the first k sorted texts
    start = np.zeros(len(order) + 1, dtype=np.int64)  # where the last of those batches starts
    for stop in range(1, len(order) + 1):
        # a batch [first, stop) is as wide as widths[first] >= widths[stop - 1]
        first = max(0, stop - max(1, max_batch_tokens // int(widths[stop - 1])))
        rows = stop - np.arange(first, stop)
        fits = (rows * widths[first:stop] <= max_batch_tokens) | (rows == 1)
        cost = best[first:stop] + np.maximum(rows, min_rows) * row_cost[first:stop]
        cost = np.where(fits, cost + BATCH_OVERHEAD_TOKENS, np.inf)
        pick = int(np.argmin(cost))
        best[stop], start[stop] = cost[pick], first + pick
    cuts = [len(order)]
    while cuts[-1] > 0:
        cuts.append(int(start[cuts[-1]]))
    return [order[a:b] for a, b in pairwise(reversed(cuts))]
