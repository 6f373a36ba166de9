"""Storage fault injection, for the tests that prove a full or read-only disk loses nothing.

When the environment variable EMBEDPIPE_FAULTS names a file (read at each write, so a test can
start and clear a fault in the middle of a run, in every actor at once), each line of that file,
`ERRNO GLOB` (e.g. `ENOSPC */part-*`), makes the writes whose path matches GLOB fail with that
errno after the temporary file was written: the moment a real full disk reports it at close or
fsync, and the one that tests the clean-up of the temporary file. Unset, it costs one getenv.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from pathlib import Path

ENV = "EMBEDPIPE_FAULTS"


def check_write(path: str | Path) -> None:
    control = os.environ.get(ENV)
    if not control:
        return
    try:
        lines = Path(control).read_text().splitlines()
    except FileNotFoundError:
        return  # the fault was cleared
    for line in lines:
        name, _, pattern = line.strip().partition(" ")
        if name and fnmatch.fnmatch(str(path), pattern.strip() or "*"):
            code = getattr(errno, name)
            raise OSError(code, os.strerror(code), str(path))
