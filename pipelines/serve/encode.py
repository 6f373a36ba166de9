"""Answers as bytes: JSON straight from float32 arrays, and base64 vectors for the OpenAI route.

`tolist()` and the standard json encoder write each float32 as the 17 digits of a float64 (a 64 x
1024 answer took 51 ms and 1.35 MB, longer than a GPU takes to compute it). orjson writes numpy
arrays in C with the shortest repr that reads back as the same float32 (ryu), so a client parses
the very bits the server computed, in a few milliseconds and about half the bytes. base64 is the
vector's little-endian float32 bytes, which is what the OpenAI SDK decodes.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson

# Non-string dict keys never occur in an answer; numpy arrays and scalars do.
OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_bytes(body: object) -> bytes:
    """`body` as JSON; numpy arrays in it must be C-contiguous float32 or int (vectors() makes
    them so)."""
    return orjson.dumps(body, option=OPTIONS)


def vectors(rows: np.ndarray) -> np.ndarray:
    """Rows ready for json_bytes: float32, C-contiguous (orjson refuses strided views)."""
    return np.ascontiguousarray(rows, dtype=np.float32)


def base64_vector(row: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
