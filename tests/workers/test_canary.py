"""The canary: an export's probe texts, embedded again wherever the model loads."""

import json
import shutil

import numpy as np
import pytest

from workers import Embedder
from workers.canary import CanaryError, check_canary
from workers.model_dir import CARD_FILE, read_card
from workers.session import OnnxSession


def test_the_export_stores_probe_texts_with_unit_reference_vectors(minilm_dir):
    canary = read_card(minilm_dir).canary
    vectors = np.asarray(canary["vectors"])
    assert len(canary["texts"]) == len(vectors) >= 3 and vectors.shape[1] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_healthy_device_passes_the_canary(minilm_dir):
    embedder = Embedder.load(minilm_dir)
    assert check_canary(embedder, str(minilm_dir)) >= 0.9999


def test_a_device_that_gives_wrong_vectors_refuses_to_load(minilm_dir, monkeypatch):
    honest = OnnxSession.run

    def faulty(self, input_ids, attention_mask):  # an fp16 overflow or a bad driver, say
        out = honest(self, input_ids, attention_mask)
        return out + np.random.default_rng(0).normal(0, 0.05, out.shape).astype(np.float32)

    monkeypatch.setattr(OnnxSession, "run", faulty)
    with pytest.raises(CanaryError, match=r"on cpu with the fp32 export: min cosine 0\.\d+"):
        Embedder.load(minilm_dir)


def test_an_export_without_a_canary_loads_as_before(minilm_dir, tmp_path):
    model = shutil.copytree(minilm_dir, tmp_path / "old-export")
    card = json.loads((model / CARD_FILE).read_text())
    del card["canary"], card["attention"]
    (model / CARD_FILE).write_text(json.dumps(card))
    embedder = Embedder.load(model)
    assert embedder.card.attention == "attention" and check_canary(embedder, "x") is None
