"""Run state under OUT: fingerprint, lock, done and failed markers, report, _SUCCESS, on a local
disk or under an object-store prefix (storage/tree.py).

A rerun trusts only what a done marker names, and a done marker is written after its part file
is in place (renamed locally, one whole PUT on an object store), so a crash at any moment
leaves either a finished task or one to redo; a part file with no done marker is rewritten by
the task that redoes it. The fingerprint (model sha256, options, input listing, schema) is
written once; a run whose fingerprint differs is refused with what differs, so one OUT never
mixes vectors. `_SUCCESS` is written last.

The lock, locally, is an flock held by the driver for the whole run: the kernel drops it when
the process dies, so a killed run never leaves a stale lock behind. On an object store it is a
lease object renewed while the run lives (lease.py): a killed run's lock expires within a minute.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from pipelines.output.faults import check_write
from pipelines.output.fingerprint import FINGERPRINT_FILE, diff
from pipelines.output.lease import Lease, LeaseError
from pipelines.output.markers import DoneMarker, FailedMarker
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers.files import TEMPORARY_GLOB

log = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS"
STATE = "_state"


class StateError(RuntimeError):
    """OUT cannot be written by this run: another run holds it, or it holds other vectors."""


class RunState:
    def __init__(self, out: str | Path, storage: StorageSettings | None = None) -> None:
        self.out = str(out)
        self.tree = Tree(self.out, storage or StorageSettings(), before_publish=check_write)
        self._lock: IO[str] | None = None
        self._lease: Lease | None = None

    def acquire(self) -> None:
        try:
            if self.tree.remote:
                storage = self.tree.storage
                self._lease = Lease(self.tree.at(f"{STATE}/lock"), storage, storage.lock_lease_s)
                self._lease.take()
            else:
                self._lock = _flock(self.tree.local_dir() / STATE)
        except (LeaseError, BlockingIOError) as err:
            raise StateError(f"{self.out} is {err}") from err
        except OSError as err:  # the store refused: no bucket, no permission, unreachable
            raise StateError(f"cannot use output.path: {err}") from err

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def stored_fingerprint(self) -> dict[str, Any] | None:
        text = self.tree.read_text(FINGERPRINT_FILE)
        return None if text is None else dict(json.loads(text))

    def complete_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Writes the fingerprint again once the run has learnt what it left open (int8/uint8
        ranges, batch/calibration.py), before any part file is written."""
        self._write(FINGERPRINT_FILE, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Writes the fingerprint on first use; refuses one that differs from the stored one."""
        stored_text = self.tree.read_text(FINGERPRINT_FILE)
        if stored_text is None:
            self._write(FINGERPRINT_FILE, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
            return
        if differences := diff(json.loads(stored_text), fingerprint):
            raise StateError(
                f"{self.out} holds the output of another model, options or input "
                f"({'; '.join(differences[:5])}); write to a new output.path"
            )

    def done(self) -> dict[str, DoneMarker]:
        raw = self._read_markers(f"{STATE}/done")
        return {k: DoneMarker.from_json(k, v) for k, v in raw.items()}

    def failed(self) -> dict[str, FailedMarker]:
        raw = self._read_markers(f"{STATE}/failed")
        return {k: FailedMarker.from_json(k, v) for k, v in raw.items()}

    def settled(self, planned: set[str]) -> tuple[dict[str, DoneMarker], dict[str, FailedMarker]]:
        """Done and failed markers of the planned tasks; a task done after failing is done."""
        done = {k: v for k, v in self.done().items() if k in planned}
        failed = {k: v for k, v in self.failed().items() if k in planned and k not in done}
        return done, failed

    def still_there(self, marker: DoneMarker) -> bool:
        """Whether every file a done marker names is still in OUT (deleting a part file is how
        a user has its task redone)."""
        return all(self.tree.exists(f.path) for f in marker.files)

    def mark_done(self, marker: DoneMarker) -> None:
        self._write_marker(f"{STATE}/done/{marker.task_id}.json", marker.to_json())
        self.tree.delete(f"{STATE}/failed/{marker.task_id}.json")

    def mark_failed(self, marker: FailedMarker) -> None:
        self._write_marker(f"{STATE}/failed/{marker.task_id}.json", marker.to_json())

    def write_plan(self, tasks: list[dict[str, Any]]) -> None:
        self._write_marker(f"{STATE}/plan.json", {"tasks": tasks})

    def plan(self) -> list[dict[str, Any]]:
        text = self.tree.read_text(f"{STATE}/plan.json")
        return [] if text is None else list(json.loads(text)["tasks"])

    def write_config(self, text: str) -> None:
        self._write(f"{STATE}/config.yaml", text)

    def write_report(self, report: dict[str, Any]) -> None:
        self._write_marker(f"{STATE}/report.json", report)

    def mark_started(self, at: float) -> None:
        """When this run (not the first one of the output) started: the run's rates count the
        tasks done since (output/run_figures.py)."""
        self._write_marker(f"{STATE}/started.json", {"at": at})

    def started_at(self) -> float:
        text = self.tree.read_text(f"{STATE}/started.json")
        return 0.0 if text is None else float(json.loads(text)["at"])

    def write_picture(self, name: str, data: bytes) -> str:
        """A picture of the run (`_state/report.png`), written whole; its location."""
        try:
            self.tree.write_bytes(f"{STATE}/{name}", data)
        except OSError as err:
            raise StateError(f"cannot write {self.tree.at(f'{STATE}/{name}')}: {err}") from err
        return self.tree.at(f"{STATE}/{name}")

    def report(self) -> dict[str, Any] | None:
        text = self.tree.read_text(f"{STATE}/report.json")
        return None if text is None else dict(json.loads(text))

    def clear(self, directory: str) -> int:
        """Deletes the files directly in a directory below OUT (state a finished run no longer
        needs); how many."""
        names = self.tree.files(directory)
        for name in names:
            self.tree.delete(f"{directory}/{name}")
        return len(names)

    def succeed(self) -> None:
        self._write(SUCCESS_FILE, "")

    def succeeded(self) -> bool:
        return self.tree.exists(SUCCESS_FILE)

    def clear_success(self) -> None:
        self.tree.delete(SUCCESS_FILE)

    def sweep_temporaries(self) -> int:
        """Removes the temporary files of writes that a killed process never finished (every
        local write goes to `.NAME.tmp-PID` first); only the lock holder may call it. An object
        store has none: its writes are whole PUTs."""
        if self.tree.remote:
            return 0
        root = Path(self.out)
        stray = [p for p in root.rglob(TEMPORARY_GLOB) if p.is_file()] if root.is_dir() else []
        for path in stray:
            path.unlink(missing_ok=True)
        if stray:
            log.info("removed %d unfinished temporary file(s) under %s", len(stray), self.out)
        return len(stray)

    def _read_markers(self, directory: str) -> dict[str, dict[str, Any]]:
        found = {}
        for name in self.tree.files(directory, ".json"):
            text = self.tree.read_text(f"{directory}/{name}")
            if text is not None:  # removed since the listing (a task done after failing)
                found[name.removesuffix(".json")] = json.loads(text)
        return found

    def _write_marker(self, relative: str, info: dict[str, Any]) -> None:
        self._write(relative, json.dumps(info, indent=2, sort_keys=True) + "\n")

    def _write(self, relative: str, text: str) -> None:
        """Writes a state file whole; a disk that is full or read-only (or a store that refuses
        the write) stops the run with the location and the error, since progress that cannot
        be recorded would only be redone. A run that lost its lease records nothing more."""
        if self._lease is not None:
            try:
                self._lease.check()
            except LeaseError as err:
                raise StateError(str(err)) from err
        try:
            self.tree.write_text(relative, text)
        except OSError as err:
            where = self.tree.at(relative)
            raise StateError(
                f"cannot write the run state at {where}: {err.strerror or err}; free space or "
                f"fix the permissions under {where.rsplit('/', 1)[0]}, then rerun (finished "
                "tasks are kept)"
            ) from err


def _flock(state: Path) -> IO[str]:
    state.mkdir(parents=True, exist_ok=True)
    handle = open(state / "lock", "a+")  # noqa: SIM115 - held until release()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise BlockingIOError(f"in use by another run ({holder}); wait for it to finish") from err
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
    handle.flush()
    return handle


def digest_path(
    kind: str, name: str, input_size: int, version: str = "", suffix: str = "dig"
) -> str:
    """Where below OUT what was read from an input is cached (a task's digests of `kind`,
    output/digest_files.py; a file's row count): keyed by the input's size and version as
    well, the rule the done markers use, so a file edited between two runs is read again."""
    identity = f"{input_size}.{version}" if version else str(input_size)
    return f"{STATE}/{kind}/{name}.{identity}.{suffix}"


def location_name(location: str) -> str:
    """A file name for a file named by its whole location (any length, any characters)."""
    return hashlib.sha256(location.encode()).hexdigest()[:24]
