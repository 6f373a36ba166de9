"""Share files (reindex/shares.py) without Ray: an owner hands each later task exactly the
vectors it copies, and a waiter whose owner handed nothing embeds those texts itself."""

from __future__ import annotations

import numpy as np

from pipelines.output.layout import Layout
from pipelines.reindex.embed_or_copy import read_handed
from pipelines.reindex.shares import (
    SHARE,
    Shared,
    read_shared,
    share_file,
    share_path,
    shared_rows,
    waiter_key,
)
from pipelines.storage.tree import Tree
from workers import Embeddings
from workers.text_hash import text_hashes


def layout(dim: int) -> Layout:
    return Layout.of(dim, None, "float32", True)


def rows(values: list[float], dim: int = 3, errors: tuple = ()) -> Embeddings:
    n = len(values)
    vectors = np.repeat(np.array(values, np.float32)[:, None], dim, axis=1)
    return Embeddings(
        vectors, np.arange(n, dtype=np.int32) + 5, np.arange(n) % 2 == 1, errors or (None,) * n
    )


def test_a_waiter_reads_exactly_its_own_slice_of_an_owners_file():
    texts = ["a", "b", "c", "d"]
    keys = np.array([waiter_key("t9"), waiter_key("t2"), waiter_key("t9"), waiter_key("t5")])
    hashes = text_hashes("", texts).hashes
    data = share_file(Shared(keys.astype(np.uint64), hashes, rows([1, 2, 3, 4])))
    reads = []

    def read(offset: int, length: int) -> bytes:
        reads.append(length)
        return data[offset : offset + length]

    found = read_shared(read, waiter_key("t9"))
    assert found is not None and len(reads) == 3
    assert sorted(found["hash"].tolist()) == sorted(text_hashes("", ["a", "c"]).hashes.tolist())
    floats = np.ascontiguousarray(found["vector"]).view("<f4")  # rows stored as their bytes
    by_hash = dict(zip(found["hash"].tolist(), floats[:, 0].tolist(), strict=True))
    assert by_hash[text_hashes("", ["c"]).hashes[0]] == 3.0
    assert found["n_tokens"].tolist() == [5, 7] and found["truncated"].tolist() == [0, 0]
    # the slice read is the records of t9 only: two of the four
    assert reads[-1] == 2 * found.dtype.itemsize
    assert len(read_shared(read, waiter_key("nobody"))) == 0
    assert read_shared(lambda o, n: b"PAR1" + bytes(n)[4:], waiter_key("t9")) is None


def test_an_owner_hands_on_only_the_rows_it_embedded():
    # the task's rows 0..5; rows 1 and 4 were rejects by id, so `live` is the other four
    live = np.array([0, 2, 3, 5])
    digest = text_hashes("", ["w", "x", "y", "z"])
    resolved = rows([10, 20, 30, 40], errors=(None, None, "too long", None))
    table = np.array([(7, 2, 1), (7, 3, 1), (7, 4, 2), (7, 5, 2), (8, 0, 1)], SHARE)
    waiters = np.array([11, 22, 33], np.uint64)
    shared = shared_rows(7, waiters, [table], live, digest, resolved)
    # row 2 (x) to waiter 1; row 3 (y) failed; row 4 is no live row; row 5 (z) to waiter 2
    assert shared.keys.tolist() == [22, 33]
    assert shared.hashes.tolist() == [digest.hashes[1], digest.hashes[3]]
    assert shared.rows.vectors[:, 0].tolist() == [20.0, 40.0]


def test_an_owner_that_handed_nothing_leaves_its_texts_to_the_waiter(tmp_path):
    out = Tree(str(tmp_path))
    texts = ["a", "b"]
    shared = Shared(
        np.full(2, waiter_key("t1"), np.uint64), text_hashes("", texts).hashes, rows([1, 2])
    )
    out.write_bytes(share_path("t0"), share_file(shared))
    out.write_bytes(share_path("t8"), b"not a share file at all, but long enough to read")
    found = read_handed(out, ["t0", "gone", "t8"], waiter_key("t1"), layout(3))
    assert sorted(found.hashes.tolist()) == sorted(text_hashes("", texts).hashes.tolist())
    assert read_handed(out, ["t0"], waiter_key("t1"), layout(5)).hashes.size == 0  # another width
    assert read_handed(out, ["t0"], waiter_key("t2"), layout(3)).hashes.size == 0
