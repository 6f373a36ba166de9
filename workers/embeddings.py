"""`Embeddings`: what `Embedder.embed` returns, in a module of its own so that code handling
results (the driver's side of a task, the server) needs numpy only, not onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from workers.model_dir import ModelCard
    from workers.options import EmbedOptions


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dim) float32; NaN rows for rejected texts
    n_tokens: np.ndarray  # (n,) int32; for a too-long reject, the tokens it would have needed
    truncated: np.ndarray  # (n,) bool
    errors: tuple[str | None, ...]  # why each text was rejected, None where embedded
    device_s: float = 0.0  # seconds this call held the device (the rest is the device's idle)
    oom_splits: int = 0  # batches split in two because the device ran out of memory
    tokenize_s: float = 0.0  # seconds spent tokenizing (partly beside the device's, when long)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)

    def rows(self, start: int, stop: int) -> Embeddings:
        """The texts start..stop of this result (the device time stays with the whole)."""
        return Embeddings(
            self.vectors[start:stop],
            self.n_tokens[start:stop],
            self.truncated[start:stop],
            self.errors[start:stop],
        )

    def take(self, indices: np.ndarray) -> Embeddings:
        """These texts of the result, in this order (the device time stays with the whole)."""
        return Embeddings(
            self.vectors[indices],
            self.n_tokens[indices],
            self.truncated[indices],
            tuple(self.errors[i] for i in indices.tolist()),
        )


class TextModel(Protocol):
    """What embeds a task's texts: the Embedder, or one pooling each text's chunks
    (workers/chunker.py)."""

    card: ModelCard

    def embed(self, texts: Sequence[object], options: EmbedOptions | None = None) -> Embeddings:
        """Vectors of the texts in order, with their counts and reject reasons."""
        ...
