"""`embedpipe query OUT TEXT`: a document is found by its own text at rank 1 in every precision,
with the model and options the output records, and a model that did not make it is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.batch.task import TaskSpec, run_task
from pipelines.cli import main
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.planning import plan_tasks
from pipelines.output.layout import Layout, as_ranges
from pipelines.output.state import RunState
from workers import Embedder, EmbedOptions

PRECISIONS = ["float32", "float16", "int8", "uint8", "binary", "ubinary"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, parity_texts):
    root = tmp_path_factory.mktemp("query-corpus")
    texts = list(dict.fromkeys(t for t in parity_texts if len(t.split()) > 5))[:40]
    rows = [
        {"id": f"doc-{i}", "text": t, "lang": "en" if i % 2 else "de"} for i, t in enumerate(texts)
    ]
    (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "in.jsonl", texts


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return Embedder.load(minilm_dir, threads=2)


def output_in(tmp_path, corpus, embedder, minilm_dir, precision, dimensions=None) -> str:
    """An output of one task in this precision, as a run leaves it: fingerprint, done marker,
    config, part files partitioned by a kept column."""
    source, texts = corpus
    ranges = None
    if precision in ("int8", "uint8"):
        vectors = embedder.embed(texts).vectors
        ranges = as_ranges(vectors.min(axis=0), vectors.max(axis=0))
    layout = Layout.of(384, dimensions, precision, True, ranges)
    fingerprint = {
        "model": {"source": "minilm", "onnx_sha256": embedder.card.onnx_sha256, "dim": 384},
        "options": {
            "normalize": True,
            "truncate": True,
            "truncation_direction": "right",
            "prompt_name": None,
        },
        "columns": {"id": "id", "text": "text", "keep": ["lang"], "partition_by": ["lang"]},
        **({"vectors": layout.fingerprint()} if layout.fingerprint() else {}),
    }
    out = tmp_path / f"out-{precision}"
    task = plan_tasks(list_inputs(str(source)), 100)[0]
    spec = TaskSpec(
        task,
        str(out),
        "id",
        "text",
        ("lang",),
        ("lang",),
        EmbedOptions(),
        json.dumps(fingerprint),
        layout=layout,
    )
    state = RunState(out)
    state.check_fingerprint(fingerprint)
    state.mark_done(run_task(embedder, spec))
    state.write_config(f"model: {{source: {minilm_dir}}}\n")
    return str(out)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_document_is_found_by_its_own_text_at_rank_1(
    tmp_path, corpus, embedder, minilm_dir, capsys, precision
):
    out = output_in(tmp_path, corpus, embedder, minilm_dir, precision)
    _, texts = corpus
    for i in (3, 17, 30):
        assert main(["query", out, texts[i], "-k", "3", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert hits[0]["id"] == f"doc-{i}" and len(hits) == 3
        assert hits[0]["lang"] == ("en" if i % 2 else "de")
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
        assert hits[0]["score"] > 0.95


def test_the_scores_are_numpys_cosines_and_the_table_prints_them(
    tmp_path, corpus, embedder, minilm_dir, capsys
):
    out = output_in(tmp_path, corpus, embedder, minilm_dir, "float32")
    _, texts = corpus
    query = "how to read a file line by line"
    assert main(["query", out, query, "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    vectors, q = embedder.embed(texts).vectors, embedder.embed([query]).vectors[0]
    scores = vectors @ q
    expected = [f"doc-{i}" for i in np.argsort(-scores, kind="stable")[:5]]
    assert [h["id"] for h in hits] == expected
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1][:5], atol=1e-5)
    assert main(["query", out, query, "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[:3] == [
        "1",
        f"{hits[0]['score']:.4f}",
        hits[0]["id"],
    ]


def test_a_model_that_did_not_make_the_output_is_refused(
    tmp_path, corpus, embedder, minilm_dir, minilm_int8_dir, capsys
):
    out = output_in(tmp_path, corpus, embedder, minilm_dir, "float32")
    assert main(["query", out, "anything", "--model", str(minilm_int8_dir)]) == 2
    assert "is not the model that made" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "nothing"), "anything"]) == 2
    assert "holds no embedpipe run" in capsys.readouterr().err
