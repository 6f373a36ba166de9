"""Earlier outputs (`run.cache_from`) as a source of vectors: which part files may be reused, and
their text hashes as digest files.

A part file is reused only when its own fingerprint (in its Parquet metadata, so a file copied
out of its output still says what made it) names the same model and the same embedding options
as this run: the text hash covers the text, the fingerprint the rest of what decides a vector.
Everything else is left out with its reason, logged and put in the report; an unusable or
missing cache never fails a run, since the run's result is the same without it, only slower.

The driver reads each file's footer only. The actors turn each file's `text_hash` column into a
digest file under the output's `_state/cache/` (batch/prepass.py), which the text meets read a
bucket at a time like the tasks' own (reindex/plan.py): no cached row is held in the driver.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.inputs.listing import is_skipped, is_skipped_key
from pipelines.output.digest_files import digest_file
from pipelines.output.fingerprint import FINGERPRINT_FILE, FINGERPRINT_KEY, diff
from pipelines.output.part_files import hashes_of
from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings

log = logging.getLogger(__name__)

# What must match for a vector to be reused; the rest of a fingerprint (input listing, columns,
# partitioning) changes which rows there are, not what a text's vector is. `vectors` is the
# output's dimensions and precision: only outputs of the same layout are reused (a row is
# copied as stored, never converted). `chunking` under pool: mean, whose vectors are means of
# chunks; a chunk row's vector is its text's, as any other row's (pool: none decides nothing).
DECIDES_VECTORS = ("model", "options", "vectors", "chunking")


@dataclass(frozen=True)
class CacheSource:
    """One `cache_from` entry as the report shows it."""

    path: str
    files: int = 0
    rows: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # file or path -> why it is not used

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "files": self.files, "rows": self.rows, "skipped": self.skipped}


@dataclass(frozen=True)
class CacheFile:
    """A reusable part file: where it is and what identifies its bytes (for its digest file)."""

    location: str
    size: int
    version: str


def open_cache(
    paths: list[str], fingerprint: dict[str, Any], storage: StorageSettings | None = None
) -> tuple[tuple[CacheFile, ...], list[CacheSource]]:
    """Every reusable part file under `paths` (local or object-store locations), judged by its
    footer alone, and what each path gave."""
    storage = storage or StorageSettings()
    files: list[CacheFile] = []
    sources = []
    for path in paths:
        source, found = _scan(path, fingerprint, storage)
        sources.append(source)
        files += found
    for source in sources:
        for where, why in source.skipped.items():
            log.warning("cache_from: not using %s: %s", where, why)
        log.info("cache_from %s: %d file(s), %d row(s)", source.path, source.files, source.rows)
    return tuple(files), sources


def cache_digest_file(location: str, storage: StorageSettings) -> bytes:
    """A cache file's text hashes as a digest file (output/digest_files.py), row by row: what
    the text meets read a bucket at a time. Made on an actor, never in the driver."""
    hashes = hashes_of(stores.read_parquet(location, storage, ["text_hash"]).column("text_hash"))
    return digest_file(hashes.tobytes(), np.arange(len(hashes), dtype=np.uint32), len(hashes))


def _scan(
    path: str, fingerprint: dict[str, Any], storage: StorageSettings
) -> tuple[CacheSource, list[CacheFile]]:
    skipped: dict[str, str] = {}
    try:
        stored = _stored_fingerprint(path, storage)
        candidates = _part_files(path, storage)
    except stores.StorageError as err:
        return CacheSource(path, skipped={path: str(err)}), []
    if stored is not None and (why := _mismatch(stored, fingerprint)):
        return CacheSource(path, skipped={path: why}), []
    if not candidates:
        return CacheSource(path, skipped={path: "no part files there"}), []
    found: list[CacheFile] = []
    rows = 0
    for name in candidates:
        try:
            why, meta = _read(name, fingerprint, storage)
            entry = stores.stat(name, storage)
        except (OSError, ValueError) as err:  # unreadable, or not Parquet
            why, meta, entry = f"cannot be read: {err}", None, None
        if meta is None or entry is None:
            skipped[name] = str(why or "gone since it was listed")
        else:
            found.append(CacheFile(name, entry.size, entry.version))
            rows += meta.num_rows
    return CacheSource(path, files=len(found), rows=rows, skipped=skipped), found


def _stored_fingerprint(path: str, storage: StorageSettings) -> dict[str, Any] | None:
    """The fingerprint an output directory keeps at its root, or None (a file or a glob)."""
    stored = stores.join(path, FINGERPRINT_FILE)
    if stores.is_remote(path):
        if stores.stat(stored, storage) is None:
            return None
        return dict(json.loads(stores.read_bytes(stored, storage)))
    file = Path(stored)
    return dict(json.loads(file.read_text())) if file.is_file() else None


def _part_files(path: str, storage: StorageSettings) -> list[str]:
    """Part files under an output directory (not its rejects, state or temporaries), or the
    files a path or glob names."""
    if stores.is_remote(path):
        if any(c in path for c in stores.GLOB_CHARS):
            return [e.uri for e in stores.glob(path, storage)]
        if stores.stat(path, storage) is not None:
            return [path]
        prefix = path.rstrip("/")
        found = stores.list_files(prefix + "/", storage)
        keys = [(e.uri, stores.relative(e.uri, prefix)) for e in found]
        return [uri for uri, key in keys if key.endswith(".parquet") and not is_skipped_key(key)]
    root = Path(path)
    if root.is_dir():
        return sorted(str(p) for p in root.rglob("*.parquet") if not is_skipped(p, root))
    return sorted(p for p in glob.glob(path, recursive=True) if Path(p).is_file())


def _read(
    name: str, fingerprint: dict[str, Any], storage: StorageSettings
) -> tuple[str | None, pq.FileMetaData | None]:
    """Why the part file cannot be reused, or its footer."""
    meta = stores.parquet_metadata(name, storage)
    schema = meta.schema.to_arrow_schema()
    raw = (schema.metadata or {}).get(FINGERPRINT_KEY)
    if raw is None:
        return "not an embedpipe part file (no fingerprint in its metadata)", None
    if why := _mismatch(json.loads(raw), fingerprint):
        return why, None
    if "text_hash" not in schema.names:
        return "written before part files had a text_hash column", None
    return None, meta


def _decides(fingerprint: dict[str, Any], key: str) -> Any:
    """The part of a fingerprint's entry that decides the stored bytes: for `vectors`, not where
    int8/uint8 ranges came from (a sample, or the earlier output itself), only what they are;
    for `chunking`, only a pooled one."""
    value = fingerprint.get(key)
    if key == "vectors" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "calibration"}
    if key == "chunking" and isinstance(value, dict) and value.get("pool") != "mean":
        return None
    return value


def _mismatch(theirs: dict[str, Any], ours: dict[str, Any]) -> str | None:
    """Why vectors made under `theirs` are not this run's, or None when they are."""
    found = [
        d
        for key in DECIDES_VECTORS
        for d in diff(_decides(theirs, key), _decides(ours, key), key, ("there", "in this run"))
    ]
    if not found:
        return None
    return "made with another model or options (" + "; ".join(found[:4]) + ")"
