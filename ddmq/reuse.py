"""Reusing files instead of creating them, on local filesystems.

Allocating an inode and its first block for every message, and freeing them
when it is acked, is what a busy local disk charges most for: on ext4
without a journal a create searches past every inode freed in the last
minute or more, and on this project's test machines it cost 0.5-1 ms after a
few thousand messages. So where the root is on a local filesystem (see
:data:`REUSE_FILESYSTEMS`) a file that is done with becomes a *spare*,
``FOLDER/spare.TOKEN``, and the next write of a file in that folder claims a
spare and rewrites it (see :func:`ddmq.protocol.publish`):

- the queue: ``ack`` retires the work file into the queue's ``tmp/``, a
  publish to that queue claims one (:class:`ddmq.broker.Broker`);
- the executor: a payload file read and done with is retired in its spill
  folder, the next large payload written there claims one
  (:mod:`ddmq.executor.spill`).

Every step is one rename, which on a local filesystem either happened or did
not: a spare is claimed by exactly one process. On a network filesystem
another node could still hold a reused file's old content in its cache, so
there every file is new.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time

from .errors import DdmqError
from .layout import SPARE_PREFIX, unique_token
from .protocol import list_folder, remove_quietly, rename_local

#: Filesystems whose files are reused: local ones. A reader that loses a race
#: with a reuse (a consumer whose lease ran out while it read) finds another
#: message id in the file and drops it (see Broker).
REUSE_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})




class SparePool:
    """The spares of one process: files it no longer needs, kept in their
    folder for a later write there to rewrite rather than create a file (see
    :data:`REUSE_FILESYSTEMS`). Safe to share between threads.

    :meth:`retire` renames a file to ``FOLDER/spare.TOKEN``; :meth:`take`
    claims any spare of the folder, ours or another process's (or else one
    of ours in another folder), by renaming it to a private name: of
    processes racing for one spare, exactly one renames it. At most
    ``limit`` spares per folder that no one took are ours at a time; past
    that :meth:`retire` declines (the caller unlinks).
    """

    #: After a look into a folder found no spare (or all of ours untaken),
    #: the next look is this long after.
    RELOOK_SECONDS = 0.005

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._folders: dict[str, _FolderSpares] = {}

    def _of(self, folder: str) -> _FolderSpares:
        # The caller holds _lock. Forget folders with none of ours when there
        # are many (e.g. the reply queues of many executors, one after the other).
        if folder not in self._folders and len(self._folders) >= 1024:
            self._folders = {k: v for k, v in self._folders.items() if v.ours}
        spares = self._folders.get(folder)
        if spares is None:
            spares = self._folders[folder] = _FolderSpares()
        return spares

    def retire(self, path: str, folder: str) -> bool | None:
        """Make ``path`` a spare in ``folder``: True if done, False if
        ``path`` was gone, None if not (no room, or the rename cannot be done:
        see :func:`rename_local`)."""
        if not self._room(folder):
            return None
        spare = f"{folder}{os.sep}{SPARE_PREFIX}{unique_token()}"
        retired = rename_local(path, spare)
        if retired:
            with self._lock:
                self._of(folder).ours.append(spare)
        return retired

    def _room(self, folder: str) -> bool:
        """Fewer than ``limit`` of our spares in ``folder`` are untaken, as far
        as we know. Past that, a call looks (one lstat) whether one of ours
        was taken (takers take spares in no particular order); after a look
        that found ours still there, the next look waits RELOOK_SECONDS."""
        with self._lock:
            spares = self._of(folder)
            ours = spares.ours
            if len(ours) < self.limit:
                return True
            if time.monotonic() < spares.next_room_look:
                return False
            oldest = ours[0]
        taken = not os.path.lexists(oldest)
        with self._lock:
            if ours and ours[0] == oldest:
                if taken:
                    ours.popleft()
                else:
                    ours.rotate(-1)  # look at the next one the next time
                    spares.next_room_look = time.monotonic() + self.RELOOK_SECONDS
        return taken

    def take(self, folder: str, retry_timeout: float, private: str | None = None) -> str | None:
        """Claim a spare of ``folder`` by renaming it to ``private`` (default:
        a new unique name in ``folder``); that path, or None if no spare
        could be had. Ours in ``folder`` first, then ours in another folder,
        then (a listing) any process's in ``folder``."""
        with self._lock:
            spares = self._of(folder)
            # One of ours elsewhere before a listing: a worker retires task
            # files in the task queue and writes replies, an executor the
            # reverse; each taking its own spares across needs no listing.
            ours_elsewhere = any(s.ours for s in self._folders.values())
            look = (not ours_elsewhere and not spares.found
                    and time.monotonic() >= spares.next_look)
            if look:
                spares.next_look = time.monotonic() + self.RELOOK_SECONDS
        if look:
            try:
                names = list_folder(folder, retry_timeout, follow=False)
            except (OSError, DdmqError):
                names = []
            found = [f"{folder}{os.sep}{n}" for n in names if n.startswith(SPARE_PREFIX)]
            with self._lock:
                spares.found = found
                if found:
                    spares.next_look = 0.0  # when these are used up, look again at once
        for _ in range(8):
            with self._lock:
                elsewhere = next((s.ours for s in self._folders.values() if s.ours), None)
                if spares.ours:
                    candidate = spares.ours.pop()  # the newest: least likely taken by another
                elif elsewhere is not None:
                    candidate = elsewhere.pop()
                elif spares.found:
                    candidate = spares.found.pop()
                else:
                    return None
            target = private or f"{folder}{os.sep}{unique_token()}"
            if rename_local(candidate, target):
                return target
        return None

    def forget(self, folder: str) -> None:
        """The folder is being deleted: drop what we know of it."""
        with self._lock:
            self._folders.pop(folder, None)

    def close(self) -> list[str]:
        """Remove our spares that no one took; the folders we had spares in."""
        with self._lock:
            folders, self._folders = self._folders, {}
        for spares in folders.values():
            for spare in spares.ours:
                remove_quietly(spare)  # gone already if someone took it
        return list(folders)


class _FolderSpares:
    """What a SparePool knows of one folder."""

    __slots__ = ("ours", "found", "next_look", "next_room_look")

    def __init__(self) -> None:
        self.ours: collections.deque[str] = collections.deque()  # untaken as far as we know, oldest first
        self.found: list[str] = []  # seen in the folder by the last look, not tried yet
        self.next_look = 0.0  # time.monotonic() from which to look into the folder again
        self.next_room_look = 0.0  # ... and to look whether one of ours was taken


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem that holds ``path`` ("ext4", "nfs4",
    "fuse.glusterfs", ...), from ``/proc/self/mountinfo``; None where that
    cannot be told (not Linux)."""
    real = os.path.realpath(path)
    best, found = -1, None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                try:
                    mount_point = _unescape_mount(fields[4])
                    fstype = fields[fields.index("-", 6) + 1]
                except (IndexError, ValueError):
                    continue
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= best:
                    best, found = len(mount_point), fstype
    except OSError:
        return None
    return found


def _unescape_mount(text: str) -> str:
    """Undo mountinfo's octal escapes (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text) if "\\" in text else text
