"""A task's texts as chunk rows (embedding.chunking with pool: none).

Each text that can be embedded becomes one row per window (workers/chunking.py), and from then
on a chunk is what a row is elsewhere: it is hashed, copied from the cache or an earlier task,
or embedded, and written or rejected, on its own. So a run is exactly once per (id, chunk), and
a document whose tail changed re-embeds only the chunks whose text changed. A text that cannot
be chunked at all (null, empty, no tokens) stays one reject, as without chunking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipelines.output.digest_files import digest_file
from workers import EmbedOptions
from workers.chunking import Chunking
from workers.text_hash import text_hashes

if TYPE_CHECKING:  # the tokenizer: actors only
    from workers import Embedder
    from workers.chunker import Chunker

# The provenance columns of a chunk row, after `id`.
COLUMNS = ("chunk", "n_chunks", "char_start", "char_end")


@dataclass(frozen=True)
class ChunkRows:
    """Chunk rows in text order: the text each came from (its index in the texts given),
    its number, its text's count of chunks, and its characters in that text."""

    owners: np.ndarray  # (m,) int64
    numbers: np.ndarray  # (m,) int32
    counts: np.ndarray  # (m,) int32
    char_starts: np.ndarray  # (m,) int64
    char_stops: np.ndarray  # (m,) int64
    texts: list[str]

    def columns(self, rows: np.ndarray) -> dict[str, pa.Array]:
        """The provenance columns of these chunk rows."""
        return {
            "chunk": pa.array(self.numbers[rows], pa.int32()),
            "n_chunks": pa.array(self.counts[rows], pa.int32()),
            "char_start": pa.array(self.char_starts[rows], pa.int64()),
            "char_end": pa.array(self.char_stops[rows], pa.int64()),
        }


def chunk_rows(chunker: Chunker, texts: Sequence[object]) -> tuple[ChunkRows, list[str | None]]:
    """The chunk rows of `texts`, and per text why it has none (None where it has)."""
    owners, numbers, counts, starts, stops, pieces = [], [], [], [], [], []
    errors: list[str | None] = []
    for i, text in enumerate(texts):
        found = chunker.windows(text)
        if isinstance(found, str):
            errors.append(found)
            continue
        errors.append(None)
        k = len(found)
        owners.append(np.full(k, i, np.int64))
        numbers.append(np.arange(k, dtype=np.int32))
        counts.append(np.full(k, k, np.int32))
        starts.append(found.char_starts)
        stops.append(found.char_stops)
        pieces += found.texts(str(text))
    rows = ChunkRows(
        _joined(owners, np.int64),
        _joined(numbers, np.int32),
        _joined(counts, np.int32),
        _joined(starts, np.int64),
        _joined(stops, np.int64),
        pieces,
    )
    return rows, errors


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype, copy=False)


def chunk_digest_file(
    embedder: Embedder,
    chunking: Chunking,
    options: EmbedOptions,
    prompt: str,
    texts: list[object],
    ids: list[str | None],
) -> bytes:
    """A task's text digest file under chunking (reindex/plan.py's, by chunk): a record per
    chunk, with its text's row, so the plan meets chunks across tasks and the cache by chunk."""
    from workers.chunker import Chunker

    chunker = Chunker(embedder.preparer, embedder.card.max_seq_length, chunking, options)
    keep = np.array([i for i, v in enumerate(ids) if v is not None], np.int64)
    chunks, _ = chunk_rows(chunker, [texts[i] for i in keep.tolist()])
    digest = text_hashes(prompt, chunks.texts)
    rows = keep[chunks.owners].astype(np.uint32)
    return digest_file(digest.hashes.tobytes(), rows, len(texts))
