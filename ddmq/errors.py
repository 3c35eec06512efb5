"""The exceptions ddmq raises, one type for each thing that can go wrong.

Every error the library raises on purpose derives from :class:`DdmqError`, so a
caller can catch them all at once; the ones that are also a kind of
``ValueError`` or ``OSError`` inherit from that type too, so code written for
the standard library's exceptions keeps working.
"""

from __future__ import annotations

import errno as _errno
import os


class DdmqError(Exception):
    """Base class of every error ddmq raises on purpose."""


class RootError(DdmqError):
    """The root folder cannot be used as a ddmq root."""


class RootMissingError(RootError):
    """The root folder does not exist (use ``create=True`` or ``-f`` to make it)."""


class RootUninitiatedError(RootError):
    """The root folder exists but holds no ``ddmq.yaml``: it is not a ddmq root."""


class InvalidRootError(RootError, ValueError):
    """The root given is not a path to a folder: empty (which would silently
    mean the current folder), None or another type, or a file."""


class QueueNotFoundError(DdmqError):
    """The named queue does not exist in the root."""


class InvalidNameError(DdmqError, ValueError):
    """A queue or message file name is not allowed (queue names match ``[A-Za-z0-9_-]+``)."""


class InvalidMessageError(DdmqError, ValueError):
    """A message cannot be published: bad priority, timeout or limit, or text that is not JSON."""


class MessageNotFoundError(DdmqError):
    """The message file named does not exist (any more)."""


class LeaseLostError(DdmqError):
    """The work file of a consumed message is gone: its lease expired and it was
    requeued or dead-lettered by housekeeping, or it was acked already.

    ``missing`` lists the work file names that were gone.
    """

    def __init__(self, message: str, missing: list[str] | None = None):
        super().__init__(message)
        self.missing = list(missing or [])


class UnsafeFileError(DdmqError):
    """A file in the root is not what its name says, and ddmq will not read
    or write it: a symbolic link, a FIFO, a folder, a socket or device, a
    file that cannot be read, a file over the size limit, or (for a file
    ddmq would rewrite) one that is not this process's own. A message file
    of this kind is dead-lettered as ``unparseable``, never followed."""


class SettingsError(DdmqError):
    """A ``ddmq.yaml`` file cannot be parsed, or holds a value of the wrong type."""


class FilesystemError(DdmqError, OSError):
    """An operating-system error on the queue's files that retrying did not cure:
    no space, no permission, a read-only or unreachable file system.

    Carries ``errno``, ``strerror`` and ``filename`` like the ``OSError`` it wraps.
    """

    def __init__(self, err: OSError, action: str = ""):
        code = err.errno if err.errno is not None else _errno.EIO
        reason = err.strerror or os.strerror(code)
        OSError.__init__(self, code, reason, err.filename)
        self.action = action

    def __str__(self) -> str:
        where = f" ({self.filename})" if self.filename else ""
        what = f"cannot {self.action}: " if self.action else ""
        return f"{what}{self.strerror}{where}"
