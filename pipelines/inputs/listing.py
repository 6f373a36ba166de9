"""Finding the shards: a file, a directory (recursively) or a glob, on a local disk or under an
object-store prefix (`s3://bucket/prefix/`, `s3://bucket/prefix/**/*.jsonl.gz`), in a stable
order, each with the key a task is named by (its path below the root the user gave).

Files whose path below the root has a part starting with '_' or '.' are skipped, as Spark and
Hive skip their markers (`_SUCCESS`, `.crc`); any other unknown kind is an error rather than a
silently ignored shard, unless `input.skip_unknown_files` skips it with a warning.
"""

from __future__ import annotations

import glob as globlib
import logging
import re
from pathlib import Path

from pipelines.inputs.line_ranges import splits_by_bytes
from pipelines.inputs.readers import (
    FORMATS,
    SUFFIXES,
    InputError,
    InputFile,
    check_regular,
    count_rows,
    is_json_array,
    json_array_error,
)
from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings

log = logging.getLogger(__name__)


def file_format(name: str) -> str | None:
    """The format a file name says (`x.jsonl.gz` -> jsonl), or None for any other name."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return FORMATS[suffix.removesuffix(".gz").removesuffix(".zst")]
    return None


def list_inputs(
    path: str,
    skip_unknown: bool = False,
    storage: StorageSettings | None = None,
    count: bool = True,
) -> list[InputFile]:
    """The shards of a location, in a stable order. A file of another kind is an error, or with
    `skip_unknown` skipped with a warning. Without `count`, CSV and compressed shards are left
    uncounted (rows None, no error) for the cluster to count (batch/counting.py)."""
    storage = storage or StorageSettings()
    found = _expand_remote(path, storage) if stores.is_remote(path) else _expand_local(path)
    if not found:
        raise InputError(f"input.path {path!r} matches no files")
    files: list[InputFile] = []
    for location, key, size, version in sorted(found):
        fmt = file_format(location)
        if fmt is None and skip_unknown:
            log.warning("%s: not an input format; skipped (input.skip_unknown_files)", location)
            continue
        if fmt is None:
            suffix = "".join(Path(location).suffixes[-2:])
            raise InputError(
                f"{location}: unsupported extension {suffix!r}; input files must end in one of "
                f"{', '.join(SUFFIXES)} (or start with '_' or '.' to be skipped). Set "
                "input.skip_unknown_files: true to skip other files with a warning"
            )
        try:
            rows, error = _rows(location, fmt, storage, size, count), None
        except InputError as err:
            # One corrupt shard must not stop the others: it becomes a task that fails.
            rows, error = None, str(err)
        files.append(InputFile(location, key, fmt, rows, size, error, version, storage))
    if not files:
        raise InputError(f"input.path {path!r} holds no input file, only files of other kinds")
    return files


Found = list[tuple[str, str, int, str]]  # location, key, size, version


def _rows(location: str, fmt: str, storage: StorageSettings, size: int, count: bool) -> int | None:
    """The file's rows; None for JSON Lines split by bytes, which the digest pass counts, and
    without `count` for the other text formats, which the cluster counts."""
    by_bytes = splits_by_bytes(InputFile(location, location, fmt, None, size, storage=storage))
    if size and fmt != "parquet" and (by_bytes or not count):
        if not stores.is_remote(location):
            check_regular(Path(location))
        if by_bytes and is_json_array(location, storage):
            raise json_array_error(location)
        return None
    return count_rows(location, fmt, storage, size)


def _expand_local(path: str) -> Found:
    target = Path(path)
    if target.is_file():
        return [_local(target, target.parent)]
    if target.is_dir():
        files = [p for p in target.rglob("*") if not p.is_dir() and not is_skipped(p, target)]
        return [_local(p, target) for p in files]
    if target.is_symlink():
        raise InputError(f"input.path {path!r} is a symbolic link to a missing {_link(target)}")
    if target.exists():
        raise InputError(f"input.path {path!r} is not a regular file or a directory")
    if any(ch in path for ch in stores.GLOB_CHARS):
        root = glob_root(path)
        matches = [Path(p) for p in globlib.glob(path, recursive=True)]
        return [_local(p, root) for p in matches if not p.is_dir() and not is_skipped(p, root)]
    raise InputError(f"input.path {path!r} does not exist")


def _local(path: Path, root: Path) -> tuple[str, str, int, str]:
    try:
        info = path.stat()
        size, version = info.st_size, str(info.st_mtime_ns)
    except OSError:  # a broken symlink: count_rows says so
        size, version = 0, ""
    return str(path), path.relative_to(root).as_posix(), size, version


def _link(path: Path) -> str:
    try:
        return repr(str(path.readlink()))
    except OSError:
        return "target"


def _expand_remote(path: str, storage: StorageSettings) -> Found:
    """An object, every object under a prefix, or a glob's matches."""
    try:
        if any(ch in path for ch in stores.GLOB_CHARS):
            root = remote_root(path)
            entries = stores.glob(path, storage)
        elif not path.endswith("/") and (single := stores.stat(path, storage)) is not None:
            root, entries = path.rsplit("/", 1)[0], [single]
        else:
            root = path.rstrip("/")
            entries = stores.list_files(root + "/", storage)
    except stores.StorageError as err:
        raise InputError(f"input.path: {err}") from err
    found = []
    for entry in entries:
        key = stores.relative(entry.uri, root)
        if not is_skipped_key(key):
            found.append((entry.uri, key, entry.size, entry.version))
    return found


def remote_root(path: str) -> str:
    """The prefix a remote path stands for: itself, or for a glob the prefix up to its last
    '/' before the first glob character."""
    if not any(ch in path for ch in stores.GLOB_CHARS):
        return path.rstrip("/")
    return stores.glob_prefix(path).rsplit("/", 1)[0]


def glob_root(path: str) -> Path:
    """The directory a path or glob stands for: itself, or for a glob the directory it starts
    from (what the listing's skip rule and the path checks judge it by)."""
    static = Path(re.split(r"[*?[]", path)[0])
    return static if static.is_dir() or static == Path(path) else static.parent


def is_skipped(path: Path, root: Path) -> bool:
    return is_skipped_key(path.relative_to(root).as_posix())


def is_skipped_key(key: str) -> bool:
    """The listing's skip rule: a file is not input when any part of its path below the root
    ('/'-separated) starts with '_' or '.' (an output's _state/ and _rejects/, temporaries,
    hidden files), as Spark and Hive skip them."""
    return any(part.startswith(("_", ".")) for part in key.split("/"))
