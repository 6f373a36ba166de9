"""Listing shards, counting rows and reading row ranges in the three input formats."""

import dataclasses
import json

import polars as pl
import pytest

from pipelines.inputs.listing import list_inputs
from pipelines.inputs.planning import (
    number_rows,
    plan_tasks,
    read_task,
    require_columns,
    task_id,
)
from pipelines.inputs.readers import InputError, read_rows

ROWS = [{"id": f"{i:05d}", "text": f"text number {i}", "title": f"t{i}"} for i in range(25)]


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    pl.DataFrame(ROWS[:10]).write_parquet(root / "a.parquet")
    (root / "sub" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[10:18]))
    pl.DataFrame(ROWS[18:]).write_csv(root / "c.csv")
    (root / "_SUCCESS").write_text("")
    (root / ".hidden.parquet").write_text("not a shard")
    return root


def test_a_directory_lists_every_shard_recursively_in_order(shards):
    files = list_inputs(str(shards))
    assert [(f.key, f.format, f.rows) for f in files] == [
        ("a.parquet", "parquet", 10),
        ("c.csv", "csv", 7),
        ("sub/b.jsonl", "jsonl", None),  # split by bytes, counted by the digest pass
    ]


def test_a_glob_and_a_single_file(shards):
    assert [f.key for f in list_inputs(str(shards / "**" / "*.jsonl"))] == ["sub/b.jsonl"]
    assert [f.rows for f in list_inputs(str(shards / "a.parquet"))] == [10]


def test_unknown_extension_is_an_error_naming_the_file(shards):
    (shards / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: unsupported extension"):
        list_inputs(str(shards))


def test_nothing_found_is_an_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="matches no files"):
        list_inputs(str(tmp_path / "*.parquet"))


@pytest.mark.parametrize("key", ["a.parquet", "sub/b.jsonl", "c.csv"])
def test_reading_a_row_range_keeps_ids_as_written(shards, key):
    file = next(f for f in list_inputs(str(shards)) if f.key == key)
    frame = read_rows(file, 2, 5, ["id", "text"])
    offset = {"a.parquet": 0, "sub/b.jsonl": 10, "c.csv": 18}[key]
    assert frame["id"].to_list() == [f"{i:05d}" for i in range(offset + 2, offset + 5)]


def test_a_missing_column_names_the_file_and_the_columns(shards):
    file = list_inputs(str(shards / "a.parquet"))[0]
    with pytest.raises(
        InputError, match=r"a\.parquet: column\(s\) body not found.*id, text, title"
    ):
        read_rows(file, 0, 3, ["id", "body"])


def test_tasks_cover_every_row_once_with_stable_ids(shards):
    files = require_columns(list_inputs(str(shards)), {"id": "input.id_column"}, "text")
    tasks = plan_tasks(files, rows_per_task=4)
    # the JSON Lines' byte ranges are numbered from what reading them finds (the digest pass)
    counts = {t.task_id: read_task(t, ["id"]).height for t in tasks}
    tasks, unknown = number_rows(tasks, counts)
    assert unknown == {}
    covered = [(t.file.key, r) for t in tasks for r in range(t.start, t.stop)]
    assert len(covered) == len(set(covered)) == 25
    assert [read_task(t, ["id"])["id"].to_list() for t in tasks] == [
        [r["id"] for r in ROWS[a:b]]
        for a, b in [(0, 4), (4, 8), (8, 10), (18, 22), (22, 25), (10, 14), (14, 18)]
    ]
    assert max(t.rows for t in tasks) == 4
    assert [t.task_id for t in plan_tasks(list_inputs(str(shards)), 4)] == [
        t.task_id for t in tasks
    ]
    assert len({t.task_id for t in tasks}) == len(tasks)


def test_task_ids_keep_similar_names_apart():
    assert task_id("a b.csv", 0, 10) != task_id("a_b.csv", 0, 10)
    assert task_id("a.csv", 0, 10).startswith("a_csv-")


def compress(path, suffix: str) -> None:
    """path + suffix: path's bytes gzip- or zstd-compressed, as exporters write them."""
    import pyarrow as pa

    codec = {".gz": "gzip", ".zst": "zstd"}[suffix]
    with pa.CompressedOutputStream(str(path) + suffix, codec) as out:
        out.write(path.read_bytes())
    path.unlink()


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_compressed_jsonl_ndjson_json_and_csv_read_like_their_plain_forms(tmp_path, suffix):
    root = tmp_path / "in"
    root.mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in ROWS)
    for name in ("a.jsonl", "b.ndjson", "c.json"):
        (root / name).write_text(lines)
        compress(root / name, suffix)
    pl.DataFrame(ROWS).write_csv(root / "d.csv")
    compress(root / "d.csv", suffix)
    files = list_inputs(str(root))
    assert [(f.key, f.format, f.rows) for f in files] == [
        (f"a.jsonl{suffix}", "jsonl", 25),
        (f"b.ndjson{suffix}", "jsonl", 25),
        (f"c.json{suffix}", "jsonl", 25),
        (f"d.csv{suffix}", "csv", 25),
    ]
    for file in files:
        assert read_rows(file, 20, 25, ["id", "text"])["id"].to_list() == [
            f"{i:05d}" for i in range(20, 25)
        ]


@pytest.mark.parametrize("codec", ["snappy", "gzip", "brotli", "lz4", "zstd", "uncompressed"])
def test_parquet_with_any_codec_reads(tmp_path, codec):
    path = tmp_path / f"part-0.{codec}.parquet"
    pl.DataFrame(ROWS).write_parquet(path, compression=codec)
    (file,) = list_inputs(str(path))
    assert file.rows == 25 and read_rows(file, 0, 2, ["id"])["id"].to_list() == ["00000", "00001"]


def test_bad_utf8_inside_a_compressed_shard_names_its_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,text\n1,fine\n2,caf\xe9\n")
    compress(path, ".gz")
    (file,) = list_inputs(str(tmp_path))
    with pytest.raises(InputError) as failed:
        read_rows(file, 0, 2, ["id", "text"])
    assert str(failed.value) == (
        f"{path}.gz: line 3 (byte 20) is not valid UTF-8; "
        "re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"
    )


def test_a_json_array_is_refused_with_the_command_that_makes_it_json_lines(tmp_path):
    (tmp_path / "export.json").write_text(json.dumps(ROWS[:3]))
    (file,) = list_inputs(str(tmp_path))
    assert file.error == (
        f"{tmp_path / 'export.json'} is a JSON array, not JSON Lines (one object per line); "
        "convert it, e.g. jq -c '.[]' IN > OUT.jsonl"
    )


def test_spreadsheet_and_spark_exports_read_or_name_the_fix(tmp_path):
    spark = tmp_path / "spark"
    spark.mkdir()
    pl.DataFrame(ROWS[:5]).write_csv(spark / "part-00000-1f2e.csv")
    (spark / "_SUCCESS").write_text("")
    (spark / ".part-00000-1f2e.csv.crc").write_bytes(b"crc")
    assert [f.rows for f in list_inputs(str(spark))] == [5]  # markers and checksums skipped
    excel = tmp_path / "excel.csv"  # UTF-8 with a byte-order mark and CRLF line ends
    excel.write_bytes(b'\xef\xbb\xbfid,text\r\n1,"two\r\nlines"\r\n')
    (file,) = list_inputs(str(excel))
    assert read_rows(file, 0, 1, ["id", "text"]).to_dicts() == [{"id": "1", "text": "two\r\nlines"}]
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text("id;text\n1;a\n")
    with pytest.raises(InputError, match=r"looks ';'-separated; embedpipe reads comma-separated"):
        read_rows(list_inputs(str(semicolons))[0], 0, 1, ["id", "text"])


def test_other_files_are_refused_or_with_skip_unknown_files_skipped(shards, caplog):
    (shards / "README.md").write_text("about this corpus")
    with pytest.raises(InputError, match=r"README\.md: unsupported extension '\.md'.*skip_unknown"):
        list_inputs(str(shards))
    files = list_inputs(str(shards), skip_unknown=True)
    assert [f.key for f in files] == ["a.parquet", "c.csv", "sub/b.jsonl"]
    assert "README.md: not an input format; skipped" in caplog.text


def test_a_number_as_text_in_a_compressed_jsonl_is_named_by_its_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": 5}\n')
    compress(path, ".zst")
    (file,) = list_inputs(str(tmp_path))
    file = dataclasses.replace(file, text_column="text")
    with pytest.raises(InputError, match=r"mixed\.jsonl\.zst: line 2 \(row 1\): 'text' is a JSON"):
        read_rows(file, 0, 2, ["id", "text"])
