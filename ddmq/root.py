"""The root folder: its setup, its settings, its queues' lifecycle, and what a process shares across them.

A :class:`Root` is what every part of a broker works on: the root's path,
its layered settings (:mod:`ddmq.settings`), the file server's clock
(:mod:`ddmq.clock`), the folder watches, and where files are reused, the
process's spares (:mod:`ddmq.reuse`). It creates the root (private to its
owner) and queues, deletes queues, lists them, and answers the one question
"does this queue exist" (:meth:`Root.queue_exists`, :meth:`Root.require_queue`).

A queue is complete when its folder holds ``ddmq.yaml`` and ``work/``;
``ddmq.yaml`` is written last, so a queue half made by a process that died
is not taken for one (and is completed by the next creator).
"""

from __future__ import annotations

import itertools
import logging
import os
import stat as stat_module
from typing import Any

from . import protocol, reuse
from .clock import ServerClock
from .errors import (FilesystemError, InvalidNameError, InvalidRootError, QueueNotFoundError,
                     RootMissingError, RootUninitiatedError)
from .layout import DEAD, SETTINGS_FILE, TMP, WORK, WaitingName, WorkName, check_queue_name
from .message import Message
from .settings import DEFAULTS, SettingsCache, write_file
from .watch import FolderWatcher

log = logging.getLogger(__name__)

#: On a local filesystem an acked file becomes a spare in its queue's tmp/
#: folder, for a publisher to that queue to rewrite (see ddmq.reuse).
#: Each broker leaves at most this many spares per queue that no publisher
#: has taken yet; past that, acked files are unlinked.
SPARES_MAX = 32

_ROOT_TEMPLATE = """\
# ddmq settings for every queue under this root; a queue's own ddmq.yaml
# overrides them, and a message's own values override both. Keys, defaults:
#   message_timeout: 600   # seconds a consumed message is leased
#   priority: 999          # default priority (lower = consumed first; 0 is highest)
#   requeue: true          # nack and lease expiry requeue (false: drop / dead-letter)
#   requeue_prio: 0        # priority of requeued messages
#   requeue_limit: null    # requeues allowed before dead-lettering (null = no limit)
#   fsync: false           # fsync on publish (survive a machine crash, ~2x slower on disk)
#   clean_interval: 5      # seconds between automatic housekeeping runs per client
#   retry_timeout: 30      # seconds transient filesystem errors are retried
#   poll_max: 1.0          # longest pause between looks at an empty queue while waiting
{}
"""

#: Files a queue folder may hold besides messages: ddmq's own, and ddmq 0.9's.
_QUEUE_FILES = (TMP, WORK, DEAD, SETTINGS_FILE, "ddmq.yaml.intermediate")

_INSTANCES = itertools.count()


def check_root_path(root: Any) -> str:
    """``root`` as a path (str), if it can name a root folder; else
    :class:`InvalidRootError`, before anything on disk changes: an empty
    path (which ``os.path.abspath`` would silently make the current folder),
    None or another type, a path with a NUL byte, or an existing non-folder."""
    if not isinstance(root, (str, bytes, os.PathLike)):
        raise InvalidRootError(f"the root must be the path of a folder, not {type(root).__name__} "
                               f"({root!r})")
    path = os.fsdecode(os.fspath(root))
    if not path.strip():
        raise InvalidRootError(f"the root path is empty ({root!r}); give the folder explicitly "
                               "(\".\" for the current folder)")
    if "\0" in path:
        raise InvalidRootError(f"the root path {path!r} holds a NUL character")
    st = protocol.stat(path, DEFAULTS["retry_timeout"])
    if st is not None and not stat_module.S_ISDIR(st.st_mode):
        raise InvalidRootError(f"the root {path} is not a folder")
    return path


class Root:
    """One root folder, opened by one process. Thread-safe.

    Raises :class:`RootMissingError` if ``path`` does not exist and
    :class:`RootUninitiatedError` if it holds no ``ddmq.yaml``; with
    ``create=True`` it makes both (the root mode 0700) and
    :meth:`require_queue` creates missing queues.
    """

    def __init__(self, path: str | os.PathLike, create: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.create = bool(create)
        retry = DEFAULTS["retry_timeout"]
        if not protocol.is_folder(self.path, retry):
            if not create:
                raise RootMissingError(f"root folder {self.path} does not exist")
            try:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
                os.chmod(self.path, 0o700)
            except OSError as err:
                raise FilesystemError(err, f"create root {self.path}") from err
        settings_path = os.path.join(self.path, SETTINGS_FILE)
        if not protocol.is_file(settings_path, retry):
            if not create:
                raise RootUninitiatedError(
                    f"root folder {self.path} is not initiated (no {SETTINGS_FILE})")
            try:
                protocol.atomic_write(settings_path, _ROOT_TEMPLATE.encode("utf-8"), exclusive=True)
            except OSError as err:
                raise FilesystemError(err, f"initiate root {self.path}") from err
        self.settings = SettingsCache(self.path)
        self.clock = ServerClock(self.path)
        self.watcher = FolderWatcher()
        #: brokers of one process on two mounts of one root claim apart (see Claimer)
        self.instance = next(_INSTANCES)
        local = reuse.filesystem_type(self.path) in reuse.REUSE_FILESYSTEMS
        #: on a local filesystem, where every change passes through this kernel
        #: (so inotify sees it) and a rename either happened or did not
        self.local = local
        #: acked files to rewrite for later publishes, on a local filesystem only
        self.spares = reuse.SparePool(SPARES_MAX) if local else None
        self._folders: dict[str, str] = {}

    # --- paths and settings ---------------------------------------------------------

    def queue_dir(self, queue: str) -> str:
        """The folder of ``queue``; InvalidNameError if the name is not valid."""
        try:
            return self._folders[queue]
        except (KeyError, TypeError):
            folder = os.path.join(self.path, check_queue_name(queue))
            self._folders[queue] = folder
            return folder

    def effective(self, queue: str = "") -> dict[str, Any]:
        """The effective settings of ``queue`` (shared: do not modify)."""
        return self.settings.effective(queue)

    def retry_timeout(self, queue: str = "") -> float:
        return float(self.settings.effective(queue)["retry_timeout"])

    def update_settings_file(self, folder: str, package: dict[str, Any]) -> None:
        """Set the keys of ``package`` in ``folder``'s ``ddmq.yaml``, atomically."""
        self.settings.forget(folder)
        values = dict(self.settings.file_values(folder))
        values.update(package)
        try:
            write_file(os.path.join(folder, SETTINGS_FILE), values)
        except OSError as err:
            raise FilesystemError(err, f"write settings of {folder}") from err
        self.settings.forget(folder)

    # --- queues ---------------------------------------------------------------------

    def queue_exists(self, queue: str) -> bool:
        """True if ``queue`` is a complete queue folder (``ddmq.yaml`` and ``work/``)."""
        folder = self.queue_dir(queue)
        retry = self.retry_timeout()
        # Folders and file themselves, never symbolic links: a link planted in
        # the root must not make ddmq purge or delete what it points to.
        return (protocol.is_folder(folder, retry, follow=False)
                and protocol.is_file(os.path.join(folder, SETTINGS_FILE), retry)
                and protocol.is_folder(os.path.join(folder, WORK), retry, follow=False))

    def require_queue(self, queue: str, create: bool | None = None) -> str:
        """The folder of ``queue``, which exists; created if missing and
        ``create`` (default: the root's ``create``), else QueueNotFoundError."""
        folder = self.queue_dir(queue)
        if not self.queue_exists(queue):
            if not (self.create if create is None else create):
                raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.path}")
            self.create_queue(queue)
        return folder

    def missing(self, queue: str) -> QueueNotFoundError:
        """The error for a queue found missing while it was used."""
        return QueueNotFoundError(f"queue {queue!r} does not exist in {self.path}")

    def create_queue(self, queue: str) -> None:
        """Create ``queue`` if it does not exist. Safe to race with other
        creators. The queue's ``ddmq.yaml`` starts empty, so it follows the root's."""
        folder = self.queue_dir(queue)
        timeout = self.retry_timeout()
        protocol.make_folder(folder, timeout)
        # work/ and then ddmq.yaml, which marks the queue complete. tmp/ and
        # dead/ are made when first needed (see ddmq.layout).
        protocol.make_folder(os.path.join(folder, WORK), timeout)
        path = os.path.join(folder, SETTINGS_FILE)
        if not protocol.is_file(path, timeout):
            try:
                write_file(path, {})
            except OSError as err:
                raise FilesystemError(err, f"create queue {queue}") from err
        log.info("created queue %s", queue)

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with all its messages, dead letters and settings.

        Raises QueueNotFoundError if missing, FilesystemError if the folder
        holds files ddmq did not make (nothing of them is deleted)."""
        folder = self.queue_dir(queue)
        if not protocol.is_folder(folder, self.retry_timeout(), follow=False):
            raise self.missing(queue)
        timeout = self.retry_timeout(queue)
        foreign = [n for n in protocol.list_if_there(folder, timeout, follow=False)
                   if n not in _QUEUE_FILES and not WaitingName.parse(n)
                   and not n.startswith(SETTINGS_FILE + ".tmp-")]
        if foreign:
            raise FilesystemError(OSError(39, "queue folder holds files ddmq did not make", foreign[0]),
                                  f"delete queue {queue}")
        self.watcher.forget(folder)
        if self.spares is not None:
            self.spares.forget(os.path.join(folder, TMP))
        for sub in (WORK, DEAD, TMP):
            path = os.path.join(folder, sub)
            if protocol.is_folder(path, timeout, follow=False):
                for name in protocol.list_if_there(path, timeout, follow=False):
                    protocol.remove(os.path.join(path, name), timeout)  # unlink: never follows
                protocol.remove_folder(path, timeout)
            elif protocol.lstat(path, timeout) is not None:  # a link or a file: only the name goes
                protocol.remove(path, timeout)
        for name in protocol.list_if_there(folder, timeout, follow=False):
            protocol.remove(os.path.join(folder, name), timeout)
        protocol.remove_folder(folder, timeout)
        self.settings.forget(folder)
        log.info("deleted queue %s", queue)

    def list_queues(self) -> list[str]:
        """Names of the queues in the root, sorted."""
        queues = []
        for name in sorted(protocol.list_if_there(self.path, self.retry_timeout())):
            try:
                if self.queue_exists(name):
                    queues.append(name)
            except InvalidNameError:
                continue
        return queues

    def message_path(self, path: str | os.PathLike | Message) -> str:
        """The full path of a waiting or at-work message file given as a path
        inside the root or as a consumed Message; InvalidNameError for
        anything else. The folders are resolved, the file itself never (a
        link planted with a message's name is not followed)."""
        if isinstance(path, Message):
            name = path.filename or ""
            sub = WORK if WorkName.parse(name) else ""
            path = os.path.join(self.path, check_queue_name(path.queue), sub, name)
        joined = os.path.join(self.path, os.fspath(path))
        parent = os.path.realpath(os.path.dirname(joined))
        name = os.path.basename(joined)
        full = os.path.join(parent, name)
        if parent.endswith(os.sep + WORK):
            parent = os.path.dirname(parent)
        ok_name = WaitingName.parse(name) or WorkName.parse(name)
        if not ok_name or os.path.dirname(parent) != os.path.realpath(self.path):
            raise InvalidNameError(f"{path!r} is not a message file of a queue in {self.path}")
        return full

    def close(self) -> None:
        """Release the folder watches, remove the files kept for reuse, and
        the ``tmp/`` folders they leave empty (see ddmq.layout)."""
        self.watcher.close()
        if self.spares is not None:
            for folder in self.spares.close():
                protocol.remove_folder_if_empty(folder)
