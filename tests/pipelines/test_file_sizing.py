"""output.max_rows_per_file, output.row_group_rows and output.compression: a task's part files cut
as asked, every row still in exactly one of them, and a run that resumes to the same bytes."""

from __future__ import annotations

import dataclasses
import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipelines.batch.task import run_task
from pipelines.output.file_sizing import FileSizing
from tests.pipelines.test_cache import distinct_texts, run, write_corpus  # noqa: F401
from tests.pipelines.test_task import embedder, spec_for  # noqa: F401


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "lz4", "none"])
def test_a_task_writes_numbered_files_of_at_most_the_rows_asked(
    tmp_path,
    embedder,  # noqa: F811
    compression,
):
    spec = dataclasses.replace(spec_for(tmp_path), sizing=FileSizing(1, 1, compression))
    marker = run_task(embedder, spec)
    parts = [f for f in marker.files if not f.rejects]
    assert [f.path for f in parts] == [f"part-{marker.task_id}-{k:05d}.parquet" for k in (0, 1)]
    assert all(f.rows == 1 for f in parts)
    for f in parts:
        meta = pq.ParquetFile(tmp_path / "out" / f.path).metadata
        codec = meta.row_group(0).column(0).compression
        assert codec == ("UNCOMPRESSED" if compression == "none" else compression.upper())
    rows = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert sorted(rows["id"].to_list()) == ["a", "c"]  # the task's two embedded rows, once


def test_by_default_one_file_per_task_and_the_fingerprint_is_unchanged():
    sizing = FileSizing()
    assert sizing.is_default and sizing.compression == "zstd"
    assert FileSizing(max_rows_per_file=10) != sizing


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_run_cut_into_small_files_holds_every_row_once_and_resumes_to_the_same_bytes(
    tmp_path,
    minilm_dir,
    distinct_texts,  # noqa: F811
):
    corpus = write_corpus(tmp_path / "in", [(f"d{i:03d}", distinct_texts[i]) for i in range(80)])
    cut = ["output.max_rows_per_file=7", "output.row_group_rows=3"]
    report = run(tmp_path, minilm_dir, corpus, "out", *cut)
    out = tmp_path / "out"
    files = sorted(out.glob("part-*.parquet"))
    assert len(files) == report["tasks_total"] * 3  # 20 rows a task: 7 + 7 + 6
    assert all(pq.ParquetFile(f).metadata.num_rows <= 7 for f in files)
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 3 for f in files)
    ids = pl.read_parquet(files)["id"].to_list()
    assert sorted(ids) == [f"d{i:03d}" for i in range(80)]
    recorded = json.loads((out / "_embedpipe.json").read_text())["files"]
    assert recorded == {"max_rows_per_file": 7, "row_group_rows": 3, "compression": "zstd"}
    before = files[4].read_bytes()
    others = {f: f.stat().st_mtime_ns for f in files if f.name[:-14] != files[4].name[:-14]}
    files[4].unlink()  # its task is redone, all three of its files; no other task is
    (out / "_SUCCESS").unlink()
    run(tmp_path, minilm_dir, corpus, "out", *cut)
    assert files[4].read_bytes() == before
    assert {f: f.stat().st_mtime_ns for f in others} == others
