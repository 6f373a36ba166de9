"""Done and failed markers: what `_state/done/<task>.json` and `_state/failed/<task>.json` hold.

A task's actor returns its `DoneMarker`; the driver writes it after the task's part files are in
place, so a marker never names a file that is not there. A rerun keeps a task whose marker is
still backed by its files (RunState.still_there), and refuses to go on where the marker's input
was written since (batch/run.py). Markers written by earlier versions, without the re-index or
out-of-memory fields, read with those at zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.storage import stores


@dataclass(frozen=True)
class PartFile:
    """A file a task wrote, relative to OUT: a part file, or with `rejects` its rejects."""

    path: str
    rows: int
    sha256: str
    rejects: bool = False

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"path": self.path, "rows": self.rows, "sha256": self.sha256}
        return found | ({"rejects": True} if self.rejects else {})

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PartFile:
        return cls(raw["path"], raw["rows"], raw["sha256"], bool(raw.get("rejects", False)))


@dataclass(frozen=True)
class DoneMarker:
    task_id: str  # the marker's file name, not in its JSON
    input_key: str
    input_size: int
    rows: int
    embedded: int  # rows the model computed
    rejected: int
    tokens: int  # the model's: copied rows cost none
    # "device" is the part of "embed" spent running the model; the rest is tokenizing and
    # waiting for the actor's other task to release the device
    seconds: dict[str, float] = field(default_factory=dict)
    files: tuple[PartFile, ...] = ()
    from_cache: int = 0
    deduplicated: int = 0
    oom_splits: int = 0  # batches split because the device ran out of memory
    max_batch_tokens: int = 0  # the actor's budget when the task ended (lowered by those)
    input_version: str = ""  # the input's version when read (mtime); "" in older markers
    chunks: int = 0  # under embedding.chunking (pool: none), the chunk rows written
    # For the run's figures (output/run_figures.py): when the driver recorded it (Unix
    # seconds; 0 in older markers), the attempt that succeeded, and its rows' n_tokens in
    # TOKEN_BINS bins over [0, token_max] plus one bin above
    finished: float = 0.0
    attempts: int = 1
    token_counts: tuple[int, ...] = ()
    token_max: int = 0

    def part_paths(self, out: str) -> tuple[str, ...]:
        """Its part files (not its rejects) under OUT, as locations."""
        return tuple(stores.join(out, *f.path.split("/")) for f in self.files if not f.rejects)

    def to_json(self) -> dict[str, Any]:
        return {
            "input": {
                "key": self.input_key,
                "size": self.input_size,
                "version": self.input_version,
            },
            "rows": self.rows,
            "embedded": self.embedded,
            "from_cache": self.from_cache,
            "deduplicated": self.deduplicated,
            "rejected": self.rejected,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "files": [f.to_json() for f in self.files],
            "device_oom": {"splits": self.oom_splits, "max_batch_tokens": self.max_batch_tokens},
            **({"chunks": self.chunks} if self.chunks else {}),
            "finished": self.finished,
            "attempts": self.attempts,
            "token_histogram": {"max": self.token_max, "counts": list(self.token_counts)},
        }

    @classmethod
    def from_json(cls, task_id: str, raw: dict[str, Any]) -> DoneMarker:
        oom = raw.get("device_oom", {})
        return cls(
            task_id=task_id,
            input_key=raw["input"]["key"],
            input_size=raw["input"]["size"],
            rows=raw["rows"],
            embedded=raw["embedded"],
            rejected=raw["rejected"],
            tokens=raw["tokens"],
            seconds=raw.get("seconds", {}),
            files=tuple(PartFile.from_json(f) for f in raw.get("files", [])),
            from_cache=raw.get("from_cache", 0),
            deduplicated=raw.get("deduplicated", 0),
            oom_splits=oom.get("splits", 0),
            max_batch_tokens=oom.get("max_batch_tokens", 0),
            input_version=raw["input"].get("version", ""),
            chunks=raw.get("chunks", 0),
            finished=raw.get("finished", 0.0),
            attempts=raw.get("attempts", 1),
            token_counts=tuple(raw.get("token_histogram", {}).get("counts", ())),
            token_max=raw.get("token_histogram", {}).get("max", 0),
        )


@dataclass(frozen=True)
class FailedMarker:
    task_id: str  # the marker's file name, not in its JSON
    file: str
    rows: tuple[int, int]  # start, stop
    error_type: str
    message: str  # what `embedpipe status` and the report show
    traceback: str
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows": list(self.rows),
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, task_id: str, raw: dict[str, Any]) -> FailedMarker:
        start, stop = raw["rows"]
        return cls(
            task_id,
            raw["file"],
            (start, stop),
            raw["error_type"],
            raw["message"],
            raw.get("traceback", ""),
            raw["attempts"],
        )


def totals(done: dict[str, DoneMarker]) -> dict[str, Any]:
    """Over done markers: rows the model embedded, rows copied from cache_from, rows whose text
    another row of the run had embedded, rows rejected, under chunking the chunk rows written
    (embedded, copied and rejected then count chunks), the tokens the model embedded, and what
    running out of device memory cost (report.json's keys)."""
    markers = list(done.values())
    hit = [m for m in markers if m.oom_splits]
    return {
        "rows_embedded": sum(m.embedded for m in markers),
        "rows_from_cache": sum(m.from_cache for m in markers),
        "rows_deduplicated": sum(m.deduplicated for m in markers),
        "rows_rejected": sum(m.rejected for m in markers),
        "chunks_written": sum(m.chunks for m in markers),
        "tokens": sum(m.tokens for m in markers),
        "device_oom": {
            "splits": sum(m.oom_splits for m in hit),
            "max_batch_tokens": min((m.max_batch_tokens for m in hit), default=None),
        },
    }
