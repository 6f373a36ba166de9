"""Inside a task: copy the vectors other part files already hold, embed each other text once.

The driver names the files (reuse.py); here they are looked up by text hash. A row whose text
is in none of them (its file was removed since, or the task that held it failed) is embedded:
a missing copy costs time, never a row. Copied rows keep the `n_tokens` and `truncated` the
file recorded, which the same text and options give again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from pipelines.writers import hashes_of
from workers import EmbedOptions
from workers.text_hash import HASH_DTYPE

if TYPE_CHECKING:  # only actors run this, and only they load the embedder
    from workers import Embedder

log = logging.getLogger(__name__)

COPIED = ["text_hash", "embedding", "n_tokens", "truncated"]


@dataclass(frozen=True)
class Known:
    """Vectors found for some digests: sorted unique hashes and their rows."""

    hashes: np.ndarray
    vectors: np.ndarray
    n_tokens: np.ndarray
    truncated: np.ndarray

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """Per wanted digest, its row here or -1."""
        if len(self.hashes) == 0:
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.hashes, wanted), len(self.hashes) - 1)
        return np.where(self.hashes[at] == wanted, at, -1)


@dataclass(frozen=True)
class Resolved:
    """A task's rows, each embedded, copied or rejected, like `Embeddings` plus the counts."""

    vectors: np.ndarray
    n_tokens: np.ndarray
    truncated: np.ndarray
    errors: tuple[str | None, ...]
    device_s: float
    embedded: int  # texts the model computed
    tokens: int  # the tokens of those texts
    from_cache: int  # rows copied from cache_from
    deduplicated: int  # rows whose text another row of this run had embedded


def read_known(files: Sequence[str], wanted: np.ndarray) -> Known:
    """The vectors of the wanted digests that the files hold."""
    parts = []
    for name in files:
        try:
            found = _read_matching(name, wanted)
        except (OSError, ValueError) as err:  # gone or damaged since the driver planned
            log.warning("not copying from %s (%s): its rows are embedded instead", name, err)
            continue
        if found is not None:
            parts.append(found)
    if not parts:
        return Known(np.zeros(0, HASH_DTYPE), np.zeros((0, 0), np.float32), *_empty())
    hashes = np.concatenate([p[0] for p in parts])
    _, first = np.unique(hashes, return_index=True)
    return Known(
        hashes[first],
        np.concatenate([p[1] for p in parts])[first],
        np.concatenate([p[2] for p in parts])[first],
        np.concatenate([p[3] for p in parts])[first],
    )


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int32), np.zeros(0, bool)


def _read_matching(name: str, wanted: np.ndarray) -> tuple[np.ndarray, ...] | None:
    hashes = hashes_of(pq.read_table(name, columns=["text_hash"]).column("text_hash"))
    rows = np.flatnonzero(np.isin(hashes, wanted))
    if len(rows) == 0:
        return None
    table = pq.read_table(name, columns=COPIED).take(rows)
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return (
        hashes[rows],
        vectors.astype(np.float32, copy=False),
        table.column("n_tokens").to_numpy().astype(np.int32),
        table.column("truncated").to_numpy(zero_copy_only=False).astype(bool),
    )


def embed_all(embedder: Embedder, texts: list[object], options: EmbedOptions) -> Resolved:
    """Every row through the model (use_cache off, like the API's x-use-cache: false)."""
    result = embedder.embed(texts, options)
    embedded = sum(e is None for e in result.errors)
    return Resolved(
        result.vectors,
        result.n_tokens,
        result.truncated,
        result.errors,
        result.device_s,
        embedded=embedded,
        tokens=int(result.n_tokens[result.ok].sum()),
        from_cache=0,
        deduplicated=0,
    )


def embed_or_copy(
    embedder: Embedder,
    texts: list[object],
    hashes: np.ndarray,
    options: EmbedOptions,
    cache: Known,
    run: Known,
) -> Resolved:
    """Rows from the cache, then from this run's other part files, the rest embedded once per
    distinct text (a text that cannot be hashed is embedded on its own, to get its reason)."""
    n = len(texts)
    hashable = np.array([isinstance(t, str) and bool(t) for t in texts], dtype=bool)
    from_cache = np.where(hashable, cache.find(hashes), -1)
    from_run = np.where(hashable & (from_cache < 0), run.find(hashes), -1)
    rest = np.flatnonzero((from_cache < 0) & (from_run < 0))
    # one row per distinct text among the rest; unhashable rows each stand alone
    keys = np.where(hashable[rest], hashes[rest], np.zeros(1, HASH_DTYPE))
    distinct = hashable[rest]
    _, first, inverse = np.unique(keys[distinct], return_index=True, return_inverse=True)
    target = np.arange(len(rest))
    target[distinct] = np.flatnonzero(distinct)[first[inverse.reshape(-1)]]
    heads = np.unique(target)
    result = embedder.embed([texts[rest[h]] for h in heads], options)
    slot = np.searchsorted(heads, target)

    dim = embedder.card.dim
    vectors = np.full((n, dim), np.nan, dtype=np.float32)
    n_tokens = np.zeros(n, np.int32)
    truncated = np.zeros(n, bool)
    errors: list[str | None] = [None] * n
    for known, rows in ((cache, from_cache), (run, from_run)):
        take = np.flatnonzero(rows >= 0)
        if len(take) == 0:  # (an empty Known has no width to copy from)
            continue
        vectors[take] = known.vectors[rows[take]]
        n_tokens[take] = known.n_tokens[rows[take]]
        truncated[take] = known.truncated[rows[take]]
    vectors[rest] = result.vectors[slot]
    n_tokens[rest] = result.n_tokens[slot]
    truncated[rest] = result.truncated[slot]
    for i, s in zip(rest.tolist(), slot.tolist(), strict=True):
        errors[i] = result.errors[s]
    embedded = sum(e is None for e in result.errors)
    written_rest = sum(errors[i] is None for i in rest.tolist())
    return Resolved(
        vectors,
        n_tokens,
        truncated,
        tuple(errors),
        result.device_s,
        embedded=embedded,
        tokens=int(result.n_tokens[result.ok].sum()),
        from_cache=int((from_cache >= 0).sum()),
        deduplicated=int((from_run >= 0).sum()) + written_rest - embedded,
    )
