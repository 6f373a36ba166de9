"""On a GPU machine: the CUDA provider really runs, and fp16 keeps the reference's vectors.

Marked `gpu`: skipped (and said so) where there is no CUDA device.
"""

from __future__ import annotations

import pytest

from export.parity import cosines, reference_embed
from workers import Embedder, EmbedOptions

pytestmark = pytest.mark.gpu


def test_a_cuda_session_runs_on_the_cuda_provider(minilm_dir):
    embedder = Embedder.load(minilm_dir, device="cuda")
    assert embedder.session.device == "cuda"
    assert embedder.embed(["a text on the GPU"]).ok.all()


def test_fp16_on_cuda_matches_sentence_transformers(minilm_fp16_dir, st_model, parity_texts):
    embedder = Embedder.load(minilm_fp16_dir, device="cuda", max_batch_tokens=16384)
    ours = embedder.embed(parity_texts).vectors
    sims = cosines(ours, reference_embed(st_model, parity_texts, EmbedOptions()))
    assert sims.min() >= 0.999, f"min cosine {sims.min():.6f}, mean {sims.mean():.6f}"


def test_fp32_on_cuda_matches_sentence_transformers(minilm_dir, st_model, parity_texts):
    embedder = Embedder.load(minilm_dir, device="cuda", max_batch_tokens=16384)
    sims = cosines(
        embedder.embed(parity_texts).vectors,
        reference_embed(st_model, parity_texts, EmbedOptions()),
    )
    assert sims.min() >= 0.9999, f"min cosine {sims.min():.6f}"
