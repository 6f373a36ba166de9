"""Files readers can trust: written beside their final name, fsynced, then renamed into place.

Every file embedpipe writes (part files, markers, cards, digest caches) goes through
`atomic_path`, so a crash at any moment leaves either the previous file or the new one, never half
of one; what a killed writer leaves is a `.NAME.tmp-PID` file, which `TEMPORARY_GLOB` finds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_GLOB = ".*.tmp-*"


def temporary_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path, before_publish: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A temporary path to write `path`'s content to; on a clean exit it is published over
    `path` (after `before_publish(path)`, the fault hook's moment), on an error removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(path)
    try:
        yield tmp
        if before_publish is not None:
            before_publish(path)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def publish(tmp: Path, path: Path) -> None:
    """Renames a finished temporary file over path, durably: the data is flushed before the
    rename and the rename before returning, so a marker written next never outlives its file
    after a power cut."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
