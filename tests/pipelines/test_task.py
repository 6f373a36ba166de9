"""One task run directly (no Ray): every row lands in the part or the rejects, exactly once."""

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from pipelines.batch.task import TaskSpec, id_problems, run_task
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.planning import plan_tasks
from workers import Embedder, EmbedOptions

ROWS = [
    {"id": "a", "text": "first document", "lang": "en"},
    {"id": None, "text": "no id", "lang": "en"},
    {"id": "b", "text": "", "lang": "de"},
    {"id": "a", "text": "repeats a", "lang": "de"},
    {"id": "c", "text": "third document", "lang": "de"},
    {"id": "d", "text": "   ", "lang": "en"},
]


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return Embedder.load(minilm_dir, threads=2)


def spec_for(tmp_path, partition_by=()):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    task = plan_tasks(list_inputs(str(src)), 100)[0]
    return TaskSpec(
        task,
        str(tmp_path / "out"),
        "id",
        "text",
        ("lang",),
        tuple(partition_by),
        EmbedOptions(),
        '{"fp": 1}',
        {3: "repeats row 0 of in.jsonl"},  # as the driver's id pass finds it
    )


def test_every_row_is_embedded_or_rejected_once(tmp_path, embedder):
    result = run_task(embedder, spec_for(tmp_path))
    out = tmp_path / "out"
    part = pl.read_parquet(out / f"part-{result.task_id}.parquet")
    rejects = pl.read_parquet(out / "_rejects" / f"part-{result.task_id}.parquet")
    assert part["id"].to_list() == ["a", "c"] and part["lang"].to_list() == ["en", "de"]
    assert rejects["row"].to_list() == [1, 2, 3, 5]
    reasons = dict(zip(rejects["row"].to_list(), rejects["reason"].to_list(), strict=True))
    assert reasons[1] == "id is null" and "empty" in reasons[2]
    assert reasons[3] == "id 'a' repeats row 0 of in.jsonl" and "whitespace" in reasons[5]
    assert (result.rows, result.embedded, result.rejected) == (6, 2, 4)


def test_vectors_equal_the_embedders_direct_output(tmp_path, embedder):
    result = run_task(embedder, spec_for(tmp_path))
    part = pl.read_parquet(tmp_path / "out" / f"part-{result.task_id}.parquet")
    direct = embedder.embed(["first document", "third document"])
    np.testing.assert_allclose(np.stack(part["embedding"].to_numpy()), direct.vectors, atol=1e-6)
    assert part["n_tokens"].to_list() == direct.n_tokens.tolist()
    assert result.tokens == int(direct.n_tokens.sum())


def test_partitions_are_hive_directories(tmp_path, embedder):
    result = run_task(embedder, spec_for(tmp_path, ["lang"]))
    assert sorted(f.path for f in result.files if not f.rejects) == [
        f"lang=de/part-{result.task_id}.parquet",
        f"lang=en/part-{result.task_id}.parquet",
    ]
    dataset = pl.read_parquet(tmp_path / "out" / "lang=*" / "*.parquet", hive_partitioning=True)
    assert sorted(dataset["id"].to_list()) == ["a", "c"]


def test_id_problems_are_nulls_and_the_repeats_given():
    assert id_problems(["x", None, "x", "y"], {2: "repeats row 100 of f.csv"}) == [
        None,
        "id is null",
        "id 'x' repeats row 100 of f.csv",
        None,
    ]


def test_the_driver_side_imports_no_onnxruntime():
    # the driver only plans and collects; loading onnxruntime there costs memory and start-up
    import subprocess
    import sys

    probe = "import sys, pipelines.batch.run; print('onnxruntime' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr


def test_a_task_on_a_device_out_of_memory_finishes_and_its_marker_says_how_often(
    tmp_path, minilm_dir
):
    from pipelines.output.markers import totals
    from tests.workers.helpers import limited

    rows = [{"id": f"m{i}", "text": f"{word} medium text"} for i, word in enumerate("abc")]
    rows.append({"id": "long", "text": "word " * 30})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = plan_tasks(list_inputs(str(src)), 100)[0]
    spec = TaskSpec(task, str(tmp_path / "out"), "id", "text", (), (), EmbedOptions(), "{}")
    # 16 tokens a batch: two rows of 8. The CPU's plan puts the long text (32 tokens) beside one
    # medium one (a lone row would pay for its copy anyway): that 2 x 32 batch is split once, the
    # budget comes down to 32, the long text fits nowhere alone, the other two fit as 2 x 8
    small, _ = limited(minilm_dir, limit=16, budget=4096)
    result = run_task(small, spec)
    assert (result.embedded, result.rejected) == (3, 1)
    rejects = pl.read_parquet(tmp_path / "out" / "_rejects" / f"part-{result.task_id}.parquet")
    assert rejects["id"].to_list() == ["long"]
    assert "32 tokens does not fit the device's memory even alone" in rejects["reason"][0]
    assert result.to_json()["device_oom"] == {"splits": 1, "max_batch_tokens": 32}
    assert small.max_batch_tokens == 32  # the marker's budget is the one the embedder ended on
    untouched = dataclasses.replace(result, oom_splits=0, max_batch_tokens=4096)
    report = totals({"t1": result, "t2": untouched})
    assert report["device_oom"] == {"splits": 1, "max_batch_tokens": 32}
