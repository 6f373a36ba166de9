"""The output as the receiving team reads it: polars, pyarrow.dataset with hive partitions, DuckDB
(its cosine top-k equal to numpy's) and pandas, each in the two lines the README shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.batch.task import TaskSpec, run_task
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.planning import plan_tasks
from workers import Embedder, EmbedOptions

K = 5


@pytest.fixture(scope="module")
def output(tmp_path_factory, minilm_dir, parity_texts):
    """One task's output, partitioned by a kept column, and its rows' vectors by id."""
    root = tmp_path_factory.mktemp("interop")
    texts = list(dict.fromkeys(t for t in parity_texts if t.strip()))[:40]
    rows = [
        {"id": f"doc-{i}", "text": t, "lang": "en" if i % 3 else "de"} for i, t in enumerate(texts)
    ]
    (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = plan_tasks(list_inputs(str(root / "in.jsonl")), 100)[0]
    spec = TaskSpec(
        task, str(root / "out"), "id", "text", ("lang",), ("lang",), EmbedOptions(), "{}"
    )
    embedder = Embedder.load(minilm_dir, threads=2)
    run_task(embedder, spec)
    vectors = embedder.embed(texts).vectors
    return root / "out", {r["id"]: v for r, v in zip(rows, vectors, strict=True)}, vectors[7]


def top_k(by_id: dict[str, np.ndarray], query: np.ndarray) -> list[str]:
    ids = sorted(by_id)
    scores = np.stack([by_id[i] for i in ids]) @ query  # unit vectors: cosine
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:K]]


def test_polars_reads_ids_vectors_and_partitions(output):
    import polars as pl

    out, by_id, _ = output
    frame = pl.read_parquet(f"{out}/**/*.parquet", hive_partitioning=True)
    assert frame.height == 40 and set(frame["lang"]) == {"en", "de"}
    got = dict(zip(frame["id"], frame["embedding"].to_numpy(), strict=True))
    assert all(np.array_equal(got[i], by_id[i]) for i in by_id)


def test_pyarrow_dataset_reads_the_hive_partitions(output):
    import pyarrow.dataset as ds

    out = output[0]
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 40 and set(table["lang"].to_pylist()) == {"en", "de"}
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[384]"


def test_duckdb_cosine_top_k_equals_numpys(output):
    import duckdb

    out, by_id, query = output
    found = duckdb.sql(
        f"""SELECT id, array_cosine_similarity(embedding::FLOAT[384], $q::FLOAT[384]) AS score
        FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true)
        ORDER BY score DESC, id LIMIT {K}""",
        params={"q": query.tolist()},
    ).fetchall()
    assert [i for i, _ in found] == top_k(by_id, query)
    langs = duckdb.sql(
        f"SELECT DISTINCT lang FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert {lang for (lang,) in langs} == {"en", "de"}


def test_pandas_reads_the_vectors_as_arrays(output):
    import pandas as pd

    out, by_id, _ = output
    frame = pd.read_parquet(out)  # pyarrow underneath: hive partitions as a column
    assert len(frame) == 40 and set(frame["lang"]) == {"en", "de"}
    got = np.stack(frame["embedding"].to_numpy())
    expected = np.stack([by_id[i] for i in frame["id"]])
    assert got.dtype == np.float32 and np.array_equal(got, expected)


@pytest.mark.slow
def test_spark_reads_the_partitions_and_finds_the_same_top_k(output):
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    out, by_id, query = output
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    try:
        frame = spark.read.option("basePath", str(out)).parquet(str(out))
        q = F.array(*[F.lit(float(v)) for v in query])
        dot = F.aggregate(
            F.zip_with("embedding", q, lambda a, b: a * b), F.lit(0.0), lambda s, x: s + x
        )
        rows = frame.select("id", "lang", dot.alias("score")).orderBy(F.desc("score"), "id")
        found = rows.limit(K).collect()
        assert [r["id"] for r in found] == top_k(by_id, query)
        assert {r["lang"] for r in frame.select("lang").distinct().collect()} == {"en", "de"}
    finally:
        spark.stop()
