"""A directory tree at a location: the output and its run state, on a local disk or under an
object-store prefix, through one interface.

Every write is whole or absent for readers: locally a temporary file beside the name, fsynced
and renamed (workers/files.py); on an object store one PUT of the whole object, which S3 makes
visible only once complete, so there is no rename to need and nothing half-written to see. The
storage-fault hook (output/faults.py's check) runs at the moment of publishing either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings
from workers.files import atomic_path


@dataclass(frozen=True)
class Tree:
    root: str  # a local directory or s3://bucket/prefix
    storage: StorageSettings = field(default_factory=StorageSettings)
    # called with the location just before a write is published (the fault-injection hook)
    before_publish: Callable[[str], None] | None = None

    @property
    def remote(self) -> bool:
        return stores.is_remote(self.root)

    def at(self, relative: str) -> str:
        """The location of a path below the root ('/'-separated)."""
        return stores.join(self.root, *relative.split("/"))

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Writes the whole file; returns its sha256."""
        where = self.at(relative)
        if self.remote:
            if self.before_publish is not None:
                self.before_publish(where)
            stores.write_bytes(where, data, self.storage)
        else:
            check = None if self.before_publish is None else _as_path_hook(self.before_publish)
            with atomic_path(Path(where), before_publish=check) as tmp:
                tmp.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, or None where there is none."""
        where = self.at(relative)
        if self.remote:
            if stores.stat(where, self.storage) is None:
                return None
            return stores.read_bytes(where, self.storage)
        path = Path(where)
        return path.read_bytes() if path.is_file() else None

    def read_range(self, relative: str, offset: int, length: int) -> bytes:
        """Part of a file that exists: `length` bytes from `offset`."""
        return stores.read_range(self.at(relative), offset, length, self.storage)

    def read_text(self, relative: str) -> str | None:
        data = self.read_bytes(relative)
        return None if data is None else data.decode()

    def exists(self, relative: str) -> bool:
        where = self.at(relative)
        if self.remote:
            return stores.stat(where, self.storage) is not None
        return Path(where).is_file()

    def delete(self, relative: str) -> None:
        where = self.at(relative)
        if self.remote:
            stores.delete(where, self.storage)
        else:
            Path(where).unlink(missing_ok=True)

    def files(self, directory: str, suffix: str = "") -> list[str]:
        """Names of the files directly in a directory below the root, sorted."""
        if self.remote:
            prefix = self.at(directory).rstrip("/") + "/"
            found = [
                stores.relative(e.uri, prefix) for e in stores.list_files(prefix, self.storage)
            ]
            return sorted(n for n in found if "/" not in n and n.endswith(suffix))
        path = Path(self.at(directory))
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if p.is_file() and p.name.endswith(suffix))

    def local_dir(self) -> Path:
        """The root as a local directory, created; only for local trees."""
        path = Path(self.root)
        path.mkdir(parents=True, exist_ok=True)
        return path


def _as_path_hook(hook: Callable[[str], None]) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        hook(str(path))

    return check
