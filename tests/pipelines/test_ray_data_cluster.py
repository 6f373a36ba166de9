"""EmbedBatches on a cluster whose worker nodes lack the export: `ship_model` puts it into Ray's
object store on the driver, and an actor on another node loads its own node's copy.

A Ray of its own (a head without CPUs and one worker node), so not test_ray_data's local Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.cluster_utils import Cluster

from workers.files import sha256_file
from workers.model_dir import read_card
from workers.model_shipment import CACHE_ENV
from workers.ray_data import EmbedBatches, ship_model


@pytest.mark.slow
def test_shipped_model_is_loaded_from_the_node_cache_with_the_same_vectors(
    minilm_dir, parity_texts, tmp_path_factory, monkeypatch
):
    cache = tmp_path_factory.mktemp("model-cache")
    monkeypatch.setenv(CACHE_ENV, str(cache))  # where the worker node keeps its copy
    table = pa.table({"doc": list(range(40)), "text": parity_texts[:40]})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=2)  # the head has no CPU: the actor runs on the worker node
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        monkeypatch.chdir(minilm_dir.parent)
        shipment = ship_model(minilm_dir.name)  # relative, as in the README's example
        assert shipment.path == str(minilm_dir.resolve())  # the actors' cwd is not ours
        assert shipment.node_id == ray.get_runtime_context().get_node_id()
        ds = ray.data.from_arrow(table).map_batches(
            EmbedBatches,
            fn_constructor_kwargs={"model_dir": shipment, "threads": 1},
            batch_format="pyarrow",
            batch_size=16,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=1,
        )
        got = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("doc")
    finally:
        ray.shutdown()
        cluster.shutdown()

    [copy] = [p for p in cache.rglob("model.onnx")]
    assert sha256_file(copy) == read_card(minilm_dir).onnx_sha256
    expected = EmbedBatches(minilm_dir, threads=1)(table)
    assert got["doc"].to_pylist() == list(range(40))
    vectors = np.stack(got["embedding"].to_numpy(zero_copy_only=False))
    assert np.array_equal(vectors, np.stack(expected["embedding"].to_numpy(zero_copy_only=False)))
