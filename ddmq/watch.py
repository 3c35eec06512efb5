"""Sleep until a folder changes, or a time-out passes.

On Linux a local folder is watched with inotify (through ctypes, no extra
dependency), so a waiting consumer wakes within a millisecond of a message
being renamed into its queue. inotify sees only changes made through this
node's kernel: a message published on another node of a network filesystem
is noticed at the next poll, so callers still poll, with back-off. Where
inotify is missing, :meth:`FolderWatcher.wait` simply sleeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sys
import threading
import time

from . import protocol

log = logging.getLogger(__name__)

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = 0o2000000

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.inotify_init1  # noqa: B018 (probe that the symbol exists)
    except (OSError, AttributeError):
        _libc = None


class FolderWatcher:
    """Waits for files to appear in folders; one inotify descriptor per folder."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _fd_for(self, folder: str) -> int | None:
        if _libc is None:
            return None
        with self._lock:
            if self._pid != os.getpid():  # a forked child gets its own descriptors
                self._fds, self._pid = {}, os.getpid()
            fd = self._fds.get(folder)
            if fd is not None:
                return fd
            fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return None
            mask = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_CREATE
            if _libc.inotify_add_watch(fd, os.fsencode(folder), mask) < 0:
                os.close(fd)
                return None
            self._fds[folder] = fd
            return fd

    def arm(self, folder: str) -> None:
        """Start recording changes of ``folder``; call before looking into it,
        so that a change between the look and :meth:`wait` is not missed."""
        self._fd_for(folder)

    def watches(self, folder: str) -> bool:
        """True if ``folder`` is watched with inotify (else :meth:`wait` only sleeps)."""
        return self._fd_for(folder) is not None

    def wait(self, folder: str, timeout: float) -> bool:
        """Block up to ``timeout`` s; True if ``folder`` changed meanwhile."""
        fd = self._fd_for(folder)
        if fd is None:
            time.sleep(max(0.0, timeout))
            return False
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            time.sleep(max(0.0, timeout))
            return False
        if not ready:
            return False
        try:
            while os.read(fd, 65536):
                pass
        except BlockingIOError:
            pass
        except OSError:
            self.forget(folder)
        return True

    def forget(self, folder: str) -> None:
        """Stop watching ``folder`` (it was deleted, or is no longer used)."""
        with self._lock:
            fd = self._fds.pop(folder, None)
        protocol.close_quietly(fd)

    def close(self) -> None:
        for folder in list(self._fds):
            self.forget(folder)
