"""What an output's `embedding` column holds: output.dimensions values of the model's vector, at
output.precision.

dimensions (Matryoshka): the first d values, normalized again when embedding.normalize is on, as
TEI and sentence-transformers' `truncate_dim` do. precision follows sentence-transformers'
`quantize_embeddings`: float16 a cast; binary packs the bits of x > 0 eight to a byte, offset by
128 into int8; ubinary the same bytes as uint8 (so d must be a multiple of 8). The column type
says which: FixedSizeList<float32 | float16, d>, or FixedSizeList<int8 | uint8, d / 8>.

Inside a task every row, embedded or copied, is in this form: the model's float32 vectors are
encoded once, and rows copied from earlier part files or other tasks' share files are taken as
they are stored (a copy never goes through a lossy round trip, so it is the bytes the first
task wrote). A run's layout is part of its fingerprint (only when not the default float32 at
the model's width, so outputs made before these keys existed keep theirs), and run.cache_from
reuses only outputs of the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from workers.finish import l2_normalize

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}
PRECISIONS = tuple(DTYPES)
PACKED = ("binary", "ubinary")


class LayoutError(ValueError):
    """output.dimensions or output.precision that this model cannot have; names the key."""


@dataclass(frozen=True)
class Layout:
    dim: int  # the model's
    dimensions: int  # values kept, <= dim
    precision: str = "float32"
    normalize: bool = True  # normalize again after keeping the first values

    @classmethod
    def of(cls, dim: int, dimensions: int | None, precision: str, normalize: bool) -> Layout:
        kept = dim if dimensions is None else dimensions
        if not 0 < kept <= dim:
            raise LayoutError(
                f"output.dimensions is {dimensions}; this model's vectors have {dim} values: "
                f"choose 1 to {dim}, or null for all of them"
            )
        if precision not in DTYPES:
            raise LayoutError(f"output.precision {precision!r}: choose one of {PRECISIONS}")
        if precision in PACKED and kept % 8:
            raise LayoutError(
                f"output.precision {precision} packs 8 values a byte, but output.dimensions "
                f"(or the model's dim) is {kept}: choose a multiple of 8"
            )
        return cls(dim, kept, precision, normalize)

    @property
    def width(self) -> int:
        """Values per row in the column: d, or d / 8 bytes when packed."""
        return self.dimensions // 8 if self.precision in PACKED else self.dimensions

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.precision]

    @property
    def is_default(self) -> bool:
        return self.dimensions == self.dim and self.precision == "float32"

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """The model's (n, dim) float32 vectors as this layout's (n, width) rows."""
        kept = vectors[:, : self.dimensions]
        if self.dimensions < self.dim and self.normalize:
            kept = l2_normalize(kept)
        if self.precision in PACKED:
            # a NaN row (a reject, never written) packs as zeros: x > 0 is false for NaN
            packed = np.packbits(kept > 0, axis=1)
            return (
                (packed.astype(np.int16) - 128).astype(np.int8)
                if self.precision == "binary"
                else packed
            )
        return np.ascontiguousarray(kept, dtype=self.dtype)

    def empty(self) -> np.ndarray:
        return np.zeros((0, self.width), self.dtype)

    def arrow_type(self) -> pa.DataType:
        return pa.list_(pa.from_numpy_dtype(self.dtype), self.width)

    def fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint's `vectors` entry; None for the default (no entry: see above)."""
        if self.is_default:
            return None
        return {"dimensions": self.dimensions, "precision": self.precision}

    def describe(self) -> str:
        return f"fixed_size_list<{pa.from_numpy_dtype(self.dtype)}>[{self.width}]"
