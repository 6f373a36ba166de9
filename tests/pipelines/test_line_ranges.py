"""JSON Lines split by byte ranges (inputs/line_ranges.py): however a file is cut, every row is
read once, in order, numbered as one read of the whole file numbers it, and a range reads about
its own bytes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest

from pipelines.inputs import line_ranges
from pipelines.inputs.line_ranges import byte_ranges, read_line_range
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.planning import number_rows, plan_tasks, read_task, require_columns
from pipelines.inputs.readers import InputError


def lines_file(tmp_path, texts: list[str], ending: bytes = b"\n", last: bool = True):
    rows = [json.dumps({"id": f"r{i}", "text": t}).encode() for i, t in enumerate(texts)]
    data = ending.join(rows) + (ending if last else b"")
    path = tmp_path / "docs.jsonl"
    path.write_bytes(data)
    (file,) = require_columns(list_inputs(str(path)), {"id": "input.id_column"}, "text")
    return file, data


@pytest.mark.parametrize("step", [1, 7, 64, 300, 10_000])
@pytest.mark.parametrize(("ending", "last"), [(b"\n", True), (b"\r\n", True), (b"\n", False)])
def test_any_cut_reads_every_row_once_in_order(tmp_path, step, ending, last):
    rng = np.random.default_rng(step)
    texts = ["x" * int(n) for n in rng.integers(1, 400, 40)] + ["caf\u00e9 \u2603", ""]
    file, data = lines_file(tmp_path, texts, ending, last)
    whole = pl.read_ndjson(data)
    parts = [read_line_range(file, a, b, ["id", "text"]) for a, b in byte_ranges(len(data), step)]
    assert pl.concat(parts).equals(whole.select("id", "text"))


def test_blank_lines_are_no_rows_and_lines_are_numbered_from_the_files_start(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(
        '{"id": "a", "text": "one"}\n\n   \n{"id": "b", "text": 5}\n{"id": "c", "text": "two"}\n'
    )
    (file,) = require_columns(list_inputs(str(path)), {"id": "input.id_column"}, "text")
    with pytest.raises(InputError, match=r"gaps\.jsonl: line 4 \(row 1\): 'text' is a JSON number"):
        read_line_range(file, 0, file.size, ["id", "text"])
    # a range that does not start the file names the line by its byte offset
    with pytest.raises(InputError, match=r"gaps\.jsonl: the line at byte 32: 'text' is a JSON"):
        read_line_range(file, 10, file.size, ["id", "text"])


def test_bad_utf8_past_the_first_range_is_named_by_its_byte(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = b'{"id": "a", "text": "fine"}\n'
    path.write_bytes(good * 150 + b'{"id": "b", "text": "caf\xe9"}\n')  # past the sample
    (file,) = require_columns(list_inputs(str(path)), {"id": "input.id_column"}, "text")
    assert read_line_range(file, 0, 10, ["id"])["id"].to_list() == ["a"]
    with pytest.raises(InputError, match=r"the line at byte 4200 \(byte 4224\) is not valid"):
        read_line_range(file, 4000, file.size, ["id", "text"])


def test_a_range_reads_its_own_bytes_not_the_file_before_it(tmp_path, monkeypatch):
    file, data = lines_file(tmp_path, [f"text {i}" for i in range(2000)])
    read = []
    real = line_ranges.stores.read_range

    def counting(location, offset, length, storage):
        read.append(length)
        return real(location, offset, length, storage)

    monkeypatch.setattr(line_ranges.stores, "read_range", counting)
    first, stop = len(data) - 4096, len(data) - 2048
    frame = read_line_range(file, first, stop, ["id"])
    assert 2048 / 40 < frame.height < 2048 / 30  # lines of ~36 bytes
    assert sum(read) < 2048 + line_ranges.TAIL_BYTES + 1


def test_rows_are_numbered_across_ranges_and_stop_after_one_that_failed(tmp_path):
    file, _ = lines_file(tmp_path, [f"text {i}" for i in range(100)])
    tasks = plan_tasks([file], rows_per_task=30)
    assert len(tasks) == 4 and all(t.span is not None for t in tasks)
    counts = {t.task_id: read_task(t, ["id"]).height for t in tasks}
    numbered, unknown = number_rows(tasks, counts)
    assert numbered[0].start == 0 and numbered[-1].stop == 100
    assert all(a.stop == b.start for a, b in itertools.pairwise(numbered))
    # the second range could not be read: the ones after it cannot be numbered
    del counts[tasks[1].task_id]
    numbered, unknown = number_rows(tasks, counts)
    assert set(unknown) == {tasks[2].task_id, tasks[3].task_id}
    assert "come after a part of the file that could not be read" in str(unknown[tasks[2].task_id])
    assert (numbered[0].start, numbered[0].stop) == (0, counts[tasks[0].task_id])


def test_a_column_without_a_value_in_a_range_keeps_the_files_type(tmp_path):
    path = tmp_path / "typed.jsonl"
    rows = [{"id": f"r{i}", "text": "t", "score": i if i < 50 else None} for i in range(100)]
    for row in rows[50:]:
        del row["score"]  # absent, not null, in the second half
    lines = [json.dumps(r) + "\n" for r in rows]
    path.write_text("".join(lines))
    (file,) = require_columns(list_inputs(str(path)), {"id": "input.id_column"}, "text")
    columns, cut = ["id", "score", "never"], sum(len(line) for line in lines[:50])
    first, second = (read_line_range(file, a, b, columns) for a, b in [(0, cut), (cut, file.size)])
    # a part file typed null would stop pl.read_parquet over the whole output
    expected = {"id": pl.String, "score": pl.Int64, "never": pl.String}
    assert first.schema == second.schema == expected
    assert second["score"].null_count() == second.height == 50
