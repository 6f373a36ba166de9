"""Finish: what happens after the graph. Pooling is inside the graph (only rows x dim floats
leave the device), so what is left is the optional L2 normalization, kept out of the graph so
that `normalize: false` returns the model's raw pooled vector."""

from __future__ import annotations

import numpy as np

# torch.nn.functional.normalize's eps: a zero vector stays zero instead of becoming NaN.
EPS = 1e-12


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, EPS)).astype(np.float32, copy=False)
