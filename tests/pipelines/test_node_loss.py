"""Losing a worker node in the middle of a run: the run completes, every row once.

Several Ray nodes on one machine (ray.cluster_utils.Cluster). The head has no CPU, so every
actor lives on a worker node; one of those nodes is removed while tasks run on it. With a
spare node Ray restarts the actor there; without one the run finishes on the actors left.
"""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest
import ray
from ray.cluster_utils import Cluster

from pipelines.batch.run import run_job
from pipelines.config import load_config
from tests.chaos import build_corpus, descendants, write_config
from tests.pipelines.helpers import assert_consistent, wait_for_done_markers


@pytest.fixture
def cluster():
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def node_running_an_actor(nodes: list) -> object:
    for node in nodes:
        raylet = node.all_processes["raylet"][0].process.pid
        if any(title.startswith(b"ray::EmbedActor") for _, title in descendants(raylet)):
            return node
    raise AssertionError("no worker node runs an actor")


@pytest.mark.slow
@pytest.mark.parametrize("spare", [True, False], ids=["spare-node", "no-spare-node"])
def test_a_worker_node_lost_mid_run_loses_no_row(cluster, tmp_path, minilm_dir, caplog, spare):
    workers = [cluster.add_node(num_cpus=1) for _ in range(3 if spare else 2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    rows = build_corpus(tmp_path / "in", tasks=40)
    out = tmp_path / "out"
    conf = write_config(
        tmp_path / "job.yaml", minilm_dir, tmp_path / "in", out, "wait_timeout_s: 60"
    )
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run_job(load_config(conf))))
    runner.start()
    wait_for_done_markers(out, 3, runner.is_alive)
    cluster.remove_node(node_running_an_actor(workers), allow_graceful=False)
    runner.join(timeout=300)
    assert not runner.is_alive(), "the run did not finish after the node loss"
    assert result["tasks_done"] == result["tasks_total"] and (out / "_SUCCESS").exists()
    parts = pl.read_parquet(Path(out) / "part-*.parquet")
    rejects = pl.read_parquet(Path(out) / "_rejects" / "*.parquet")
    assert parts["id"].n_unique() == len(parts) and len(parts) + len(rejects) == rows
    assert any("actor died running" in r.message for r in caplog.records)


@pytest.mark.slow
def test_losing_the_only_node_stops_the_run_naming_what_it_lacks(cluster, tmp_path, minilm_dir):
    from pipelines.batch.cluster import ClusterError

    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    build_corpus(tmp_path / "in", tasks=40)
    out = tmp_path / "out"
    conf = write_config(
        tmp_path / "job.yaml", minilm_dir, tmp_path / "in", out, "wait_timeout_s: 5"
    )
    result: dict = {}

    def run() -> None:
        try:
            run_job(load_config(conf, ["workers.num_actors=1"]))
        except ClusterError as err:
            result["error"] = str(err)

    runner = threading.Thread(target=run)
    runner.start()
    wait_for_done_markers(out, 3, runner.is_alive)
    cluster.remove_node(node, allow_graceful=False)
    runner.join(timeout=120)
    assert not runner.is_alive(), "the run hangs on an actor that cannot come back"
    assert "the cluster lacks the CPUs or GPUs to restart them" in result.get("error", ""), result
    assert not (out / "_SUCCESS").exists()
    assert_consistent(out)
