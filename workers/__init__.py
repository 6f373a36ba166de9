"""The embedder: tokenize, batch, run ONNX, pool, normalize. No Ray here except actor.py.

Embedder is loaded on first use: it pulls in onnxruntime and tokenizers, which the driver (it
only needs the options) should not carry.
"""

from typing import TYPE_CHECKING, Any

from workers.embeddings import Embeddings
from workers.options import EmbedOptions, OptionError

if TYPE_CHECKING:
    from workers.embedder import Embedder

__all__ = ["EmbedOptions", "Embedder", "Embeddings", "OptionError"]


def __getattr__(name: str) -> Any:
    if name == "Embedder":
        from workers import embedder

        return getattr(embedder, name)
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
