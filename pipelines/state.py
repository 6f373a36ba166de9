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

from pipelines.faults import check_write
from workers.model_dir import write_atomic

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "_embedpipe.json"
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

    def done(self) -> dict[str, dict[str, Any]]:
        return _read_markers(self.state / "done")

    def failed(self) -> dict[str, dict[str, Any]]:
        return _read_markers(self.state / "failed")

    def settled(self, planned: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Done and failed markers of the planned tasks; a task done after failing is done."""
        done = {k: v for k, v in self.done().items() if k in planned}
        failed = {k: v for k, v in self.failed().items() if k in planned and k not in done}
        return done, failed

    def mark_done(self, task_id: str, info: dict[str, Any]) -> None:
        _write_marker(self.state / "done" / f"{task_id}.json", info)
        (self.state / "failed" / f"{task_id}.json").unlink(missing_ok=True)

    def mark_failed(self, task_id: str, info: dict[str, Any]) -> None:
        _write_marker(self.state / "failed" / f"{task_id}.json", info)

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
        stray = [p for p in self.out.rglob(".*.tmp-*") if p.is_file()]
        for path in stray:
            path.unlink(missing_ok=True)
        if stray:
            log.info("removed %d unfinished temporary file(s) under %s", len(stray), self.out)
        return len(stray)


def digest_path(out: str | Path, kind: str, task_id: str, input_size: int) -> Path:
    """Where a task's digests of `kind` are cached: keyed by the input's size as well, the rule
    the done markers use, so a shard edited between two runs of an output is read again."""
    return Path(out) / "_state" / kind / f"{task_id}.{input_size}.npz"


def cached_arrays(
    path: Path, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays an earlier run saved at `path` (digests under _state/), else `compute()`, saved
    there. The cache only saves a rerun the reading, so a failed save is logged, not fatal."""
    if path.is_file():
        with np.load(path) as saved:
            return {name: saved[name] for name in saved.files}
    found = compute()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **cast(dict[str, Any], found))  # (numpy's stub types the kwargs as bool)
        check_write(path)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        log.warning("cannot cache digests at %s: %s", path, err)
    return found


def totals(done: dict[str, Any]) -> dict[str, Any]:
    """Over done markers: rows the model embedded, rows copied from cache_from, rows whose text
    another row of the run had embedded, rows rejected, the tokens the model embedded, and
    what running out of device memory cost."""
    return {
        "rows_embedded": sum(m["embedded"] for m in done.values()),
        "rows_from_cache": sum(m.get("from_cache", 0) for m in done.values()),
        "rows_deduplicated": sum(m.get("deduplicated", 0) for m in done.values()),
        "rows_rejected": sum(m["rejected"] for m in done.values()),
        "tokens": sum(m["tokens"] for m in done.values()),
        "device_oom": device_oom(done),
    }


def device_oom(done: dict[str, Any]) -> dict[str, Any]:
    """Batches split because the device ran out of memory, and the lowest max_batch_tokens an
    actor went down to (None when none had to)."""
    hit = [m["device_oom"] for m in done.values() if m.get("device_oom", {}).get("splits")]
    return {
        "splits": sum(h["splits"] for h in hit),
        "max_batch_tokens": min((h["max_batch_tokens"] for h in hit), default=None),
    }


def _write_marker(path: Path, info: dict[str, Any]) -> None:
    _write(path, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _write(path: Path, text: str) -> None:
    """Writes a state file atomically; a disk that is full or read-only stops the run with the
    path and the error, since progress that cannot be recorded would only be redone."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_write(path)
        write_atomic(path, text)
    except OSError as err:
        raise StateError(
            f"cannot write the run state at {path}: {err.strerror or err}; free space or fix "
            f"the permissions under {path.parent}, then rerun (finished tasks are kept)"
        ) from err


def _read_markers(directory: Path) -> dict[str, dict[str, Any]]:
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def diff(
    old: Any, new: Any, where: str = "", labels: tuple[str, str] = ("here", "now")
) -> list[str]:
    """Human-readable differences between two JSON values, by key path; `labels` say where
    each side comes from."""
    then, now = labels
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(old.keys() | new.keys()):
            path = f"{where}.{key}" if where else key
            found += diff(old.get(key), new.get(key), path, labels)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in diff(a, b, f"{where}[{i}]", labels)
        ]
    if isinstance(old, list) and isinstance(new, list):
        return [f"{where}: {len(old)} entries {then}, {len(new)} {now}"]
    if old != new:
        return [f"{where or 'fingerprint'}: {_short(old)} {then}, {_short(new)} {now}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
