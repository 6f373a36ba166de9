"""embedding.chunking end to end on a local Ray: a row per chunk with provenance a user can
check, exactly once per (id, chunk) across tasks and re-indexes, and pool: mean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.batch.run import run_job
from pipelines.cli import main
from pipelines.config import load_config
from workers import Embedder, EmbedOptions
from workers.chunker import PooledEmbedder, chunk_options
from workers.chunking import Chunking

pytestmark = pytest.mark.usefixtures("local_ray")

CHUNKING = ["embedding.chunking.tokens=64", "embedding.chunking.overlap=8"]


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return Embedder.load(minilm_dir, threads=1)


def long_doc(texts: list[str], first: int, count: int) -> str:
    """A document of `count` paragraphs (of parity texts, some multi-byte), several windows."""
    return "\n\n".join(texts[first : first + count])


@pytest.fixture(scope="module")
def docs(parity_texts) -> list[tuple[str | None, str | None]]:
    texts = list(dict.fromkeys(parity_texts))
    return [
        ("long-1", long_doc(texts, 0, 8)),
        ("short-1", "a short text, one chunk"),
        ("empty", ""),
        (None, "a text without an id"),
        ("long-2", long_doc(texts, 8, 6) + " Zürich 東京 🚀 naïve café."),
        ("short-2", texts[20]),
        ("long-1-again", long_doc(texts, 0, 8)),  # the same text in a later task: copied
        ("long-3", long_doc(texts, 30, 10)),
    ]


def write(root: Path, docs: list[tuple[str | None, str | None]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"id": [i for i, _ in docs], "text": [t for _, t in docs]},
        schema={"id": pl.String, "text": pl.String},
    ).write_parquet(root / "docs.parquet")
    return root


def run(tmp_path: Path, model: Path, corpus: Path, out: str, *overrides: str) -> dict:
    conf = tmp_path / f"{out}.yaml"
    conf.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {corpus}, rows_per_task: 3}}\n"
        f"output: {{path: {tmp_path / out}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
        "run: {wait_for_copies: true}\n"
    )
    report: dict = run_job(load_config(conf, list(overrides)))
    assert report["tasks_done"] == report["tasks_total"]
    return report


def test_every_row_becomes_its_chunks_or_a_reject_and_offsets_name_what_was_embedded(
    tmp_path, minilm_dir, docs, embedder, capsys
):
    report = run(tmp_path, minilm_dir, write(tmp_path / "in", docs), "out", *CHUNKING)
    parts = pl.read_parquet(tmp_path / "out" / "part-*.parquet").sort("id", "chunk")
    rejects = pl.read_parquet(tmp_path / "out" / "_rejects" / "*.parquet")
    texts = {key: text for key, text in docs if key is not None}

    # counts add up: every input row is one or more chunk rows, or a reject
    chunked = set(parts["id"])
    assert sorted(rejects["row"].to_list()) == [2, 3] and rejects["chunk"].null_count() == 2
    assert chunked == {k for k, t in texts.items() if t}
    assert report["chunks_written"] == parts.height and report["rows_rejected"] == 2
    for _, rows in parts.group_by("id"):
        n = rows["n_chunks"][0]
        assert rows["chunk"].to_list() == list(range(n)) and set(rows["n_chunks"]) == {n}
    assert parts.filter(pl.col("id").str.starts_with("long"))["n_chunks"].min() > 3
    assert parts.filter(pl.col("id").str.starts_with("short"))["n_chunks"].max() == 1

    # text[char_start:char_end] is what each chunk embedded: the embedder's vector of it
    pieces = [
        texts[key][start:end]
        for key, start, end in parts.select("id", "char_start", "char_end").iter_rows()
    ]
    expected = embedder.embed(pieces, chunk_options(EmbedOptions()))
    assert np.array_equal(np.stack(parts["embedding"].to_numpy()), expected.vectors)
    assert parts["n_tokens"].to_list() == expected.n_tokens.tolist()
    assert max(parts["n_tokens"]) <= 64 and not any(parts["truncated"])

    # the repeated document was embedded once, by the task that had it first
    again = parts.filter(pl.col("id") == "long-1-again")
    assert report["rows_deduplicated"] == again.height
    assert report["rows_embedded"] == parts.height - again.height

    # `embedpipe query` finds a passage of a document's tail, and names its chunk
    tail = parts.filter(pl.col("id") == "long-3").sort("chunk")[-2]
    passage = texts["long-3"][tail["char_start"][0] : tail["char_end"][0]]
    assert main(["query", str(tmp_path / "out"), passage, "-k", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    expected = ("long-3", tail["chunk"][0], tail["n_chunks"][0])
    assert (hit["id"], hit["chunk"], hit["n_chunks"]) == expected
    assert texts["long-3"][hit["char_start"] : hit["char_end"]] == passage


def test_a_changed_last_paragraph_reembeds_only_the_chunks_it_changed(tmp_path, minilm_dir, docs):
    first = write(tmp_path / "week1", docs)
    run(tmp_path, minilm_dir, first, "week1-out", *CHUNKING)
    key, text = docs[7]
    revised = [*docs[:7], (key, str(text) + " One more closing sentence.")]
    report = run(
        tmp_path,
        minilm_dir,
        write(tmp_path / "week2", revised),
        "week2-out",
        *CHUNKING,
        f"run.cache_from=[{tmp_path / 'week1-out'}]",
    )
    old = pl.read_parquet(tmp_path / "week1-out" / "part-*.parquet")
    new = pl.read_parquet(tmp_path / "week2-out" / "part-*.parquet")
    changed = new.join(old, on=["id", "chunk", "text_hash"], how="anti")
    assert changed["id"].unique().to_list() == [key] and 1 <= changed.height <= 2
    assert report["rows_embedded"] == changed.height
    assert report["rows_from_cache"] == new.height - changed.height


def test_pool_mean_writes_a_row_per_text_and_never_mixes_with_chunk_rows(
    tmp_path, minilm_dir, docs, embedder
):
    corpus = write(tmp_path / "in", docs)
    run(tmp_path, minilm_dir, corpus, "chunks", *CHUNKING)
    pooled = [*CHUNKING, "embedding.chunking.pool=mean"]
    cache = f"run.cache_from=[{tmp_path / 'chunks'}]"
    report = run(tmp_path, minilm_dir, corpus, "pooled", *pooled, cache)
    rows = pl.read_parquet(tmp_path / "pooled" / "part-*.parquet").sort("id")
    assert "chunk" not in rows.columns and rows["id"].to_list() == sorted(
        k for k, t in docs if k is not None and t
    )
    texts = dict(docs)
    expected = PooledEmbedder(embedder, Chunking(64, 8, "mean")).embed(
        [texts[k] for k in rows["id"]]
    )
    assert np.allclose(np.stack(rows["embedding"].to_numpy()), expected.vectors, atol=1e-6)
    (source,) = report["cache"]["sources"]
    assert source["files"] == 0 and "chunking" in next(iter(source["skipped"].values()))
