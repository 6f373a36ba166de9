"""Part files: the declared schema, the fingerprint in the metadata, partitions, same bytes."""

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.output.part_files import (
    FINGERPRINT_KEY,
    embeddings_table,
    hashes_of,
    partitions,
    rejects_table,
    write_parquet_atomic,
)

FP = json.dumps({"model": "abc"})


def sample(n=5, dim=4):
    rng = np.random.default_rng(0)
    kept = pa.table(
        {"lang": ["en", "de", "en", None, "de"][:n], "url": [f"u{i}" for i in range(n)]}
    )
    return embeddings_table(
        [f"{i:03d}" for i in range(n)],
        rng.standard_normal((n, dim)).astype(np.float32),
        np.arange(n, dtype=np.int32) + 3,
        np.array([False, True, False, False, True][:n]),
        np.array([bytes([i]) * 16 for i in range(n)], dtype="S16"),
        kept,
        FP,
    )


def test_schema_is_the_declared_one():
    table = sample()
    assert table.schema.names == [
        *("id", "embedding", "n_tokens", "truncated", "text_hash", "lang", "url")
    ]
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("text_hash").type == pa.binary(16)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("n_tokens").type == pa.int32()
    assert table.schema.field("truncated").type == pa.bool_()
    assert table.schema.metadata[FINGERPRINT_KEY] == FP.encode()


def test_text_hashes_survive_the_round_trip_through_parquet(tmp_path):
    # all-zero and trailing-zero digests too: numpy's bytes dtype must not trim them
    hashes = np.array([b"\0" * 16, b"a" + b"\0" * 15, bytes(range(16))], dtype="S16")
    table = embeddings_table(
        ["a", "b", "c"],
        np.zeros((3, 2), np.float32),
        np.ones(3, np.int32),
        np.zeros(3, bool),
        hashes,
        pa.table({}),
        FP,
    )
    write_parquet_atomic(table, tmp_path / "p.parquet")
    column = pq.read_table(tmp_path / "p.parquet").column("text_hash")
    assert column.to_pylist() == [b"\0" * 16, b"a" + b"\0" * 15, bytes(range(16))]
    assert hashes_of(column).tobytes() == hashes.tobytes()


def test_written_file_reads_back_with_polars_and_keeps_the_fingerprint(tmp_path):
    path = tmp_path / "part-x.parquet"
    write_parquet_atomic(sample(), path)
    frame = pl.read_parquet(path)
    assert frame["id"].to_list() == ["000", "001", "002", "003", "004"]
    assert frame["embedding"].dtype == pl.Array(pl.Float32, 4)
    assert pq.read_schema(path).metadata[FINGERPRINT_KEY] == FP.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["part-x.parquet"]  # no temp file left


def test_same_rows_give_the_same_bytes(tmp_path):
    a = write_parquet_atomic(sample(), tmp_path / "a.parquet")
    b = write_parquet_atomic(sample(), tmp_path / "b.parquet")
    assert a == b
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_hive_partitions_split_rows_and_drop_the_key_column():
    parts = partitions(sample(), ["lang"])
    assert [d for d, _ in parts] == ["lang=__HIVE_DEFAULT_PARTITION__", "lang=de", "lang=en"]
    assert sum(t.num_rows for _, t in parts) == 5
    assert all("lang" not in t.column_names for _, t in parts)
    assert partitions(sample(), []) == [("", sample())]


def test_partition_values_are_escaped_for_paths():
    table = sample().set_column(5, "lang", pa.array(["a/b", "a/b", "c d", "c d", "e"]))
    assert [d for d, _ in partitions(table, ["lang"])] == ["lang=a%2Fb", "lang=c%20d", "lang=e"]


def test_rejects_carry_file_row_id_and_reason():
    table = rejects_table("a.csv", [3, 9], ["x", None], ["text is empty", "id is null"], FP)
    assert table.to_pylist()[1] == {"file": "a.csv", "row": 9, "id": None, "reason": "id is null"}


def test_embedding_width_must_match_rows():
    with pytest.raises(ValueError):
        embeddings_table(
            ["a"],
            np.zeros((2, 4), np.float32),
            np.zeros(1),
            np.zeros(1, bool),
            np.zeros(1, "S16"),
            pa.table({}),
            FP,
        )
