"""Chunking with the model's tokenizer: a text's windows (chunking.py) under the options, and
an embedder whose every text is embedded as its chunks and pooled (`pool: mean`).

A chunk is embedded as any text is (the prompt before it, the special tokens around it); it is
cut to fit, so it is embedded with right truncation whatever the options say: a chunk that
does not tokenize to its window (cut inside a word, the last resort) loses its last tokens
rather than becoming a reject, and its row says `truncated`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from workers.chunking import Chunking, Windows, pooled_normalized, windows
from workers.embeddings import Embeddings
from workers.options import EmbedOptions, OptionError
from workers.prepare import TextPreparer, reject_reason

if TYPE_CHECKING:
    from workers.embedder import Embedder

NO_TOKENS = "text has no tokens for this model's tokenizer"


def chunk_options(options: EmbedOptions) -> EmbedOptions:
    """The options a chunk is embedded with: the text's, with right truncation."""
    return dataclasses.replace(options, truncate=True, truncation_direction="right")


@dataclass(frozen=True)
class ChunkRows:
    """Texts' chunks in text order: the text each came from (its index in the texts given),
    its number, its text's count of chunks, its characters in that text, and its text."""

    owners: np.ndarray  # (m,) int64
    numbers: np.ndarray  # (m,) int32
    counts: np.ndarray  # (m,) int32
    char_starts: np.ndarray  # (m,) int64
    char_stops: np.ndarray  # (m,) int64
    texts: list[str]


class Chunker:
    """A text's windows under `chunking` for texts embedded with `options`."""

    def __init__(
        self, preparer: TextPreparer, max_seq_length: int, chunking: Chunking, options: EmbedOptions
    ) -> None:
        if chunking.tokens > max_seq_length:
            raise OptionError(
                f"embedding.chunking.tokens is {chunking.tokens}, over the model's "
                f"max_seq_length {max_seq_length}; set it to at most {max_seq_length}"
            )
        frame = preparer.specials + preparer.prompt_tokens(options)
        self.budget = chunking.tokens - frame
        if self.budget <= chunking.overlap:
            raise OptionError(
                f"embedding.chunking.tokens {chunking.tokens} leaves {self.budget} token(s) for "
                f"text beside {frame} special and prompt tokens, not more than overlap "
                f"{chunking.overlap}; raise tokens or lower overlap"
            )
        self.chunking = chunking
        self._preparer = preparer

    def windows(self, text: object) -> Windows | str:
        """The text's chunks, or why it cannot be embedded at all."""
        if reason := reject_reason(text):
            return reason
        spans = self._preparer.token_spans(str(text))
        if len(spans) == 0:
            return NO_TOKENS
        return windows(str(text), spans, self.budget, self.chunking.overlap)

    def rows(self, texts: Sequence[object]) -> tuple[ChunkRows, list[str | None]]:
        """The chunks of `texts`, and per text why it has none (None where it has)."""
        owners, numbers, counts, starts, stops, pieces = [], [], [], [], [], []
        errors: list[str | None] = []
        for i, text in enumerate(texts):
            found = self.windows(text)
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


class PooledEmbedder:
    """`embed(texts, options)` as Embedder's, each text embedded as its chunks and given their
    token-weighted mean (normalized under `normalize`); n_tokens counts all its chunks' tokens.
    A text one of whose chunks cannot be embedded is a reject naming that chunk."""

    def __init__(self, embedder: Embedder, chunking: Chunking) -> None:
        self.embedder = embedder
        self.chunking = chunking
        self.card = embedder.card

    @property
    def max_batch_tokens(self) -> int:
        return self.embedder.max_batch_tokens

    def embed(self, texts: Sequence[object], options: EmbedOptions | None = None) -> Embeddings:
        options = options or EmbedOptions()
        chunker = Chunker(self.embedder.preparer, self.card.max_seq_length, self.chunking, options)
        rows, errors = chunker.rows(texts)
        chunks = self.embedder.embed(rows.texts, chunk_options(options))
        return _pooled(rows, errors, chunks, options.normalize)


def _pooled(
    rows: ChunkRows, errors: list[str | None], chunks: Embeddings, normalize: bool
) -> Embeddings:
    n, owners = len(errors), rows.owners
    for k in np.flatnonzero(~chunks.ok).tolist():
        owner = int(owners[k])
        if errors[owner] is None:
            errors[owner] = f"chunk {rows.numbers[k]}: {chunks.errors[k]}"
    ok = chunks.ok & np.array([errors[o] is None for o in owners.tolist()], bool)
    weights = chunks.n_tokens[ok].astype(np.float64)
    vectors = pooled_normalized(chunks.vectors[ok], weights, owners[ok], n, normalize)
    failed = np.array([e is not None for e in errors], bool)
    vectors[failed] = np.nan
    n_tokens = np.bincount(owners, weights=chunks.n_tokens, minlength=n).astype(np.int32)
    truncated = np.bincount(owners, weights=chunks.truncated, minlength=n) > 0
    return Embeddings(
        vectors,
        n_tokens,
        truncated,
        tuple(errors),
        chunks.device_s,
        chunks.oom_splits,
        chunks.tokenize_s,
    )
