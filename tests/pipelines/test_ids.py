"""Repeated ids across tasks, found where their digests meet, bucket by bucket (no Ray here:
the actors' functions are called directly)."""

import random

import numpy as np
import pytest

from pipelines.batch.prepass import cached_file, digest_file_path
from pipelines.batch.repeated_ids import MeetRequest, id_digest_file, meet, repeats_of
from pipelines.inputs.planning import Task
from pipelines.inputs.readers import InputFile
from pipelines.output.digest_files import absent_rows, bucket_parts, buckets_for, summary_of
from pipelines.storage.tree import Tree

KEYS = ["a.csv", "b.csv", "c.csv"]


def task(key, start, stop):
    return Task(f"{key}-{start}", InputFile(key, key, "csv", 100, 1), start, stop)


def find(tmp_path, tasks, ids, buckets=1):
    """task id -> {row: reason}, for the tasks with repeats, through digest files and meets."""
    out = Tree(str(tmp_path / "out"))
    summaries = [(digest_file_path("ids", t), id_summary(t, out, ids[t.task_id])) for t in tasks]
    origins = np.array([[KEYS.index(t.file.key), t.start] for t in tasks], dtype=np.int64)
    tables = []
    for bucket in range(buckets):
        ask = MeetRequest(str(tmp_path / "out"), bucket_parts(bucket, buckets, summaries), origins)
        count, table = meet(None, ask)
        assert count == len(table)
        tables.append(table)
    found = {t.task_id: repeats_of(i, tuple(tables), KEYS) for i, t in enumerate(tasks)}
    return {k: v for k, v in found.items() if v}


def id_summary(task, out, ids):
    return cached_file(out, digest_file_path("ids", task), lambda: id_digest_file(ids))


def reference(tasks, ids):
    """The rule, spelled out: every occurrence of an id after its first, in the given order."""
    first: dict[str, str] = {}
    found: dict[str, dict[int, str]] = {}
    for t in tasks:
        for row, value in enumerate(ids[t.task_id]):
            if value is None:
                continue
            if value in first:
                found.setdefault(t.task_id, {})[row] = f"repeats {first[value]}"
            else:
                first[value] = f"row {t.start + row} of {t.file.key}"
    return found


def test_later_occurrences_are_repeats_of_the_first_across_files(tmp_path):
    tasks = [task("a.csv", 0, 3), task("a.csv", 3, 5), task("b.csv", 0, 3)]
    ids = {
        "a.csv-0": ["x", "y", "x"],
        "a.csv-3": ["z", "y"],
        "b.csv-0": [None, "z", "w"],
    }
    assert find(tmp_path, tasks, ids) == {
        "a.csv-0": {2: "repeats row 0 of a.csv"},
        "a.csv-3": {1: "repeats row 1 of a.csv"},
        "b.csv-0": {1: "repeats row 3 of a.csv"},
    }


def test_the_given_order_decides_which_occurrence_is_first(tmp_path):
    tasks = [task("a.csv", 0, 1), task("b.csv", 0, 1)]
    ids = {"a.csv-0": ["x"], "b.csv-0": ["x"]}
    assert find(tmp_path, tasks[::-1], ids) == {"a.csv-0": {0: "repeats row 0 of b.csv"}}


@pytest.mark.parametrize("buckets", [2, 8, 256])
def test_any_number_of_buckets_finds_what_the_rule_says(tmp_path, buckets):
    rng = random.Random(buckets)
    tasks = [task(key, start, start + 40) for key in KEYS for start in range(0, 200, 40)]
    rng.shuffle(tasks)  # done tasks first, then plan order: any order is a run order
    pool = [f"id-{n}" for n in range(400)] + [None]
    ids = {t.task_id: [rng.choice(pool) for _ in range(40)] for t in tasks}
    expected = reference(tasks, ids)
    assert sum(len(v) for v in expected.values()) > 100, "too few repeats to prove anything"
    assert find(tmp_path / "one", tasks, ids) == expected
    assert find(tmp_path / "many", tasks, ids, buckets) == expected


def test_null_ids_are_never_repeats_and_are_kept_in_the_digest_file(tmp_path):
    data = id_digest_file([None, "a", None])
    assert (summary_of(data).rows, absent_rows(data).tolist()) == (3, [0, 2])
    assert find(tmp_path, [task("a.csv", 0, 3)], {"a.csv-0": [None, "a", None]}) == {}


def test_the_digest_file_groups_digests_by_their_first_byte():
    data = id_digest_file([f"id-{n}" for n in range(1000)])
    summary = summary_of(data)
    assert summary.at[0] == 0 and summary.at[-1] == 1000
    assert (np.diff(summary.at) >= 0).all() and (np.diff(summary.at) > 0).sum() > 200
    assert id_digest_file(["x", "y"]) == id_digest_file(["x", "y"]), "digest files are unstable"


def test_buckets_follow_the_rows_and_the_actors():
    assert buckets_for(1000, 1) == 1
    assert buckets_for(1000, 3) == 4  # one meet per actor at least, a power of two
    assert buckets_for(30_000_000, 2) == 8
    assert buckets_for(10**12, 8) == 256


def test_a_rerun_reuses_its_id_digests_unless_the_shard_changed_size(tmp_path):
    out = Tree(str(tmp_path / "out"))
    calls: list[list[str]] = []

    def summary(file, ids):
        def make():
            calls.append(ids)
            return id_digest_file(ids)

        return cached_file(out, digest_file_path("ids", Task("a-0", file, 0, 2)), make)

    shard = InputFile("a.csv", "a.csv", "csv", 2, 10)
    first = summary(shard, ["a", "b"])
    again = summary(shard, ["a", "b"])
    assert calls == [["a", "b"]], "a rerun read the ids again"
    assert np.array_equal(again.at, first.at) and again.rows == 2
    summary(InputFile("a.csv", "a.csv", "csv", 2, 12), ["a", "a"])
    assert calls[-1] == ["a", "a"], "the edited shard's stale digests were used"


def test_an_id_with_a_lone_surrogate_is_digested_like_any_other(tmp_path):
    # a JSON "\ud800" escape reads as a lone surrogate; plain UTF-8 encoding would raise and fail
    # the task, where the same value as a text hashes (workers/text_hash.py)
    ids = {"a.csv-0": ["a\ud800", "a\ud800", "b"]}
    assert find(tmp_path, [task("a.csv", 0, 3)], ids) == {"a.csv-0": {1: "repeats row 0 of a.csv"}}
