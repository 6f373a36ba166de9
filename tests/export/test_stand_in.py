"""The MiniLM stand-in (export/stand_in.py) has the real all-MiniLM-L6-v2's shape, so a benchmark
that runs it where the package is missing (bench-peers on the GPU machine) does MiniLM's work."""

from __future__ import annotations

import json

from export.stand_in import MINILM, build_stand_in


def test_the_minilm_stand_in_has_the_packaged_models_shape_and_length(
    tmp_path, minilm_path, st_model
):
    from sentence_transformers import SentenceTransformer

    real = json.loads((minilm_path / "config.json").read_text())
    assert {key: real[key] for key in MINILM} == MINILM

    built = build_stand_in(tmp_path / "minilm", "minilm")
    config = json.loads((built / "config.json").read_text())
    assert {key: config[key] for key in MINILM} == MINILM
    stand_in = SentenceTransformer(str(built), device="cpu")
    assert stand_in.max_seq_length == st_model.max_seq_length == 256
    assert stand_in.get_sentence_embedding_dimension() == 384
