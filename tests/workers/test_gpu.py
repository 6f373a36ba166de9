"""On a GPU machine: the CUDA provider really runs, every attention layout keeps the reference's
vectors, and a wrong vector on the device stops the load.

Marked `gpu`: skipped (and said so) where there is no CUDA device. They use the tiny random-weight
stand-in built on the spot, so the GPU machine needs only torch and transformers, no model package.
"""

from __future__ import annotations

import json

import pytest

from export.parity import cosines, reference_embed
from workers import Embedder, EmbedOptions
from workers.canary import CanaryError
from workers.model_dir import CARD_FILE

pytestmark = pytest.mark.gpu


def test_a_cuda_session_runs_on_the_cuda_provider(tiny_dirs):
    embedder = Embedder.load(tiny_dirs["fp32-attention"], device="cuda")
    assert embedder.session.device == "cuda"
    assert embedder.session.providers()[0] == "CUDAExecutionProvider"
    assert embedder.embed(["a text on the GPU"]).ok.all()


@pytest.mark.parametrize("layout", ["attention", "mha", "packed", "packed-mha"])
def test_fp16_on_cuda_matches_sentence_transformers_in_every_layout(
    layout, tiny_dirs, tiny_st_model, parity_texts
):
    embedder = Embedder.load(tiny_dirs[f"fp16-{layout}"], device="cuda", max_batch_tokens=16384)
    ours = embedder.embed(parity_texts).vectors
    sims = cosines(ours, reference_embed(tiny_st_model, parity_texts, EmbedOptions()))
    assert sims.min() >= 0.999, f"{layout}: min cosine {sims.min():.6f}, mean {sims.mean():.6f}"


def test_fp32_on_cuda_matches_sentence_transformers(tiny_dirs, tiny_st_model, parity_texts):
    embedder = Embedder.load(tiny_dirs["fp32-attention"], device="cuda", max_batch_tokens=16384)
    sims = cosines(
        embedder.embed(parity_texts).vectors,
        reference_embed(tiny_st_model, parity_texts, EmbedOptions()),
    )
    assert sims.min() >= 0.9999, f"min cosine {sims.min():.6f}"


def test_a_canary_that_does_not_match_stops_the_load_on_cuda(tiny_dirs, tmp_path):
    import shutil

    model = shutil.copytree(tiny_dirs["fp16-attention"], tmp_path / "model")
    card = json.loads((model / CARD_FILE).read_text())
    card["canary"]["vectors"] = [[-x for x in v] for v in card["canary"]["vectors"]]
    (model / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CanaryError, match=r"cuda:0 with the fp16 export: min cosine -"):
        Embedder.load(model, device="cuda")
