"""Inputs and run.cache_from on S3, through a local S3 API (moto's server): listing, every
format (compressed ones too), reading row ranges, the errors a user meets, and a run."""

from __future__ import annotations

import gzip
import io
import json

import polars as pl
import pytest

from pipelines.batch.run import run_job
from pipelines.config import load_config
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.readers import InputError, read_rows

ROWS = [{"id": f"{i:05d}", "text": f"text number {i}", "title": f"t{i}"} for i in range(24)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def parquet(rows: list[dict]) -> bytes:
    out = io.BytesIO()
    pl.DataFrame(rows).write_parquet(out)
    return out.getvalue()


@pytest.fixture
def shards(bucket):
    """The 24 rows in four shards under corpus/, with an output's markers beside them."""
    bucket.put("corpus/a.parquet", parquet(ROWS[:6]))
    bucket.put("corpus/sub/b.jsonl", jsonl(ROWS[6:12]))
    bucket.put("corpus/sub/c.jsonl.gz", gzip.compress(jsonl(ROWS[12:18]).encode()))
    csv = io.BytesIO()
    pl.DataFrame(ROWS[18:]).write_csv(csv)
    bucket.put("corpus/d.csv", csv.getvalue())
    bucket.put("corpus/_SUCCESS", "")
    bucket.put("corpus/.d.csv.crc", "checksum")
    return bucket


def test_a_prefix_lists_every_shard_with_its_key_and_etag(shards):
    files = list_inputs(shards.url("corpus/"), storage=shards.storage)
    assert [(f.key, f.format, f.rows) for f in files] == [
        ("a.parquet", "parquet", 6),
        ("d.csv", "csv", 6),
        ("sub/b.jsonl", "jsonl", 6),
        ("sub/c.jsonl.gz", "jsonl", 6),
    ]
    head = shards.client.head_object(Bucket=shards.name, Key="corpus/d.csv")
    assert files[1].version == head["ETag"].strip('"') and files[1].size == head["ContentLength"]


def test_a_glob_and_a_single_object(shards):
    found = list_inputs(shards.url("corpus/**/*.jsonl*"), storage=shards.storage)
    assert [f.key for f in found] == ["sub/b.jsonl", "sub/c.jsonl.gz"]
    (one,) = list_inputs(shards.url("corpus/a.parquet"), storage=shards.storage)
    assert (one.key, one.rows) == ("a.parquet", 6)


def test_row_ranges_read_the_same_from_every_format(shards):
    for file in list_inputs(shards.url("corpus"), storage=shards.storage):
        frame = read_rows(file, 2, 5, ["id", "text"])
        first = {"a.parquet": 0, "sub/b.jsonl": 6, "sub/c.jsonl.gz": 12, "d.csv": 18}[file.key]
        assert frame["id"].to_list() == [f"{i:05d}" for i in range(first + 2, first + 5)]


def test_a_missing_bucket_or_prefix_is_an_error_naming_the_url(bucket):
    with pytest.raises(InputError, match=r"s3://no-such-bucket-x/in/: the bucket does not exist"):
        list_inputs("s3://no-such-bucket-x/in", storage=bucket.storage)
    with pytest.raises(InputError, match=r"matches no files"):
        list_inputs(bucket.url("nothing/here"), storage=bucket.storage)


def test_an_unreachable_endpoint_says_which_setting_to_check(bucket):
    from pipelines.storage.settings import StorageSettings

    nowhere = StorageSettings("http://127.0.0.1:9", "us-east-1", allow_http=True, attempts=1)
    with pytest.raises(InputError, match=r"cannot reach the store .*storage\.endpoint_url"):
        list_inputs(bucket.url("in/"), storage=nowhere)


@pytest.mark.usefixtures("local_ray")
def test_a_run_reads_its_input_and_cache_from_s3(shards, minilm_dir, tmp_path):
    endpoint = shards.storage.endpoint_url
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\n"
        f"input: {{path: '{shards.url('corpus/')}', keep_columns: [title]}}\n"
        f"output: {{path: {tmp_path / 'week1'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 1}\n"
        f"storage: {{endpoint_url: '{endpoint}'}}\n"
    )
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"] and report["rows_embedded"] == 24
    local = pl.read_parquet(tmp_path / "week1" / "part-*.parquet")
    assert sorted(local["id"]) == [r["id"] for r in ROWS]
    # the output copied to the store serves the next week's run as its cache
    for part in (tmp_path / "week1").glob("part-*.parquet"):
        shards.put(f"emb/week1/{part.name}", part.read_bytes())
    shards.put("emb/week1/_embedpipe.json", (tmp_path / "week1" / "_embedpipe.json").read_text())
    over = [f"output.path={tmp_path / 'week2'}", f"run.cache_from=['{shards.url('emb/week1')}']"]
    again = run_job(load_config(conf, over))
    assert (again["rows_embedded"], again["rows_from_cache"]) == (0, 24)
    copied = pl.read_parquet(tmp_path / "week2" / "part-*.parquet").sort("id")
    assert copied["embedding"].to_list() == local.sort("id")["embedding"].to_list()
