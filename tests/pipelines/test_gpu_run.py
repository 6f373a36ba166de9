"""On a GPU machine: `embedpipe run` with workers.device=cuda, one actor per GPU, every row once.

Marked `gpu`: skipped (and said so) where there is no CUDA device.
"""

from __future__ import annotations

import logging

import polars as pl
import pytest

from pipelines.batch.run import run_job
from pipelines.config import load_config

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("local_ray")]


@pytest.mark.parametrize("layout", ["attention", "packed"])
def test_a_cuda_run_places_one_actor_per_gpu_and_embeds_every_row(
    layout, tiny_dirs, parity_texts, tmp_path, caplog
):
    import ray

    caplog.set_level(logging.INFO, logger="pipelines")
    texts = parity_texts[:120]
    pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts}).write_parquet(
        tmp_path / "in.parquet"
    )
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"model: {{source: {tiny_dirs[f'fp16-{layout}']}, dtype: fp16}}\n"
        f"input: {{path: {tmp_path / 'in.parquet'}, rows_per_task: 40}}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n"
        "workers: {device: cuda, num_actors: auto, cpus_per_actor: 1}\n"
    )
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"] == 3
    ready = [r.getMessage() for r in caplog.records if "actor ready" in r.getMessage()]
    assert len(ready) == min(int(ray.cluster_resources()["GPU"]), report["tasks_total"])
    assert all(line.endswith("(cuda)") for line in ready)
    parts = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert sorted(parts["id"]) == sorted(f"d{i}" for i in range(len(texts)))
