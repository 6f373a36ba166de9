"""Run state under OUT: fingerprint, lock, done and failed markers, report, _SUCCESS.

A rerun trusts only what a done marker names, and a done marker is written after its part file
was renamed into place, so a crash at any moment leaves either a finished task or one to redo.
The fingerprint (model sha256, options, input listing, schema) is written once; a run whose
fingerprint differs is refused with what differs, so one OUT never mixes vectors. The lock is
an flock held by the driver for the whole run: the kernel drops it when the process dies, so a
killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from pipelines.output.faults import check_write
from pipelines.output.fingerprint import FINGERPRINT_FILE, diff
from pipelines.output.markers import DoneMarker, FailedMarker
from workers.files import TEMPORARY_GLOB, atomic_path

log = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS"


class StateError(RuntimeError):
    """OUT cannot be written by this run: another run holds it, or it holds other vectors."""


class RunState:
    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.state = self.out / "_state"
        self._lock: IO[str] | None = None

    def acquire(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        handle = open(self.state / "lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateError(
                f"{self.out} is in use by another run ({holder}); wait for it to finish"
            ) from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Writes the fingerprint on first use; refuses one that differs from the stored one."""
        path = self.out / FINGERPRINT_FILE
        if not path.exists():
            _write(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
            return
        stored = json.loads(path.read_text())
        if differences := diff(stored, fingerprint):
            raise StateError(
                f"{self.out} holds the output of another model, options or input "
                f"({'; '.join(differences[:5])}); write to a new output.path"
            )

    def done(self) -> dict[str, DoneMarker]:
        raw = _read_markers(self.state / "done")
        return {k: DoneMarker.from_json(k, v) for k, v in raw.items()}

    def failed(self) -> dict[str, FailedMarker]:
        raw = _read_markers(self.state / "failed")
        return {k: FailedMarker.from_json(k, v) for k, v in raw.items()}

    def settled(self, planned: set[str]) -> tuple[dict[str, DoneMarker], dict[str, FailedMarker]]:
        """Done and failed markers of the planned tasks; a task done after failing is done."""
        done = {k: v for k, v in self.done().items() if k in planned}
        failed = {k: v for k, v in self.failed().items() if k in planned and k not in done}
        return done, failed

    def mark_done(self, marker: DoneMarker) -> None:
        _write_marker(self.state / "done" / f"{marker.task_id}.json", marker.to_json())
        (self.state / "failed" / f"{marker.task_id}.json").unlink(missing_ok=True)

    def mark_failed(self, marker: FailedMarker) -> None:
        _write_marker(self.state / "failed" / f"{marker.task_id}.json", marker.to_json())

    def write_plan(self, tasks: list[dict[str, Any]]) -> None:
        _write_marker(self.state / "plan.json", {"tasks": tasks})

    def plan(self) -> list[dict[str, Any]]:
        path = self.state / "plan.json"
        return list(json.loads(path.read_text())["tasks"]) if path.is_file() else []

    def write_report(self, report: dict[str, Any]) -> None:
        _write_marker(self.state / "report.json", report)

    def succeed(self) -> None:
        _write(self.out / SUCCESS_FILE, "")

    def clear_success(self) -> None:
        (self.out / SUCCESS_FILE).unlink(missing_ok=True)

    def sweep_temporaries(self) -> int:
        """Removes the temporary files of writes that a killed process never finished (every
        write here goes to `.NAME.tmp-PID` first); only the lock holder may call it."""
        stray = [p for p in self.out.rglob(TEMPORARY_GLOB) if p.is_file()]
        for path in stray:
            path.unlink(missing_ok=True)
        if stray:
            log.info("removed %d unfinished temporary file(s) under %s", len(stray), self.out)
        return len(stray)


def digest_path(
    out: str | Path, kind: str, task_id: str, input_size: int, version: str = ""
) -> Path:
    """Where a task's digests of `kind` are cached: keyed by the input's size and version as
    well, the rule the done markers use, so a shard edited between two runs is read again."""
    identity = f"{input_size}.{version}" if version else str(input_size)
    return Path(out) / "_state" / kind / f"{task_id}.{identity}.npz"


def cached_arrays(
    path: Path, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays an earlier run saved at `path` (digests under _state/), else `compute()`, saved
    there. The cache only saves a rerun the reading, so a failed save is logged, not fatal."""
    if path.is_file():
        with np.load(path) as saved:
            return {name: saved[name] for name in saved.files}
    found = compute()
    try:
        with atomic_path(path, before_publish=check_write) as tmp, open(tmp, "wb") as f:
            np.savez(f, **cast(dict[str, Any], found))  # (numpy's stub types kwargs as bool)
    except OSError as err:
        log.warning("cannot cache digests at %s: %s", path, err)
    return found


def _write_marker(path: Path, info: dict[str, Any]) -> None:
    _write(path, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _write(path: Path, text: str) -> None:
    """Writes a state file atomically; a disk that is full or read-only stops the run with the
    path and the error, since progress that cannot be recorded would only be redone."""
    try:
        with atomic_path(path, before_publish=check_write) as tmp:
            tmp.write_text(text)
    except OSError as err:
        raise StateError(
            f"cannot write the run state at {path}: {err.strerror or err}; free space or fix "
            f"the permissions under {path.parent}, then rerun (finished tasks are kept)"
        ) from err


def _read_markers(directory: Path) -> dict[str, dict[str, Any]]:
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}
