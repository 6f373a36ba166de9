"""Repeated ids across tasks, found from id digests alone."""

import numpy as np

from pipelines.batch.prepass import task_ids
from pipelines.batch.repeated_ids import digest_ids, find_repeats
from pipelines.inputs.planning import Task
from pipelines.inputs.readers import InputFile
from pipelines.storage.tree import Tree


def task(key, start, stop):
    return Task(f"{key}-{start}", InputFile(key, key, "csv", 100, 1), start, stop)


def test_later_occurrences_are_repeats_of_the_first_across_files():
    tasks = [task("a.csv", 0, 3), task("a.csv", 3, 5), task("b.csv", 0, 3)]
    ids = {
        "a.csv-0": ["x", "y", "x"],
        "a.csv-3": ["z", "y"],
        "b.csv-0": [None, "z", "w"],
    }
    digests = {t.task_id: digest_ids(ids[t.task_id]) for t in tasks}
    assert find_repeats(tasks, digests) == {
        "a.csv-0": {2: "repeats row 0 of a.csv"},
        "a.csv-3": {1: "repeats row 1 of a.csv"},
        "b.csv-0": {1: "repeats row 3 of a.csv"},
    }


def test_the_given_order_decides_which_occurrence_is_first():
    tasks = [task("a.csv", 0, 1), task("b.csv", 0, 1)]
    digests = {"a.csv-0": digest_ids(["x"]), "b.csv-0": digest_ids(["x"])}
    assert find_repeats(tasks[::-1], digests) == {"a.csv-0": {0: "repeats row 0 of b.csv"}}


def test_null_ids_are_never_repeats_and_digests_are_stable():
    found = digest_ids([None, "a", None])
    assert found.null.tolist() == [True, False, True]
    assert np.array_equal(found.digests, digest_ids([None, "a", None]).digests)
    assert find_repeats([task("a.csv", 0, 3)], {"a.csv-0": found}) == {}


def test_a_rerun_reuses_its_id_digests_unless_the_shard_changed_size(tmp_path):
    out = Tree(str(tmp_path / "out"))

    def read(ids):
        def reader():
            calls.append(ids)
            return ids

        return reader

    calls: list[list[str]] = []
    shard = InputFile("a.csv", "a.csv", "csv", 2, 10)
    task_ids(Task("a-0", shard, 0, 2), out, read(["a", "b"]))
    again = task_ids(Task("a-0", shard, 0, 2), out, read(["a", "b"]))
    assert calls == [["a", "b"]], "a rerun read the ids again"
    assert np.array_equal(again.digests, digest_ids(["a", "b"]).digests)
    edited = InputFile("a.csv", "a.csv", "csv", 2, 12)
    found = task_ids(Task("a-0", edited, 0, 2), out, read(["a", "a"]))
    assert calls[-1] == ["a", "a"], "the edited shard's stale digests were used"
    assert np.array_equal(found.digests, digest_ids(["a", "a"]).digests)


def test_an_id_with_a_lone_surrogate_is_digested_like_any_other():
    # a JSON "\ud800" escape reads as a lone surrogate; plain UTF-8 encoding would raise and fail
    # the task, where the same value as a text hashes (workers/text_hash.py)
    found = digest_ids(["a\ud800", "a\ud800", "b"])
    assert (found.digests[0] == found.digests[1]).all()
    assert not (found.digests[0] == found.digests[2]).all()
