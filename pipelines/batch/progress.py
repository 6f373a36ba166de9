"""Progress: a live bar on a terminal; otherwise (what `ray job logs` shows) a log line when
rows or failures changed, at most every few seconds, and a heartbeat each minute while nothing
finishes; both with rows, tokens/s, ETA and failures."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pipelines.output.markers import DoneMarker

log = logging.getLogger("embedpipe.progress")
HEARTBEAT_S = 60.0  # without a terminal: a line when rows or failures change, else this often


class Progress:
    def __init__(
        self, total_rows: int, done_rows: int, stream: TextIO = sys.stderr, interval_s: float = 5
    ) -> None:
        self.total_rows = total_rows
        self.rows = done_rows
        self.tokens = 0
        self.from_cache = 0
        self.deduplicated = 0
        self.failures = 0
        self._start_rows = done_rows
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = 0.2 if self._tty else interval_s
        self._started = time.monotonic()
        self._shown = 0.0
        self._logged: tuple[int, int] | None = None  # rows and failures last logged

    def task_done(self, result: DoneMarker) -> None:
        self.rows += result.rows
        self.tokens += result.tokens
        self.from_cache += result.from_cache
        self.deduplicated += result.deduplicated

    def task_failed(self) -> None:
        self.failures += 1

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < self._interval:
            return
        if self._tty:
            self._shown = now
            self._stream.write("\r" + self.line(now - self._started).ljust(100))
            self._stream.flush()
            return
        # a log keeps a line per change, and a heartbeat while nothing finishes
        state = (self.rows, self.failures)
        if not force and state == self._logged and now - self._shown < HEARTBEAT_S:
            return
        self._shown, self._logged = now, state
        log.info(self.line(now - self._started))

    def close(self) -> None:
        self.tick(force=True)
        if self._tty:
            self._stream.write("\n")

    def line(self, elapsed: float) -> str:
        share = self.rows / self.total_rows if self.total_rows else 1.0
        width = 24
        bar = "#" * int(share * width) + "." * (width - int(share * width))
        rate = (self.rows - self._start_rows) / elapsed if elapsed > 0 else 0.0
        left = (self.total_rows - self.rows) / rate if rate > 0 else float("inf")
        return (
            f"[{bar}] {self.rows:,}/{self.total_rows:,} rows  "
            f"{self.tokens / max(elapsed, 1e-9):,.0f} tokens/s  ETA {_duration(left)}  "
            f"failures {self.failures}{self._reused()}"
        )

    def _reused(self) -> str:
        if not (self.from_cache or self.deduplicated):
            return ""
        return f"  from cache {self.from_cache:,}  deduplicated {self.deduplicated:,}"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
