"""CSV and compressed shards are counted on the cluster, never in the driver, and once per
output: a rerun finds the counts under `_state/counts/`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.batch import counting
from pipelines.batch.run import run_job
from pipelines.config import load_config
from pipelines.inputs import listing
from pipelines.inputs.planning import plan_tasks
from pipelines.inputs.readers import InputFile

pytestmark = pytest.mark.usefixtures("local_ray")


def corpus(root: Path) -> Path:
    root.mkdir()
    rows = [{"id": f"d{i:02d}", "text": f"document number {i}"} for i in range(30)]
    pl.DataFrame(rows[:12]).write_csv(root / "a.csv")
    lines = "".join(json.dumps(r) + "\n" for r in rows[12:25])
    (root / "b.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    pl.DataFrame(rows[25:]).write_parquet(root / "c.parquet")
    (root / "d.csv.gz").write_bytes(b"not gzip at all")
    return root


def config(tmp_path: Path, root: Path, model: Path) -> Path:
    conf = tmp_path / "run.yaml"
    conf.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {root}, rows_per_task: 5}}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 1}\n"
    )
    return conf


def test_the_cluster_counts_text_shards_once_and_the_driver_never_does(
    tmp_path, minilm_dir, monkeypatch
):
    conf = config(tmp_path, corpus(tmp_path / "in"), minilm_dir)

    footer = listing.count_rows

    def in_the_driver(location: str, fmt: str, *rest: object) -> int:
        assert fmt == "parquet", f"the driver counted {location}"  # a footer is no count
        return footer(location, fmt, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(listing, "count_rows", in_the_driver)
    report = run_job(load_config(conf))
    # 12 + 13 rows in tasks of 5, and the parquet's 5; the corrupt gzip fails alone
    assert (report["tasks_total"], report["tasks_failed"]) == (3 + 3 + 1 + 1, 1)
    assert report["rows_embedded"] == 30
    (failure,) = report["failures"].values()
    assert "d.csv.gz" in failure
    counts = sorted(p.read_text() for p in (tmp_path / "out" / "_state" / "counts").iterdir())
    assert counts == ["12\n", "13\n"]

    real = counting._count

    class OnlyTheUncounted:  # a count that was saved is not made again
        def remote(self, file: InputFile) -> object:
            assert file.path.endswith("d.csv.gz"), f"{file.path} was counted again"
            return real.remote(file)

    monkeypatch.setattr(counting, "_count", OnlyTheUncounted())
    again = run_job(load_config(conf))  # only the corrupt shard is left to do
    assert (again["tasks_done"], again["tasks_failed"]) == (7, 1)


def test_a_compressed_shard_of_many_tasks_is_named_with_the_fix(caplog):
    long = InputFile("/in/big.jsonl.gz", "big.jsonl.gz", "jsonl", rows=90, size=9)
    short = InputFile("/in/small.csv.zst", "small.csv.zst", "csv", rows=80, size=9)
    plain = InputFile("/in/plain.csv", "plain.csv", "csv", rows=900, size=9)
    counting.warn_long_streams(plan_tasks([long, short, plain], 10))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 compressed shard(s)" in warning and "/in/big.jsonl.gz, 9 tasks" in warning
    assert "split them into shards" in warning
