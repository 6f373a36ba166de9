"""SIGINT and SIGTERM while a run goes (or a server serves): stop cleanly instead of dying
mid-write.

The first signal asks the run to stop: no new task starts, the tasks already running get
`grace_s` to finish and be recorded, then the run writes its report and exits 130 (SIGINT) or
143 (SIGTERM), the shell's codes for those signals. A second signal stops at once, abandoning
the running tasks (their part files are redone by the next run; a rename that still lands is
the same bytes). Ctrl-C and `ray job stop` (SIGTERM, then SIGKILL a few seconds later) are the
cases this serves; a SIGKILL is covered by the state's design instead.

`ray.init` installs its own SIGTERM handler, which exits without a report, so the handlers are
installed again once Ray is connected. `embedpipe serve` uses the same two-signal rule: the first
stops the server once it is up, a second one at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's exit status for a process a signal stopped: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class Interrupted(Exception):
    """Raised where a phase stops early because a stop was asked for."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopRequest:
    """The first signal asks for a stop (`requested`; `draining` says what happens meanwhile);
    a second one makes `must_stop_now` true, or with `second_raises` raises Interrupted where
    the main thread is (a server's start-up that cannot finish)."""

    def __init__(
        self,
        grace_s: float = 10.0,
        draining: str = "running tasks get {grace_s:.0f} s to finish",
        second_raises: bool = False,
    ) -> None:
        self.grace_s = grace_s
        self.draining = draining.format(grace_s=grace_s)
        self.second_raises = second_raises
        # Until the run holds its output there is nothing to finish or record (an export on
        # first use is built aside and renamed), so a signal then stops at once.
        self.immediate = True
        self.signum: int | None = None
        self.count = 0
        self.first_at = 0.0
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        """Takes SIGINT and SIGTERM (again, after ray.init replaced one). Python runs signal
        handlers in the main thread only, so a run started from another thread (a test, a
        notebook's worker) keeps the handlers it has."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            if current is not self._handle:
                self._saved.setdefault(signum, current)
                signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.immediate:
            raise Interrupted(signum)
        self.count += 1
        if self.count == 1:
            self.signum, self.first_at = signum, time.monotonic()
            log.warning(
                "%s: stopping; %s (send it again to stop now)",
                signal.Signals(signum).name,
                self.draining,
            )
            return
        log.warning("second signal: stopping now")
        if self.second_raises:
            raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def must_stop_now(self) -> bool:
        """True after a second signal, or once the grace period of the first has run out."""
        if self.signum is None:
            return False
        return self.count > 1 or time.monotonic() - self.first_at > self.grace_s

    def check(self) -> None:
        """For phases with nothing to drain: raise Interrupted once a stop was asked for."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum) if self.signum is not None else 0
