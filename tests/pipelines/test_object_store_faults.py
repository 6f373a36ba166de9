"""Runs on S3 that meet faults and clusters, through a local S3 API (moto's server): a driver
SIGKILLed mid-run resumes to a clean run's bytes, and a multi-node Ray cluster moves every byte
of data through the store."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from pipelines.batch.run import run_job
from pipelines.config import load_config
from tests.chaos import EMBEDPIPE, ROWS_PER_TASK, build_corpus, end_session, run_env, start_run
from workers.model_shipment import CACHE_ENV


def upload_corpus(bucket, root: Path, tasks: int) -> int:
    """The chaos corpus (bad rows, repeated ids) under corpus/ in the bucket; its row count."""
    rows = build_corpus(root, tasks=tasks)
    for shard in sorted(root.iterdir()):
        bucket.put(f"corpus/{shard.name}", shard.read_bytes())
    return rows


def job(tmp_path: Path, bucket, model_dir: Path, name: str, lease_s: float = 60) -> Path:
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(
        f"model: {{source: '{model_dir}'}}\n"
        f"input: {{path: '{bucket.url('corpus/')}', rows_per_task: {ROWS_PER_TASK}, "
        "keep_columns: [module]}\n"
        f"output: {{path: '{bucket.url(name)}'}}\n"
        "embedding: {max_batch_tokens: 4096}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
        "run: {stop_grace_s: 0}\n"
        f"storage: {{endpoint_url: '{bucket.storage.endpoint_url}', lock_lease_s: {lease_s}}}\n"
    )
    return conf


def embedpipe_run(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EMBEDPIPE, "run", str(conf)],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def objects(bucket, prefix: str) -> dict[str, bytes]:
    """Every object under prefix, by its key below it."""
    return {
        key[len(prefix) :]: bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        for key in bucket.listed(prefix)
    }


def wait_for_markers(bucket, prefix: str, count: int, run: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if len(bucket.listed(prefix)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} done markers under {prefix} (exit {run.poll()})")


@pytest.mark.slow
def test_a_driver_killed_mid_run_resumes_to_the_bytes_of_a_clean_run(bucket, minilm_dir, tmp_path):
    upload_corpus(bucket, tmp_path / "in", tasks=16)
    clean = embedpipe_run(job(tmp_path, bucket, minilm_dir, "clean"))
    assert clean.returncode == 0, clean.stderr[-2000:]

    conf = job(tmp_path, bucket, minilm_dir, "killed", lease_s=30)
    driver = start_run(conf, tmp_path / "killed.log")
    wait_for_markers(bucket, "killed/_state/done/", 3, driver)
    os.kill(driver.pid, signal.SIGKILL)
    end_session(driver)
    left = objects(bucket, "killed/")
    assert "_SUCCESS" not in left and "_state/lock" in left
    for key, body in left.items():  # whatever a reader can see is whole
        if key.endswith(".parquet"):
            assert pq.read_table(io.BytesIO(body)).num_rows > 0, key

    refused = embedpipe_run(conf)  # the dead driver's lease has not run out yet
    assert refused.returncode == 2, refused.stderr[-2000:]
    wait = re.search(r"killed, for its lock to expire \(at most (\d+) s\)", refused.stderr)
    assert wait, refused.stderr[-2000:]
    time.sleep(int(wait.group(1)) + 1)
    resumed = embedpipe_run(conf)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking over the lock of a run that stopped renewing it" in resumed.stderr

    done, expected = objects(bucket, "killed/"), objects(bucket, "clean/")
    data = sorted(k for k in expected if k.endswith(".parquet"))
    assert data and sorted(k for k in done if k.endswith(".parquet")) == data
    assert [k for k in data if done[k] != expected[k]] == []  # byte for byte
    assert "_SUCCESS" in done and "_state/lock" not in done


@pytest.mark.slow
def test_a_multi_node_run_moves_every_byte_of_data_through_s3(
    bucket, minilm_dir, tmp_path, tmp_path_factory, monkeypatch, caplog
):
    cache = tmp_path_factory.mktemp("model-cache")
    monkeypatch.setenv(CACHE_ENV, str(cache))  # the nodes' own copies of the model, shipped
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)  # the head has no CPU: every actor is on a worker node
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        rows = upload_corpus(bucket, tmp_path / "in", tasks=8)
        conf = job(tmp_path, bucket, minilm_dir, "emb")
        workdir = tmp_path / "workdir"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        local_before = sorted(tmp_path.rglob("*"))
        caplog.set_level(logging.INFO, logger="pipelines.batch.cluster")
        report = run_job(load_config(conf))
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert report["tasks_done"] == report["tasks_total"] and report["output"] == bucket.url("emb")
    assert sorted(tmp_path.rglob("*")) == local_before, "the run wrote to a local path"
    options = bucket.storage.polars()
    parts = pl.read_parquet(bucket.url("emb/part-*.parquet"), storage_options=options)
    rejects = pl.read_parquet(bucket.url("emb/_rejects/*.parquet"), storage_options=options)
    assert parts["id"].n_unique() == len(parts) and len(parts) + len(rejects) == rows
    assert "emb/_SUCCESS" in bucket.listed("emb/")
    ready = [r.getMessage() for r in caplog.records if "actor ready" in r.getMessage()]
    assert len(ready) == 2 and all(f"model in {cache}/" in line for line in ready), ready
