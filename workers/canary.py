"""The numerical canary: the card's probe texts, embedded on this device at load.

The export stores a few texts with the reference implementation's vectors for them (the card's
`canary`). Every embedder that loads the model on a device embeds them again and refuses to start
when the cosine falls under its dtype's floor: a broken driver, an fp16 overflow or a provider
other than the one asked for shows up before a single row is written, naming device, dtype and
the cosine. Cards written before the canary existed have none, and load as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workers.errors import DeviceError
from workers.options import EmbedOptions

if TYPE_CHECKING:
    from workers.embedder import Embedder

# fp32 must match its reference to rounding; fp16 keeps about 3 significant digits; int8 trades
# accuracy for speed (the export's own parity floors).
# bf16 (workers.runtime openvino-bf16 on an fp32 export) keeps about as many digits as fp16.
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.999, "int8": 0.95}


class CanaryError(DeviceError):
    """The device gives vectors that are not the model's: nothing may be embedded with it."""


def check_canary(embedder: Embedder, where: str) -> float | None:
    """The lowest cosine of the probe vectors to the card's, or None without a canary; raises
    CanaryError under the floor. `where` names the model directory in the message."""
    card = embedder.card
    texts, expected = card.canary.get("texts"), card.canary.get("vectors")
    if not texts or not expected:
        return None
    got = embedder.embed(texts, EmbedOptions(normalize=True)).vectors
    want = np.asarray(expected, dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    lowest = float(np.min(np.sum(got * want, axis=1)))  # NaN too fails the test below
    dtype = embedder.compute_dtype
    floor = MIN_COSINE[dtype]
    computed = "" if dtype == card.dtype else f" computed in {dtype}"
    if not lowest >= floor:
        raise CanaryError(
            f"{where}: the canary failed on {embedder.session.describe()} with the {card.dtype} "
            f"export{computed}: min cosine {lowest:.6f} to the reference vectors in its card, "
            f"under {floor}. This device gives wrong vectors (an fp16 overflow, a "
            "faulty driver or the wrong provider); nothing was embedded. Try workers.device=cpu "
            "or an fp32 export to narrow it down"
        )
    return lowest
