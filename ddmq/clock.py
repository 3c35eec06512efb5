"""The file server's clock: the one clock every node of a shared filesystem can read.

Leases end at an epoch second written into the work file's name (see
:mod:`ddmq.layout`); whoever judges whether it passed must use a clock all
nodes agree on. Nodes' own clocks may differ by minutes, but the file server
stamps a newly created file's modification time with its own clock:
:class:`ServerClock` learns the offset from such a stamp.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

from .layout import unique_token
from .protocol import remove_quietly

log = logging.getLogger(__name__)

#: A clock probe slower than this bounds the offset too loosely to be used.
MAX_PROBE_SECONDS = 0.5


class ServerClock:
    """The file server's clock, as seen from this process.

    Every ``refresh_seconds`` the offset between the server and this process
    is measured by creating a probe file in ``folder`` and reading its
    modification time. If the probe cannot be written, the local clock is used.
    """

    def __init__(self, folder: str, refresh_seconds: float = 60.0):
        self.folder = folder
        self.refresh_seconds = refresh_seconds
        self._offset = 0.0
        self._next_refresh = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the epoch on the file server's clock (estimated)."""
        mono = time.monotonic()
        if mono >= self._next_refresh:
            with self._lock:
                if mono >= self._next_refresh:
                    self._next_refresh = mono + self.refresh_seconds
                    self._measure()
        return time.time() + self._offset

    def _measure(self) -> None:
        probe = os.path.join(self.folder, f".clock.{unique_token()}")
        try:
            before = time.time()
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"t")
                stamped = os.fstat(fd).st_mtime
            finally:
                os.close(fd)
                remove_quietly(probe)
            after = time.time()
        except OSError as err:
            log.debug("cannot probe the server clock in %s: %s", self.folder, err)
            return
        if after - before > MAX_PROBE_SECONDS:
            # The stamp lies somewhere in [before, after]: too wide to trust.
            # Keep the last offset and try again soon.
            log.debug("clock probe took %.2f s; ignored", after - before)
            self._next_refresh = time.monotonic() + 1.0
            return
        # The server's timestamp granularity (often a few ms) makes offsets
        # below a second noise; leases are whole seconds anyway.
        offset = stamped - (before + after) / 2
        self._offset = offset if abs(offset) >= 1.0 else 0.0
        if self._offset:
            log.info("file server clock is %+.1f s from this node's", self._offset)


def lease_expiry(now: float, timeout: float) -> int:
    """The whole epoch second at which a lease of ``timeout`` s taken at ``now`` ends."""
    return int(math.ceil(now + timeout))
