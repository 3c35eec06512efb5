"""Spill files: large payloads that travel beside their message instead of inside it.

A payload over :data:`ddmq.executor.envelope.INLINE_MAX` bytes would cost
more as base64 inside the JSON of a message than its transfer, so it is
pickled straight into a file of the *spill folder* of the executor it
belongs to, ``ROOT/.payloads/REPLY_QUEUE/``, and the envelope names the file
(``"file": NAME``)::

    executor --write TASK.task.X-->   .payloads/REPLY/  --read-->          worker
    executor <--read, release--       .payloads/REPLY/  <--write TASK.result.X-- worker

A file is written under a temporary name (``.tmp-NAME``), closed, and only
then renamed to NAME (:meth:`SpillWriter.commit`), before the message that
names it is published: a reader finds it whole or not at all. The executor
releases a result's file once it has read it, a task's file once the task is
over, and removes its whole folder at shutdown; folders of executors that
died are pruned by the next executor on the root.

:class:`SpillStore` is the spill folders of one root as one process sees
them. Where the root is on a local filesystem it keeps released files as
*spares* (:class:`ddmq.reuse.SparePool`, its own) and rewrites one for the
next payload written to their folder: its pages and blocks are there
already, a new file's are not.

**Folders are never followed.** ``.payloads`` and each spill folder in it are
opened with ``O_NOFOLLOW | O_DIRECTORY``, one step at a time (the file in it
is then opened relative to that descriptor), so a symbolic link planted as
``.payloads`` or as ``.payloads/REPLY`` never leads a read, a write or a
removal out of the root; to write or remove, the folders must also be this
user's. A planted folder makes a payload travel inline instead, and is left
where it is (a link is removed as a name, never followed).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from typing import Any, Sequence

from .. import protocol, reading, reuse
from ..backoff import wait_until
from ..errors import UnsafeFileError
from ..settings import DEFAULTS
from .errors import PayloadMissingError

log = logging.getLogger(__name__)

#: The folder of the spill folders, in the root.
SPILL_DIR = ".payloads"
#: Seconds to wait for a spill file that is not there (yet) on a network filesystem.
SPILL_WAIT = 5.0
#: Seconds transient filesystem errors are retried when a spill file is renamed to its name.
RETRY_TIMEOUT = float(DEFAULTS["retry_timeout"])
#: Spill files a process keeps for reuse per spill folder, and the largest
#: file kept (they hold their disk space until reused or removed).
SPARES_MAX = 8
SPARE_SIZE_MAX = 16 << 20

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}$")
#: How every folder of the spill store is opened: never through a symbolic link.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(path: str, dir_fd: int | None, own: bool) -> int:
    """A descriptor of the folder ``path`` (relative to ``dir_fd`` if given),
    itself and not a symbolic link to one; with ``own``, only a folder of this
    user. Raises UnsafeFileError if it is not, FileNotFoundError if missing."""
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFileError(f"{path} is not a folder (a symbolic link or a file): "
                                  "not followed") from None
        raise
    if own and os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise UnsafeFileError(f"{path} is a folder of another user: not written into")
    return fd


def _open_folder(folder: str, own: bool) -> int:
    """A descriptor of a spill folder ``.../.payloads/REPLY``, neither step
    followed if it is a link (see :func:`_open_dir`)."""
    parent, name = os.path.split(folder)
    parent_fd = _open_dir(parent, None, own)
    try:
        return _open_dir(name, parent_fd, own)
    finally:
        os.close(parent_fd)


def _remove_tree(dir_fd: int, name: str) -> bool:
    """Remove ``name`` in the open folder ``dir_fd`` with what it holds,
    never following a link (a link goes as a name); True if it is gone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return True
        fd = _open_dir(name, dir_fd, own=False)
        try:
            for entry in os.listdir(fd):
                _remove_tree(fd, entry)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return True
    except (OSError, UnsafeFileError):
        return False


def spill_folder(root: str | os.PathLike, reply: str) -> str:
    """The spill folder of the executor whose reply queue is ``reply``."""
    return os.path.join(os.fspath(root), SPILL_DIR, reply)


def valid_name(name: Any) -> bool:
    """True if ``name`` (from a message) may name a spill folder or file: it
    cannot lead out of its folder."""
    return isinstance(name, str) and _NAME.match(name) is not None


def payload_path(folder: str | None, name: Any) -> str | None:
    """The path of the spill file ``name`` in ``folder``; None if there is
    no folder or ``name`` is not valid (see :func:`valid_name`)."""
    if folder is None or not valid_name(name):
        return None
    return os.path.join(folder, name)


def read_payload(path: str, task: str) -> bytes:
    """The bytes of a spill file. A file another node has just written can
    take a moment to be seen here: it is waited for up to :data:`SPILL_WAIT`
    seconds, then :class:`PayloadMissingError` is raised. Like every read of
    ddmq (:func:`ddmq.reading.read`), a link is not followed, neither the
    file nor its folders (see the module docstring), and only a regular file
    is read: :class:`~ddmq.errors.UnsafeFileError` otherwise."""
    folder, name = os.path.split(path)

    def attempt() -> list[bytes]:  # a list, so that an empty file counts as found
        try:
            folder_fd = _open_folder(folder, own=False)
        except FileNotFoundError:
            return []
        try:
            data = reading.read(name, RETRY_TIMEOUT, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
        return [] if data is None else [data]

    found = wait_until(attempt, SPILL_WAIT, first=0.005, most=0.5)
    if not found:
        raise PayloadMissingError(f"the payload file of task {task} is gone: {path}")
    return found[0]


class SpillStore:
    """The spill folders of ``root``: writes, reads and releases their files,
    and makes and removes whole folders. Safe to share between threads."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        local = reuse.filesystem_type(self.root) in reuse.REUSE_FILESYSTEMS
        self._spares = reuse.SparePool(SPARES_MAX) if local else None

    def folder(self, reply: str) -> str:
        """The spill folder of reply queue ``reply``."""
        return spill_folder(self.root, reply)

    def file_of(self, doc: dict[str, Any], reply: str) -> str | None:
        """The path of the spill file an envelope sent to ``reply`` names, if any."""
        name = doc.get("file")
        return None if name is None else payload_path(self.folder(reply), name)

    def writer(self, reply: str, name: str) -> SpillWriter:
        """A new spill file ``name`` in the folder of ``reply``, to write and
        then commit. Raises OSError if it cannot be made (the folder is gone,
        or is not a folder of this user: a planted link is not written through)."""
        folder = self.folder(reply)
        temp = f"{folder}{os.sep}.tmp-{name}"
        path = f"{folder}{os.sep}{name}"
        try:
            folder_fd = _open_folder(folder, own=True)
        except UnsafeFileError as err:
            log.warning("not writing a spill file: %s", err)
            raise OSError(errno.EPERM, str(err), folder) from None
        try:
            # A spare (a payload file read and done with) is rewritten in place.
            if self._spares is not None and self._spares.take(folder, 1.0, private=temp) is not None:
                fd = _open_spare(temp)
                if fd is not None:
                    return SpillWriter(fd, temp, path, reused=True)
            fd = os.open(os.path.basename(temp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
        return SpillWriter(fd, temp, path, reused=False)

    def release(self, path: str) -> None:
        """A spill file is done with: remove it; on a local filesystem keep it
        as a spare for the next payload written to its folder, if it is not
        too large to keep."""
        if self._spares is not None:
            try:
                keep = os.lstat(path).st_size <= SPARE_SIZE_MAX
            except OSError:
                keep = False
            if keep and self._spares.retire(path, os.path.dirname(path)):
                return
        protocol.remove_quietly(path)

    def discard(self, doc: Any, reply: str) -> None:
        """Release the spill file of an envelope (read, or not to be read)."""
        path = self.file_of(doc, reply) if isinstance(doc, dict) else None
        if path is not None:
            self.release(path)

    def create(self, reply: str) -> str:
        """Create the spill folder of ``reply`` (private to the owner); its
        path. Where ``.payloads`` or the folder is not this user's own (a
        planted link, another user's folder), it is left as it is, with a
        warning: payloads then travel inline."""
        path = self.folder(reply)
        base = os.path.dirname(path)
        try:
            os.mkdir(base, 0o700)
        except FileExistsError:
            pass
        try:
            base_fd = _open_dir(base, None, own=True)
        except UnsafeFileError as err:
            log.warning("no spill folder for %s: %s; large payloads travel inline", reply, err)
            return path
        try:
            try:
                os.mkdir(reply, 0o700, dir_fd=base_fd)
            except FileExistsError:
                os.close(_open_dir(reply, base_fd, own=True))
        except UnsafeFileError as err:
            log.warning("no spill folder for %s: %s; large payloads travel inline", reply, err)
        finally:
            os.close(base_fd)
        return path

    def remove(self, reply: str) -> None:
        """Delete the spill folder of ``reply`` with whatever is left in it
        (a link in its place goes as a name: it is never followed)."""
        path = self.folder(reply)
        if self._spares is not None:
            self._spares.forget(path)
        try:
            base_fd = _open_dir(os.path.dirname(path), None, own=True)
        except (OSError, UnsafeFileError):
            return
        try:
            _remove_tree(base_fd, reply)
        finally:
            os.close(base_fd)

    def prune(self, queues: Sequence[str], older_than: float = 3600.0) -> list[str]:
        """Delete the spill folders whose reply queue is not in ``queues``
        (their executor died) and that did not change for ``older_than``
        seconds; the paths deleted. Nothing is followed (see :meth:`remove`)."""
        base = os.path.join(self.root, SPILL_DIR)
        try:
            base_fd = _open_dir(base, None, own=True)
        except FileNotFoundError:
            return []
        except (OSError, UnsafeFileError) as err:
            log.warning("not pruning spill folders: %s", err)
            return []
        removed = []
        try:
            for name in os.listdir(base_fd):
                try:
                    st = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
                except OSError:
                    continue
                if name not in queues and time.time() - st.st_mtime > older_than:
                    if _remove_tree(base_fd, name):
                        removed.append(os.path.join(base, name))
        finally:
            os.close(base_fd)
        return removed


def _open_spare(path: str) -> int | None:
    """Open a claimed spare to rewrite it; None (and it is removed) unless it
    is a regular file of this user with no other name: a hard link planted
    under a spare's name is never written through (see the README's trust model)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        protocol.remove_quietly(path)
        return None
    try:
        own = protocol.is_own_file(os.fstat(fd))
    except OSError:
        own = False
    if not own:
        os.close(fd)
        protocol.remove_quietly(path)
        return None
    return fd


class SpillWriter:
    """One spill file being written (see :meth:`SpillStore.writer`):
    :meth:`write` as often as needed, then :meth:`commit` or :meth:`discard`."""

    __slots__ = ("_fd", "_temp", "path", "_reused", "_size", "_open")

    def __init__(self, fd: int, temp: str, path: str, reused: bool):
        self._fd = fd
        self._temp = temp
        self.path = path
        self._reused = reused
        self._size = 0
        self._open = True

    def write(self, data: Any) -> None:
        """Write all of ``data`` (bytes or any buffer)."""
        view = memoryview(data).cast("B")
        self._size += len(view)
        protocol.write_all(self._fd, view)

    def commit(self) -> None:
        """Close the file and rename it to its name: it appears whole."""
        self._open = False
        try:
            try:
                if self._reused:  # the spare may have been longer
                    os.ftruncate(self._fd, self._size)
            finally:
                os.close(self._fd)
            if not protocol.move(self._temp, self.path, RETRY_TIMEOUT):
                raise FileNotFoundError(errno.ENOENT, "the spill file was removed while written",
                                        self._temp)
        except BaseException:
            protocol.remove_quietly(self._temp)
            raise

    def discard(self) -> None:
        """Drop what was written."""
        if self._open:
            self._open = False
            protocol.close_quietly(self._fd)
        protocol.remove_quietly(self._temp)
