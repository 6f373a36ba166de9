"""Inside a task: copy the vectors other part files already hold, embed each other text once.

The driver names the files (reindex/plan.py), and the earlier tasks of this run that hand this
one vectors (shares.py); here they are looked up by text hash. A row whose text
is in none of them (its file was removed since, or the task that held it failed) is embedded:
a missing copy costs time, never a row. Copied rows keep the `n_tokens` and `truncated` the
file recorded, which the same text and options give again. Rows are in the output's layout
(output/layout.py): embedded ones are encoded once, copied ones taken as stored.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipelines.output.layout import Layout
from pipelines.output.part_files import hashes_of
from pipelines.reindex.shares import read_shared, share_path
from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers import Embeddings, EmbedOptions
from workers.embeddings import TextModel
from workers.text_hash import HASH_DTYPE, TextDigest, locate

log = logging.getLogger(__name__)

COPIED = ["embedding", "n_tokens", "truncated"]


@dataclass(frozen=True)
class Known:
    """Vectors found for some digests: sorted unique hashes, and their rows."""

    hashes: np.ndarray
    rows: Embeddings

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """Per wanted digest, its row here or -1."""
        return locate(self.hashes, wanted)


@dataclass(frozen=True)
class Resolved:
    """A task's rows, each embedded, copied or rejected, and where their vectors came from."""

    rows: Embeddings
    embedded: int  # texts the model computed
    tokens: int  # the tokens of those texts
    from_cache: int  # rows copied from cache_from
    deduplicated: int  # rows whose text another row of this run had embedded


def read_known(
    files: Sequence[str],
    wanted: np.ndarray,
    layout: Layout,
    storage: StorageSettings | None = None,
) -> Known:
    """The rows (in `layout`) of the wanted digests that the files (local or object-store
    locations) hold."""
    storage = storage or StorageSettings()
    parts = []
    for name in files:
        try:
            found = _read_matching(name, wanted, layout, storage)
        except (OSError, ValueError) as err:  # gone or damaged since the driver planned
            log.warning("not copying from %s (%s): its rows are embedded instead", name, err)
            continue
        if found is not None:
            parts.append(found)
    return known_of(parts, layout)


def read_handed(out: Tree, owners: Sequence[str], key: int, layout: Layout) -> Known:
    """What the owners' share files (shares.py) hold for the waiter `key`. An owner whose file
    is gone, damaged or of another layout hands nothing: its texts are embedded here."""
    parts = []
    for owner in owners:
        where = share_path(owner)
        try:
            records = read_shared(functools.partial(out.read_range, where), key)
        except (OSError, ValueError) as err:  # still running, failed, or wrote nothing to share
            log.debug("nothing handed on by %s (%s): those texts are embedded here", owner, err)
            continue
        row_bytes = layout.width * layout.dtype.itemsize
        if records is None or records["vector"].shape[1:] != (row_bytes,):
            log.warning("%s is not a share file of this run: not copying from it", where)
            continue
        parts.append((records["hash"], as_embeddings(records, layout)))
    return known_of(parts, layout)


def as_embeddings(records: np.ndarray, layout: Layout) -> Embeddings:
    n = len(records)
    return Embeddings(
        np.ascontiguousarray(records["vector"]).view(layout.dtype).reshape(n, layout.width),
        records["n_tokens"].astype(np.int32),
        records["truncated"].astype(bool),
        (None,) * n,
    )


def known_of(parts: Sequence[tuple[np.ndarray, Embeddings]], layout: Layout) -> Known:
    """One Known from several sources; where two hold a digest, the first one's row."""
    empty = (np.zeros(0, HASH_DTYPE), Embeddings(layout.empty(), *_none()))
    parts = [empty, *parts]
    hashes = np.concatenate([h for h, _ in parts])
    _, first = np.unique(hashes, return_index=True)
    return Known(hashes[first], _concat([rows for _, rows in parts]).take(first))


def _read_matching(
    name: str, wanted: np.ndarray, layout: Layout, storage: StorageSettings
) -> tuple[np.ndarray, Embeddings] | None:
    # the hashes first: a file holding none of the wanted texts costs no vector read
    hashes = hashes_of(stores.read_parquet(name, storage, ["text_hash"]).column("text_hash"))
    rows = np.flatnonzero(np.isin(hashes, wanted))
    if len(rows) == 0:
        return None
    table = stores.read_parquet(name, storage, COPIED).take(rows)
    embedding = table.column("embedding").combine_chunks()
    if embedding.type != layout.arrow_type():
        raise ValueError(f"its embedding column is {embedding.type}, not {layout.describe()}")
    vectors = embedding.flatten().to_numpy(zero_copy_only=False)
    return hashes[rows], Embeddings(
        vectors.reshape(-1, layout.width),
        table.column("n_tokens").to_numpy().astype(np.int32),
        table.column("truncated").to_numpy(zero_copy_only=False).astype(bool),
        (None,) * len(rows),
    )


def _none() -> tuple[np.ndarray, np.ndarray, tuple[str | None, ...]]:
    return np.zeros(0, np.int32), np.zeros(0, bool), ()


def _concat(parts: Sequence[Embeddings]) -> Embeddings:
    return Embeddings(
        np.concatenate([p.vectors for p in parts]),
        np.concatenate([p.n_tokens for p in parts]),
        np.concatenate([p.truncated for p in parts]),
        tuple(e for p in parts for e in p.errors),
        sum(p.device_s for p in parts),
    )


def embed_all(
    embedder: TextModel, texts: Sequence[object], options: EmbedOptions, layout: Layout
) -> Resolved:
    """Every row through the model (use_cache off, like the API's x-use-cache: false)."""
    result = encoded(embedder.embed(texts, options), layout)
    ok = result.ok
    return Resolved(result, int(ok.sum()), int(result.n_tokens[ok].sum()), 0, 0)


def embed_or_copy(
    embedder: TextModel,
    texts: Sequence[object],
    digest: TextDigest,
    options: EmbedOptions,
    cache: Known,
    run: Known,
    layout: Layout,
) -> Resolved:
    """Rows from the cache, then from this run's other part files, the rest embedded once per
    distinct text (a text that cannot be hashed is embedded on its own, to get its reason)."""
    hashes, hashable = digest.hashes, ~digest.missing
    from_cache = np.where(hashable, cache.find(hashes), -1)
    from_run = np.where(hashable & (from_cache < 0), run.find(hashes), -1)
    rest = np.flatnonzero((from_cache < 0) & (from_run < 0))
    # one row per distinct text among the rest; unhashable rows each stand alone
    distinct = hashable[rest]
    _, first, inverse = np.unique(hashes[rest][distinct], return_index=True, return_inverse=True)
    target = np.arange(len(rest))
    target[distinct] = np.flatnonzero(distinct)[first[inverse.reshape(-1)]]
    heads = np.unique(target)
    result = encoded(embedder.embed([texts[rest[h]] for h in heads], options), layout)

    # each row takes its row from one pool: the cache's rows, then the run's, then the model's
    n_cache, n_run = len(cache.hashes), len(run.hashes)
    pick = np.zeros(len(texts), dtype=np.int64)
    pick[from_cache >= 0] = from_cache[from_cache >= 0]
    pick[from_run >= 0] = n_cache + from_run[from_run >= 0]
    pick[rest] = n_cache + n_run + np.searchsorted(heads, target)
    rows = _concat([cache.rows, run.rows, result]).take(pick)

    ok = result.ok
    embedded = int(ok.sum())
    written_rest = int(rows.ok[rest].sum())
    return Resolved(
        replace(rows, device_s=result.device_s, oom_splits=result.oom_splits),
        embedded=embedded,
        tokens=int(result.n_tokens[ok].sum()),
        from_cache=int((from_cache >= 0).sum()),
        deduplicated=int((from_run >= 0).sum()) + written_rest - embedded,
    )


def encoded(result: Embeddings, layout: Layout) -> Embeddings:
    """The model's rows in the output's layout (the default layout keeps them as they are)."""
    return result if layout.is_default else replace(result, vectors=layout.encode(result.vectors))
