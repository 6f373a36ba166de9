"""The run lock on an object store: a lease object, since there is no flock to hold.

`_state/lock` is created with S3's conditional write (If-None-Match: *), so of two drivers
starting on one output exactly one gets it. The holder renews it every LEASE_S / 4 by rewriting
it only while it is still the object it wrote (If-Match on its ETag). A driver that is killed
stops renewing; once the lock is LEASE_S old by the store's own clock, the next run takes it
over, again with If-Match on the stale ETag, so of two runs racing for a stale lock one wins. A
holder that could not renew for LEASE_S (a network partition) has lost the lock: it stops
recording work instead of writing beside a run that took over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings

log = logging.getLogger(__name__)

LEASE_S = 60.0


class LeaseError(RuntimeError):
    """The output's lock is held by another run, or this run lost it."""


class Lease:
    def __init__(self, location: str, storage: StorageSettings, lease_s: float = LEASE_S):
        self.location, self.storage, self.lease_s = location, storage, lease_s
        self.etag: str | None = None
        self.lost_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        body = self._body()
        etag = stores.create_if_absent(self.location, body, self.storage)
        if etag is None:
            etag = self._take_over(body)
        self.etag = etag
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()

    def _take_over(self, body: bytes) -> str:
        held = stores.age(self.location, self.storage)
        if held is None:  # released between the two calls: try once more
            etag = stores.create_if_absent(self.location, body, self.storage)
            if etag is not None:
                return etag
            held = stores.age(self.location, self.storage)
        # The holder's own lease counts: a rerun configured with a shorter one must not take
        # the lock from a live run that renews at its slower pace.
        lease_s = max(self.lease_s, self._holder_lease_s())
        if held is not None and held[1] >= lease_s:
            log.warning("taking over the lock of a run that stopped renewing it: %s", self.holder())
            taken = stores.replace_if(self.location, body, held[0], self.storage)
            if taken is not None:
                return taken
        wait = lease_s - (held[1] if held else 0)
        raise LeaseError(
            f"in use by another run ({self.holder()}); wait for it to finish, or, if it was "
            f"killed, for its lock to expire (at most {max(wait, 0):.0f} s)"
        )

    def holder(self) -> str:
        return str(self._recorded().get("holder", "another process"))

    def _holder_lease_s(self) -> float:
        try:
            return float(self._recorded().get("lease_s", 0.0))
        except (TypeError, ValueError):
            return 0.0

    def _recorded(self) -> dict:
        """What the lock object says of its holder; empty when unreadable (gone, or not ours)."""
        try:
            found = json.loads(stores.read_bytes(self.location, self.storage))
        except Exception:
            return {}
        return found if isinstance(found, dict) else {}

    def _body(self) -> bytes:
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}"
        return json.dumps({"holder": holder, "lease_s": self.lease_s}).encode()

    def _renew(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.lease_s / 4):
            try:
                renewed = stores.replace_if(
                    self.location, self._body(), self.etag or "", self.storage
                )
            except stores.StorageError as err:
                log.warning("could not renew the output's lock: %s", err)
                renewed = None
                if time.monotonic() - last < self.lease_s:
                    continue
            if renewed is None:
                self.lost_at = time.monotonic()
                log.error("this run lost the output's lock to another run; it stops recording")
                return
            self.etag, last = renewed, time.monotonic()

    def check(self) -> None:
        if self.lost_at is not None:
            raise LeaseError(
                f"this run lost the lock on {self.location.rsplit('/_state', 1)[0]} (it could "
                "not renew it in time and another run took it over); its finished tasks are "
                "kept, rerun once the other run is done"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost_at is None:
            stores.delete(self.location, self.storage)
