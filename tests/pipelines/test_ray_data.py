"""EmbedBatches, embedpipe's embedder as a Ray Data map_batches callable: the vectors `embedpipe
run` writes, rejects kept as rows with their reason, and a column that Ray Data's own
write_parquet leaves a plain fixed-size list that polars and DuckDB read."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch.run import run_job
from pipelines.config import load_config
from workers.ray_data import EmbedBatches, actor_device

pytestmark = pytest.mark.usefixtures("local_ray")


def corpus_texts(parity_texts: list[str]) -> list[str | None]:
    texts: list[str | None] = list(parity_texts[:60])
    texts[3], texts[7] = None, ""  # rejects: kept as rows, with the reason
    return texts


def test_a_batch_gets_the_embedders_vectors_and_keeps_its_rejected_rows(minilm_dir, parity_texts):
    texts = corpus_texts(parity_texts)
    batch = pa.table({"doc": list(range(len(texts))), "body": texts})
    out = EmbedBatches(minilm_dir, "body", threads=1)(batch)
    assert out.column_names == [
        "doc",
        "body",
        "embedding",
        "n_tokens",
        "truncated",
        "reject_reason",
    ]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    reasons = out.column("reject_reason").to_pylist()
    assert reasons[3] == "text is null" and reasons[7] == "text is empty"
    assert out.column("embedding").null_count == 2
    assert out.column("embedding")[3].as_py() is None
    rows = [i for i in range(len(texts)) if reasons[i] is None]
    vectors = np.array([out.column("embedding")[i].as_py() for i in rows], np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(norms, 1, atol=1e-5)
    assert out.column("truncated").to_pylist()[3] is False


def test_a_batch_of_another_format_or_without_the_column_is_refused_with_the_fix(minilm_dir):
    embed = EmbedBatches(minilm_dir, "body", threads=1)
    with pytest.raises(TypeError, match="batch_format='pyarrow'"):
        embed({"body": np.array(["a"])})  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="text_column"):
        embed(pa.table({"text": ["a"]}))


def test_auto_device_is_the_gpu_ray_gave_the_actor_and_batches_fit_the_device(
    minilm_dir, monkeypatch
):
    import ray

    embedder = EmbedBatches(minilm_dir, threads=1).embedder  # no GPU from Ray here
    assert embedder.session.device == "cpu" and embedder.max_batch_tokens == 2048
    assert (
        EmbedBatches(minilm_dir, threads=1, max_batch_tokens=512).embedder.max_batch_tokens == 512
    )
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])  # what an actor with num_gpus=1 sees
    assert actor_device("auto") == "cuda" and actor_device("cpu") == "cpu"


def test_a_model_dir_this_node_lacks_is_refused_naming_ship_model(tmp_path):
    missing = tmp_path / "models" / "minilm"
    with pytest.raises(FileNotFoundError, match=r"not a directory on this node .*ship_model\("):
        EmbedBatches(missing)


def test_ray_data_writes_the_run_s_vectors_as_a_plain_fixed_size_list(
    tmp_path, minilm_dir, parity_texts
):
    import ray

    texts = corpus_texts(parity_texts)
    corpus = tmp_path / "in"
    corpus.mkdir()
    frame = pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts})
    frame.write_parquet(corpus / "a.parquet")
    ds = ray.data.read_parquet(str(corpus)).map_batches(
        EmbedBatches,
        fn_constructor_kwargs={"model_dir": str(minilm_dir), "threads": 1},
        batch_format="pyarrow",
        batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    )
    ds.write_parquet(str(tmp_path / "ray-out"))
    written = pq.read_table(tmp_path / "ray-out")
    assert written.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert written.num_rows == len(texts)  # rejects too
    read = pl.read_parquet(tmp_path / "ray-out" / "*.parquet")
    assert read.schema["embedding"] == pl.Array(pl.Float32, 384)
    glob = str(tmp_path / "ray-out" / "*.parquet")
    [(kind,)] = duckdb.sql(f"SELECT DISTINCT typeof(embedding) FROM '{glob}'").fetchall()
    assert kind == "FLOAT[]"  # as DuckDB reads embedpipe's own output

    conf = tmp_path / "run.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\n"
        f"input: {{path: {corpus}}}\n"
        f"output: {{path: {tmp_path / 'run-out'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 1}\n"
    )
    assert run_job(load_config(conf))["rows_rejected"] == 2
    run = pl.read_parquet(tmp_path / "run-out" / "*.parquet").sort("id")
    ours = read.filter(pl.col("reject_reason").is_null()).sort("id")
    assert ours["id"].to_list() == run["id"].to_list()
    assert np.array_equal(ours["embedding"].to_numpy(), run["embedding"].to_numpy())
    assert ours["n_tokens"].to_list() == run["n_tokens"].to_list()
