"""A task's texts as chunk rows (embedding.chunking with pool: none).

Each text that can be embedded becomes one row per window (workers/chunker.py), and from then
on a chunk is what a row is elsewhere: it is hashed, copied from the cache or an earlier task,
or embedded, and written or rejected, on its own. So a run is exactly once per (id, chunk), and
a document whose tail changed re-embeds only the chunks whose text changed. A text that cannot
be chunked at all (null, empty, no tokens) stays one reject, as without chunking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipelines.output.digest_files import digest_file
from workers import EmbedOptions
from workers.chunking import Chunking
from workers.text_hash import text_hashes

if TYPE_CHECKING:  # the tokenizer: actors only
    from workers import Embedder
    from workers.chunker import ChunkRows


def provenance(chunks: ChunkRows, rows: np.ndarray) -> dict[str, pa.Array]:
    """The provenance columns of these chunk rows, as part files hold them after `id`."""
    return {
        "chunk": pa.array(chunks.numbers[rows], pa.int32()),
        "n_chunks": pa.array(chunks.counts[rows], pa.int32()),
        "char_start": pa.array(chunks.char_starts[rows], pa.int64()),
        "char_end": pa.array(chunks.char_stops[rows], pa.int64()),
    }


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
    chunks, _ = chunker.rows([texts[i] for i in keep.tolist()])
    digest = text_hashes(prompt, chunks.texts)
    rows = keep[chunks.owners].astype(np.uint32)
    return digest_file(digest.hashes.tobytes(), rows, len(texts))
