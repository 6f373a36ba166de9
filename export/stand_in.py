"""A random-weight stand-in with gte-large's exact shape, for tests and GPU benchmarks offline.

thenlper/gte-large is BERT-large (24 layers, hidden 1024, 16 heads, intermediate 4096, 512
positions, vocab 30522) with mean pooling and max_seq_length 512 (its config.json and
sentence_bert_config.json on the hub). Compute does not depend on the weights, so this checks the
production shape end to end without a network. The tokenizer is borrowed from a local model with
the same 30522-token uncased BERT vocabulary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

GTE_LARGE = {
    "num_hidden_layers": 24,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}
GTE_LARGE_MAX_SEQ_LENGTH = 512


def build_gte_large_stand_in(out: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """Writes a sentence-transformers directory (random BERT-large + mean pooling) to out."""
    return build_bert_stand_in(out, tokenizer_dir, GTE_LARGE, GTE_LARGE_MAX_SEQ_LENGTH, seed)


def build_bert_stand_in(
    out: str | Path,
    tokenizer_dir: str | Path,
    shape: dict[str, int],
    max_seq_length: int,
    seed: int = 0,
) -> Path:
    """A random-weight BERT of the given shape with mean pooling, as a sentence-transformers dir."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out)
    torch.manual_seed(seed)
    bert_dir = out / "_bert"
    BertModel(BertConfig(**shape)).save_pretrained(bert_dir)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=max_seq_length)
    pooling = models.Pooling(shape["hidden_size"], pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    shutil.rmtree(bert_dir)  # save() copied the weights and tokenizer to out
    return out
