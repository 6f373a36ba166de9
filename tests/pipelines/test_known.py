"""Inside a task, without Ray: copied rows, one embedding per distinct text, and a source file
that has gone or is damaged costs an embedding, never a row."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipelines.output.layout import Layout
from pipelines.output.part_files import embeddings_table, write_parquet_atomic
from pipelines.reindex.embed_or_copy import embed_or_copy, read_known
from workers import Embedder, EmbedOptions
from workers.text_hash import text_hashes

FULL = Layout.of(384, None, "float32", True)


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return Embedder.load(minilm_dir, threads=2)


def write_part(path, texts, value, n_tokens=5):
    """A part file whose vectors are all `value`, so a copied row is easy to tell."""
    table = embeddings_table(
        [f"id-{t}" for t in texts],
        np.full((len(texts), 384), value, np.float32),
        np.full(len(texts), n_tokens, np.int32),
        np.array([True] * len(texts)),
        text_hashes("", texts).hashes,
        pa.table({}),
        json.dumps({}),
    )
    write_parquet_atomic(table, path)
    return str(path)


def test_rows_are_copied_embedded_once_or_rejected_each_in_its_place(tmp_path, embedder):
    texts = ["alpha", "beta", "alpha", None, "gamma", "alpha"]
    digest = text_hashes("", texts)
    hashes = digest.hashes
    cached = write_part(tmp_path / "old.parquet", ["beta", "unrelated"], 0.5, n_tokens=9)
    earlier = write_part(tmp_path / "t0.parquet", ["gamma"], 0.25)
    gone, damaged = tmp_path / "gone.parquet", tmp_path / "damaged.parquet"
    damaged.write_bytes(b"not parquet")
    cache = read_known([cached, str(gone), str(damaged)], hashes, FULL)
    run = read_known([earlier], hashes, FULL)

    found = embed_or_copy(embedder, texts, digest, EmbedOptions(), cache, run, FULL)
    assert (found.embedded, found.from_cache, found.deduplicated) == (1, 1, 3)
    assert found.rows.errors == (None, None, None, "text is null", None, None)
    assert (
        np.all(found.rows.vectors[1] == 0.5)
        and found.rows.n_tokens[1] == 9
        and found.rows.truncated[1]
    )
    assert np.all(found.rows.vectors[4] == 0.25)
    alpha = embedder.embed(["alpha"]).vectors[0]
    for row in (0, 2, 5):
        assert found.rows.vectors[row].tobytes() == alpha.tobytes()
    assert found.tokens == embedder.embed(["alpha"]).n_tokens[0]


def test_everything_copied_runs_no_model(tmp_path, embedder):
    texts = ["beta", "beta"]
    digest = text_hashes("", texts)
    hashes = digest.hashes
    cache = read_known([write_part(tmp_path / "old.parquet", ["beta"], 0.5)], hashes, FULL)
    empty = read_known([], hashes, FULL)
    found = embed_or_copy(embedder, texts, digest, EmbedOptions(), cache, empty, FULL)
    assert (found.embedded, found.from_cache, found.deduplicated, found.tokens) == (0, 2, 0, 0)
    assert found.rows.device_s == 0.0 and np.all(found.rows.vectors == 0.5)
