"""Listing shards, counting rows and reading row ranges in the three input formats."""

import json

import polars as pl
import pytest

from pipelines.inputs.planning import plan_tasks, task_id
from pipelines.inputs.readers import InputError, list_inputs, read_rows

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
        ("sub/b.jsonl", "jsonl", 8),
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
    files = list_inputs(str(shards))
    tasks = plan_tasks(files, rows_per_task=4)
    covered = [(t.file.key, r) for t in tasks for r in range(t.start, t.stop)]
    assert len(covered) == len(set(covered)) == 25
    assert max(t.rows for t in tasks) == 4
    assert [t.task_id for t in plan_tasks(list_inputs(str(shards)), 4)] == [
        t.task_id for t in tasks
    ]
    assert len({t.task_id for t in tasks}) == len(tasks)


def test_task_ids_keep_similar_names_apart():
    assert task_id("a b.csv", 0, 10) != task_id("a_b.csv", 0, 10)
    assert task_id("a.csv", 0, 10).startswith("a_csv-")
