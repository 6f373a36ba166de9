"""The embedder: tokenize, batch, run ONNX, pool, normalize. No Ray here except actor.py."""

from workers.embedder import Embedder, Embeddings
from workers.options import EmbedOptions, OptionError

__all__ = ["EmbedOptions", "Embedder", "Embeddings", "OptionError"]
