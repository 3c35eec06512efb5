"""Reading files inside a root, safely: never through a link, never anything but a regular file, never without bound.

A root may be shared with people who can write into it (a group-writable
project folder), so any name in it may be a symbolic link to a file outside,
a FIFO that would block a reader for ever, a folder, a device, or a huge
file. Every read of a file in a root goes through :func:`read` or
:func:`open_regular`: ``open(O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)``, then
``fstat`` (a regular file, at most ``limit`` bytes), else
:class:`~ddmq.errors.UnsafeFileError`, which callers turn into a dead
letter or a refusal. Transient errors of network filesystems are retried
with :func:`ddmq.protocol.retrying`'s policy.
"""

from __future__ import annotations

import errno
import os
import stat as stat_module

from .errors import UnsafeFileError
from .protocol import GONE_ERRNOS, _GONE, _slow

#: Flags of every open for reading inside the root: never through a symbolic
#: link (ELOOP), never blocking on a FIFO, never inherited by children.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str, limit: int | None = None,
                 dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading if it is a regular file (not a link, FIFO,
    folder, socket or device) of at most ``limit`` bytes; (fd, its stat).
    ``dir_fd``: ``path`` is relative to that open folder (see ``os.open``).
    Raises UnsafeFileError if it is not, FileNotFoundError if missing, and
    OSError for other failures of ``open``."""
    fd = _open_for_reading(path, dir_fd)
    try:
        st = os.fstat(fd)
        _check_regular(path, st, limit)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _open_for_reading(path: str, dir_fd: int | None) -> int:
    try:
        if dir_fd is None:
            return os.open(path, READ_FLAGS)
        return os.open(path, READ_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symbolic link: not followed") from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.ENXIO, errno.EOPNOTSUPP):
            raise UnsafeFileError(f"{path} cannot be read: {err.strerror}") from None
        raise


def _check_regular(path: str, st: os.stat_result, limit: int | None) -> None:
    if not _S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file ({_kind(st.st_mode)})")
    if limit is not None and st.st_size > limit:
        raise UnsafeFileError(f"{path} is {st.st_size} bytes, over the limit of {limit}")


_S_ISREG = stat_module.S_ISREG


def _kind(mode: int) -> str:
    kinds = {stat_module.S_IFDIR: "a folder", stat_module.S_IFIFO: "a FIFO", stat_module.S_IFSOCK:
             "a socket", stat_module.S_IFCHR: "a device", stat_module.S_IFBLK: "a device"}
    return kinds.get(stat_module.S_IFMT(mode), "not a file")


def _read_all(path: str, limit: int | None, dir_fd: int | None = None) -> bytes:
    # The hot path of every claim: os.open/os.read rather than open() (a
    # buffered file object costs an ioctl and two lseeks more), one fstat,
    # and one read of the size fstat said plus one byte (a regular file reads
    # short only at its end, so a short read needs no second read to confirm).
    fd = _open_for_reading(path, dir_fd)
    try:
        st = os.fstat(fd)
        _check_regular(path, st, limit)
        data = os.read(fd, st.st_size + 1)
        if len(data) <= st.st_size:
            return data
        chunks = [data]  # it grew after the fstat: read on, within the limit
        size = len(data)
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if limit is not None and size > limit:
                raise UnsafeFileError(f"{path} is over the limit of {limit} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)


def read(path: str, retry_timeout: float, limit: int | None = None,
         dir_fd: int | None = None) -> bytes | None:
    """The bytes of a file this process owns (claimed or taken); None if gone.

    Never follows a symbolic link and never opens anything but a regular
    file of at most ``limit`` bytes: UnsafeFileError otherwise. ``dir_fd``:
    ``path`` is relative to that open folder."""
    try:
        return _read_all(path, limit, dir_fd)
    except OSError as err:
        if err.errno in GONE_ERRNOS:
            return None
    data = _slow(lambda: _read_all(path, limit, dir_fd), f"read {path}", retry_timeout)
    return None if data is _GONE else data  # type: ignore[return-value]
