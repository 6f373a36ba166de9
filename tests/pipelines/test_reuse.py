"""use_cache without Ray: which cache files are usable, and who embeds which text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipelines.batch.preflight import check_cache_paths
from pipelines.batch.prepass import (
    CacheDigestRequest,
    cache_digest,
    cache_digest_path,
    cached_file,
    digest_file_path,
)
from pipelines.batch.repeated_ids import MeetRequest, id_digest_file, meet
from pipelines.inputs.planning import Task
from pipelines.inputs.readers import InputError, InputFile
from pipelines.output.digest_files import bucket_parts, groups_of
from pipelines.output.part_files import embeddings_table, write_parquet_atomic
from pipelines.reindex.cache_from import open_cache
from pipelines.reindex.plan import (
    RunLinks,
    TextMeetRequest,
    cache_lookup,
    latest_owners,
    meet_texts,
    text_digest_file,
)
from pipelines.reindex.shares import shares_of
from pipelines.storage.tree import Tree
from workers.text_hash import text_hash, text_hashes

OURS = {
    "model": {"source": "m", "onnx_sha256": "aaa", "dim": 2},
    "options": {"normalize": True, "truncate": True, "truncation_direction": "right"},
    "inputs": [{"key": "this-week.parquet"}],
}


def part_file(path: Path, texts: list[str], fingerprint: dict) -> Path:
    hashes = text_hashes("", texts).hashes
    table = embeddings_table(
        [f"id{i}" for i in range(len(texts))],
        np.arange(2 * len(texts), dtype=np.float32).reshape(-1, 2),
        np.full(len(texts), 3, np.int32),
        np.zeros(len(texts), bool),
        hashes,
        pa.table({}),
        json.dumps(fingerprint),
    )
    write_parquet_atomic(table, path)
    return path


def test_the_text_hash_is_blake2b_128_of_prompt_and_text():
    import hashlib

    assert (
        text_hash("query: ", "héllo")
        == hashlib.blake2b("query: héllo".encode(), digest_size=16).digest()
    )
    digest = text_hashes("", ["a", None, "", 7, "a"])
    hashes, missing = digest.hashes, digest.missing
    assert missing.tolist() == [False, True, True, True, False]
    assert hashes[0] == hashes[4] != hashes[1]
    assert hashes[0] == hashlib.blake2b(b"a", digest_size=16).digest()


def test_only_files_of_the_same_model_and_options_are_indexed(tmp_path):
    last_week = {**OURS, "inputs": [{"key": "last-week.parquet"}]}  # other rows: fine
    other_model = {**OURS, "model": {**OURS["model"], "onnx_sha256": "bbb"}}
    unnormalized = {**OURS, "options": {**OURS["options"], "normalize": False}}
    old = tmp_path / "old"
    part_file(old / "part-a.parquet", ["x", "y"], last_week)
    part_file(old / "lang=en" / "part-b.parquet", ["z"], last_week)
    part_file(old / "part-c.parquet", ["w"], other_model)  # copied in from elsewhere
    part_file(old / "_rejects" / "part-a.parquet", ["v"], last_week)  # not a part file
    part_file(tmp_path / "raw" / "part-d.parquet", ["u"], unnormalized)

    files, sources = open_cache(
        [str(old), str(tmp_path / "raw" / "*.parquet"), str(tmp_path / "nowhere")],
        OURS,
    )
    assert [(s.files, s.rows) for s in sources] == [(2, 3), (0, 0), (0, 0)]
    assert "onnx_sha256" in sources[0].skipped[str(old / "part-c.parquet")]
    assert (
        "options.normalize: false there, true in this run"
        in sources[1].skipped[str(tmp_path / "raw" / "part-d.parquet")]
    )
    assert sources[2].skipped == {str(tmp_path / "nowhere"): "no part files there"}
    cached, locations = digest_cache_here(tmp_path, files)
    hashes = text_hashes("", ["y", "w", "z", "nope"]).hashes
    found = cache_lookup(Tree(str(tmp_path / "out")), bucket_parts(0, 1, cached), hashes)
    assert [locations[f] if f >= 0 else None for f in found] == [
        str(old / "part-a.parquet"),
        None,
        str(old / "lang=en" / "part-b.parquet"),
        None,
    ]


def test_a_whole_output_of_other_options_is_refused_by_its_fingerprint_file(tmp_path):
    other = {**OURS, "options": {**OURS["options"], "truncation_direction": "left"}}
    part_file(tmp_path / "old" / "part-a.parquet", ["x"], OURS)  # its files would pass...
    (tmp_path / "old" / "_embedpipe.json").write_text(json.dumps(other))  # ...its output not
    files, sources = open_cache([str(tmp_path / "old")], OURS)
    assert files == ()
    assert "truncation_direction" in sources[0].skipped[str(tmp_path / "old")]


def test_the_output_itself_is_no_cache(tmp_path):
    with pytest.raises(InputError, match="inside this run's output"):
        check_cache_paths([str(tmp_path / "out" / "part-*.parquet")], tmp_path / "out")


def tasks_of(*names: str) -> list[Task]:
    return [Task(n, InputFile(n, n, "parquet", 1, 1), 0, 1) for n in names]


def digest_cache_here(tmp_path, files):
    """What prepass.digest_cache does, with the actors' function called here: each cache
    file's digest file under the output, its path and summary, and the files' locations."""
    out = str(tmp_path / "out")
    made = [cache_digest(None, CacheDigestRequest(f, out))[1] for f in files]
    assert not any(isinstance(m, str) for m in made), made
    summaries = [(cache_digest_path(f), m) for f, m in zip(files, made, strict=True)]
    return summaries, tuple(f.location for f in files)


def plan(tmp_path, order, texts, ids, cache=(), buckets=1, done=None):
    """What each task learns of its sources on its actor (reindex/plan.py's RunLinks), from
    what the driver plans (batch/prepass.py) with the actors' functions called here: digest
    files, then the id meets, then the text meets, for `buckets` buckets each. `done`: by
    position, the part files of tasks done before the run."""
    found = text_meets(tmp_path, order, texts, ids, cache, buckets)
    _, locations = digest_cache_here(tmp_path, cache)
    names = [t.task_id for t in order]
    links = RunLinks(
        np.zeros(len(names), np.uint64),
        np.array([n.encode() for n in names]),
        done or {},
        locations,
        tuple(f[4] for f in found),
        tuple(f[2] for f in found),
        tuple(f[3] for f in found),
    )
    return {n: links.sources(i) for i, n in enumerate(names)}


def text_meets(tmp_path, order, texts, ids, cache, buckets):
    """Every bucket's answer from meet_texts: (count, latest owners, cache links, owner links,
    SHARE table)."""
    cached, _ = digest_cache_here(tmp_path, cache)
    out = Tree(str(tmp_path / "out"))
    id_files, text_files = [], []
    for t in order:
        id_path, text_path = digest_file_path("ids", t), digest_file_path("texts", t)
        got_ids, got_texts = ids[t.task_id], texts[t.task_id]
        id_files.append((id_path, cached_file(out, id_path, lambda v=got_ids: id_digest_file(v))))
        make = lambda v=got_texts, i=got_ids: text_digest_file("", v, i)  # noqa: E731
        text_files.append((text_path, cached_file(out, text_path, make)))
    origins = np.array([[i, 0] for i in range(len(order))], dtype=np.int64)
    tables = [
        meet(None, MeetRequest(str(out.root), bucket_parts(b, buckets, id_files), origins))[1]
        for b in range(buckets)
    ]
    found = []
    for b in range(buckets):
        parts = bucket_parts(b, buckets, text_files)
        ask = TextMeetRequest(str(out.root), parts, bucket_parts(b, buckets, cached))
        found.append(meet_texts(None, ask, *tables))
    return found


@pytest.mark.parametrize("buckets", [1, 4])
def test_the_first_task_with_a_text_embeds_it_and_later_ones_wait_for_it(tmp_path, buckets):
    order = tasks_of("t0", "t1", "t2")
    texts = {"t0": ["a", "b"], "t1": ["b", "c", "c"], "t2": ["c", "a", "d"]}
    ids = {t: [f"{t}-{i}" for i in range(len(v))] for t, v in texts.items()}
    found = plan(tmp_path, order, texts, ids, (), buckets)
    assert found["t0"].share_owners == ()
    assert found["t1"].share_owners == ("t0",)  # b; c repeats inside t1, which embeds it once
    assert found["t2"].share_owners == ("t0", "t1")  # a from t0, c from t1
    latest = latest_owners(3, [f[1] for f in text_meets(tmp_path, order, texts, ids, (), buckets)])
    assert latest.tolist() == [-1, 0, 1]  # what the driver holds: t2 starts once t1 is settled


def test_an_owner_done_before_this_run_hands_on_its_part_files(tmp_path):
    order = tasks_of("t0", "t1", "t2")
    texts = {"t0": ["a"], "t1": ["b"], "t2": ["a", "b"]}
    ids = {t: [f"{t}-{i}" for i in range(len(v))] for t, v in texts.items()}
    found = plan(tmp_path, order, texts, ids, done={0: ("out/part-t0.parquet",)})
    assert found["t2"].run_files == ("out/part-t0.parquet",)
    assert found["t2"].share_owners == ("t1",)  # t1 runs now: it writes a share file


@pytest.mark.parametrize("buckets", [1, 4])
def test_each_owner_learns_which_of_its_rows_each_later_task_copies(tmp_path, buckets):
    order = tasks_of("t0", "t1", "t2")
    texts = {"t0": ["a", "b"], "t1": ["b", "c", "c"], "t2": ["c", "a", "d", "b"]}
    ids = {t: [f"{t}-{i}" for i in range(len(v))] for t, v in texts.items()}
    found = text_meets(tmp_path, order, texts, ids, (), buckets)
    tables = tuple(table for *_, table in found)
    t0, t1, t2 = (shares_of(p, tables).tolist() for p in range(3))
    # (owner, row in the owner's task, waiter): a to t2, b to t1 and t2; c (t1's row 1) to t2
    assert sorted(t0) == [(0, 0, 2), (0, 1, 1), (0, 1, 2)]
    assert t1 == [(1, 1, 2)]
    assert t2 == []


@pytest.mark.parametrize("buckets", [1, 4])
def test_a_cached_text_is_copied_and_an_unusable_row_owns_nothing(tmp_path, buckets):
    cached = part_file(tmp_path / "old" / "part-x.parquet", ["a"], OURS)
    files, _ = open_cache([str(cached.parent)], OURS)
    order = tasks_of("t0", "t1")
    texts = {"t0": ["a", "b", None, "c"], "t1": ["a", "b", "c"]}
    # b's row in t0 has a repeated id and c's a null one: both are rejected, so t1 must embed
    # b and c itself
    ids = {"t0": ["x", "x", "y", None], "t1": ["p", "q", "r"]}
    found = plan(tmp_path, order, texts, ids, files, buckets)
    assert found["t0"].cache_files == found["t1"].cache_files == (str(cached),)
    assert found["t1"].share_owners == ()


def test_each_bucket_reads_only_its_slice_of_a_cache_files_digests(tmp_path):
    texts = [f"text {n}" for n in range(300)]
    cached = part_file(tmp_path / "old" / "part-x.parquet", texts, OURS)
    files, _ = open_cache([str(cached.parent)], OURS)
    summaries, _ = digest_cache_here(tmp_path, files)
    out, hashes = Tree(str(tmp_path / "out")), text_hashes("", texts).hashes
    found = []
    for b in range(8):
        first, stop = groups_of(b, 8)
        hit = cache_lookup(out, bucket_parts(b, 8, summaries), hashes) >= 0
        assert hit.any() and all(first <= h[0] < stop for h in hashes[hit].tolist())
        found.append(hit)
    assert (np.sum(found, axis=0) == 1).all()  # every text in exactly one bucket
