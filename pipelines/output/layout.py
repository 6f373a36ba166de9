"""What an output's `embedding` column holds: output.dimensions values of the model's vector, at
output.precision.

dimensions (Matryoshka): the first d values, normalized again when embedding.normalize is on, as
TEI and sentence-transformers' `truncate_dim` do. precision follows sentence-transformers'
`quantize_embeddings`: float16 a cast; binary packs the bits of x > 0 eight to a byte, offset by
128 into int8; ubinary the same bytes as uint8 (so d must be a multiple of 8); uint8 cuts each
dimension's calibration range [min, max] into 255 steps, q = floor((x - min) / step) clipped to
0..255, and int8 is q - 128 (a constant dimension has step 1). The ranges are the same for the
whole run, never a batch's: calibration.py. The column type says which: FixedSizeList<float32 |
float16 | int8 | uint8, d>, or FixedSizeList<int8 | uint8, d / 8> when packed. A reader
dequantizes q to min + (q + 0.5) * step (q + 128 for int8): `dequantize`.

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
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}
PRECISIONS = tuple(DTYPES)
PACKED = ("binary", "ubinary")
QUANTIZED = ("int8", "uint8")  # need per-dimension ranges
Ranges = tuple[tuple[float, ...], tuple[float, ...]]  # (min, max) per kept dimension


class LayoutError(ValueError):
    """output.dimensions or output.precision that this model cannot have; names the key."""


@dataclass(frozen=True)
class Layout:
    dim: int  # the model's
    dimensions: int  # values kept, <= dim
    precision: str = "float32"
    normalize: bool = True  # normalize again after keeping the first values
    ranges: Ranges | None = None  # int8, uint8: each kept dimension's calibration (min, max)

    @classmethod
    def of(
        cls,
        dim: int,
        dimensions: int | None,
        precision: str,
        normalize: bool,
        ranges: Ranges | None = None,
    ) -> Layout:
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
        if ranges is not None and not (len(ranges[0]) == len(ranges[1]) == kept):
            raise LayoutError(
                f"output.calibration has ranges for {len(ranges[0])} dimensions; "
                f"output.dimensions keeps {kept}: calibrate with the same dimensions"
            )
        return cls(dim, kept, precision, normalize, ranges)

    @property
    def needs_ranges(self) -> bool:
        return self.precision in QUANTIZED and self.ranges is None

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

    def cut(self, vectors: np.ndarray) -> np.ndarray:
        """The kept values of the model's (n, dim) vectors, normalized again when cut."""
        kept = vectors[:, : self.dimensions]
        if self.dimensions < self.dim and self.normalize:
            kept = l2_normalize(kept)
        return kept

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """The model's (n, dim) float32 vectors as this layout's (n, width) rows."""
        kept = self.cut(vectors)
        if self.precision in QUANTIZED:
            return self._quantize(kept)
        if self.precision in PACKED:
            # a NaN row (a reject, never written) packs as zeros: x > 0 is false for NaN
            packed = np.packbits(kept > 0, axis=1)
            return (
                (packed.astype(np.int16) - 128).astype(np.int8)
                if self.precision == "binary"
                else packed
            )
        return np.ascontiguousarray(kept, dtype=self.dtype)

    def _quantize(self, kept: np.ndarray) -> np.ndarray:
        starts, steps = self._steps()
        # a NaN row (a reject, never written) quantizes as zeros rather than warning
        q = np.clip(np.floor((np.nan_to_num(kept) - starts) / steps), 0, 255)
        return q.astype(np.uint8) if self.precision == "uint8" else (q - 128).astype(np.int8)

    def _steps(self) -> tuple[np.ndarray, np.ndarray]:
        """Each dimension's min and step (1 for a constant dimension), in float32."""
        if self.ranges is None:
            raise LayoutError(f"output.precision {self.precision} needs calibration ranges")
        starts = np.array(self.ranges[0], np.float32)
        steps = (np.array(self.ranges[1], np.float32) - starts) / np.float32(255)
        return starts, np.where(steps == 0, np.float32(1), steps)

    def dequantize(self, rows: np.ndarray) -> np.ndarray:
        """int8/uint8 rows back to float32, each at the middle of its step (for tests and
        readers; a copy never goes this way)."""
        starts, steps = self._steps()
        q = rows.astype(np.float32) + (128 if self.precision == "int8" else 0)
        return starts + (q + 0.5) * steps

    def empty(self) -> np.ndarray:
        return np.zeros((0, self.width), self.dtype)

    def arrow_type(self) -> pa.DataType:
        return pa.list_(pa.from_numpy_dtype(self.dtype), self.width)

    def fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint's `vectors` entry; None for the default (no entry: see above)."""
        if self.is_default:
            return None
        found: dict[str, Any] = {"dimensions": self.dimensions, "precision": self.precision}
        if self.ranges is not None:
            found["ranges"] = {"min": list(self.ranges[0]), "max": list(self.ranges[1])}
        return found

    def describe(self) -> str:
        return f"fixed_size_list<{pa.from_numpy_dtype(self.dtype)}>[{self.width}]"


def as_ranges(low: Any, high: Any) -> Ranges:
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def stored_ranges(fingerprint: dict[str, Any] | None) -> Ranges | None:
    """The ranges an output's fingerprint records, or None."""
    ranges = ((fingerprint or {}).get("vectors") or {}).get("ranges")
    if not isinstance(ranges, dict) or "min" not in ranges or "max" not in ranges:
        return None
    return as_ranges(ranges["min"], ranges["max"])
