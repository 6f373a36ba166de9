"""Random-weight stand-ins with a real model's exact shape, for tests and GPU benchmarks offline.

thenlper/gte-large is BERT-large (24 layers, hidden 1024, 16 heads, intermediate 4096, 512
positions, vocab 30522) with mean pooling and max_seq_length 512 (its config.json and
sentence_bert_config.json on the hub). Compute does not depend on the weights, so this checks the
production shape end to end without a network. `tiny` keeps the vocabulary and positions and
shrinks the rest, for runs where compute is not the point. The tokenizer is the uncased BERT
vocabulary shipped beside this file (export/bert_uncased), so nothing else needs to be installed
or carried: only torch, transformers and sentence-transformers.

    python -m export.stand_in --shape gte-large --out DIR
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TypedDict

TOKENIZER_DIR = Path(__file__).parent / "bert_uncased"


class BertShape(TypedDict):
    """BertConfig keys that set a model's shape; named, so each is checked against BertConfig."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    vocab_size: int


GTE_LARGE: BertShape = {
    "num_hidden_layers": 24,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}
TINY: BertShape = {
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}
# gte-large's width (hidden, heads, intermediate, positions, vocabulary) at two of its 24
# layers: every export step sees the production tensors, in a twelfth of the time (CI's test;
# the full depth is exported by bench-gpu in `make gpu-check` and by `--shape gte-large`).
GTE_LARGE_SHALLOW: BertShape = {**GTE_LARGE, "num_hidden_layers": 2}
# sentence-transformers/all-MiniLM-L6-v2 (its config.json; max_seq_length 256 in its
# sentence_bert_config.json): the CPU benchmarks' model, for a machine without the package that
# ships its weights (bench-peers' GPU variants, on the GPU machine).
MINILM: BertShape = {
    "num_hidden_layers": 6,
    "hidden_size": 384,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}
SHAPES: dict[str, BertShape] = {
    "gte-large": GTE_LARGE,
    "gte-large-shallow": GTE_LARGE_SHALLOW,
    "minilm": MINILM,
    "tiny": TINY,
}
GTE_LARGE_MAX_SEQ_LENGTH = 512
MAX_SEQ_LENGTHS = {"minilm": 256}  # the others: gte-large's


def build_stand_in(out: str | Path, shape: str = "gte-large", seed: int = 0) -> Path:
    """A sentence-transformers directory of the named shape (random weights, mean pooling)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    max_seq_length = MAX_SEQ_LENGTHS.get(shape, GTE_LARGE_MAX_SEQ_LENGTH)
    return build_bert_stand_in(out, SHAPES[shape], max_seq_length, seed=seed)


def build_bert_stand_in(
    out: str | Path,
    shape: BertShape,
    max_seq_length: int,
    tokenizer_dir: str | Path = TOKENIZER_DIR,
    seed: int = 0,
) -> Path:
    """A random-weight BERT of the given shape with mean pooling, as a sentence-transformers dir."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    # sentence-transformers 5.4 moved the modules here. Their old home, `models`, is what the
    # older releases pyproject allows have; in 6 it is a deprecated alias its types leave out.
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # before 5.4
        from sentence_transformers.models import Pooling, Transformer  # type: ignore[no-redef]

    out = Path(out)
    torch.manual_seed(seed)
    bert_dir = out / "_bert"
    BertModel(BertConfig(**shape)).save_pretrained(bert_dir)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=max_seq_length)
    pooling = Pooling(shape["hidden_size"], pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    shutil.rmtree(bert_dir)  # save() copied the weights and tokenizer to out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gte-large")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_stand_in(args.out, args.shape, args.seed))


if __name__ == "__main__":
    main()
