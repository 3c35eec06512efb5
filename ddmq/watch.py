"""Sleep until a folder changes, or a time-out passes.

On Linux a local folder is watched with inotify (through ctypes, no extra
dependency), so a waiting consumer wakes within a millisecond of a message
being renamed into its queue. inotify sees only changes made through this
node's kernel: a message published on another node of a network filesystem
is noticed at the next poll, so callers still poll, with back-off. Where
inotify is missing, :meth:`FolderWatcher.wait` simply sleeps.

The events name the files that appeared: :meth:`FolderWatcher.news` hands
them out, so that a consumer whose listing was complete when the watch began
can add them to it instead of listing the folder again (see
:mod:`ddmq.listing`). When the kernel dropped events (its queue overflowed)
or the watch ended, :meth:`~FolderWatcher.news` says so (None), and the
caller lists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import struct
import sys
import threading
import time

from . import protocol

log = logging.getLogger(__name__)

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_Q_OVERFLOW = 0x00004000  # events were dropped
_IN_IGNORED = 0x00008000  # the watch ended (the folder was deleted)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_EVENT_MAX = _EVENT.size + 256  # the longest event (a name of NAME_MAX bytes, padded)
_READ_SIZE = 65536
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = 0o2000000

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.inotify_init1  # noqa: B018 (probe that the symbol exists)
    except (OSError, AttributeError):
        _libc = None


_pid = os.getpid()  # of this process: a forked child's watcher starts afresh


def _forked() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class FolderWatcher:
    """Waits for files to appear in folders; one inotify descriptor per folder."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        # folder -> names that appeared since news() was last called; None: events were lost
        self._news: dict[str, list[str] | None] = {}
        self._pid = _pid
        self._lock = threading.Lock()

    def _fd_for(self, folder: str) -> int | None:
        if _libc is None:
            return None
        with self._lock:
            if self._pid != _pid:  # a forked child gets its own descriptors
                self._fds, self._news, self._pid = {}, {}, _pid
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
            self._news[folder] = None  # nothing known before the watch began
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
        self._drain(folder, fd)
        return True

    def watching(self, folder: str) -> bool:
        """True if ``folder`` is watched already (never starts a watch)."""
        return folder in self._fds and self._pid == _pid

    def news(self, folder: str) -> list[str] | None:
        """The names of the files that appeared in ``folder`` since the last
        call (events read without blocking); None if ``folder`` is not
        watched, or if events may have been missed since the last call (the
        kernel's queue overflowed; the first call after :meth:`arm`): the
        caller must then list the folder. Each name is handed out once."""
        if not self.watching(folder):
            return None
        fd = self._fds.get(folder)
        if fd is None:
            return None
        self._drain(folder, fd)
        with self._lock:
            if folder not in self._fds:
                return None
            news = self._news.get(folder)
            self._news[folder] = []
        return news

    def _drain(self, folder: str, fd: int) -> None:
        """Read the pending events of ``folder``'s watch into its news."""
        chunks = []
        try:
            while True:
                chunk = os.read(fd, _READ_SIZE)
                if chunk:
                    chunks.append(chunk)
                if len(chunk) < _READ_SIZE - _EVENT_MAX:  # what was pending fitted: all read
                    break
        except BlockingIOError:
            pass
        except OSError:
            self.forget(folder)
            return
        if not chunks:
            return
        names: list[str] = []
        lost = False
        for data in chunks:
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & (_IN_Q_OVERFLOW | _IN_IGNORED):
                    lost = True
                elif length:
                    names.append(os.fsdecode(data[offset:offset + length].rstrip(b"\0")))
                offset += length
        with self._lock:
            if folder not in self._fds:
                return
            known = self._news.get(folder)
            if lost:
                self._news[folder] = None
            elif known is not None:
                known.extend(names)

    def forget(self, folder: str) -> None:
        """Stop watching ``folder`` (it was deleted, or is no longer used)."""
        with self._lock:
            fd = self._fds.pop(folder, None)
            self._news.pop(folder, None)
        protocol.close_quietly(fd)

    def close(self) -> None:
        for folder in list(self._fds):
            self.forget(folder)
