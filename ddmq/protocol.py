"""The filesystem protocol: every step that touches a queue's files, and why it is safe.

A queue is a folder. Each step below is one atomic filesystem operation, so a
process may die between any two steps and no message is lost; at worst one is
delivered twice (at-least-once), never half-written and never to two
consumers at once while its lease holds::

    publisher                 <queue>/                      consumer
    ---------                 --------                      --------
    write tmp/TOKEN  --rename-->  PRIO.QNUM.ddmqID
                                       |
                                       +--rename--> work/EXPIRY.PRIO.QNUM.ddmqID  (claim)
                                                         |      |        |
                      ack:  unlink  <--------------------+      |        |
                      extend: rename to work/LATER.PRIO...  <---+        |
                      requeue (nack, lease expiry):                      |
                        rename to tmp/requeue.NOW.TOKEN.NAME  <----------+
                        publish a copy (counter + 1), then unlink the private file
                      poison: rename to dead/REASON.PRIO.QNUM.ddmqID

1. **Publish** writes the message to a temporary file with a unique name
   (host, pid, random) in ``tmp/``, which no scanner reads, closes it
   (optionally fsyncs it) and renames it into the queue. ``rename`` is atomic,
   so readers see the whole file or nothing; a publisher killed before the
   rename leaves only a temporary file, removed by housekeeping once old.
2. **Claim** renames the waiting file into ``work/`` under its lease expiry.
   Exactly one of several renamers wins; the others get ``ENOENT`` (or
   ``ESTALE`` on NFS) and move on. The file is read only after the rename.
3. **Ack** unlinks the work file. If it is gone the lease was lost (it
   expired and was requeued): the caller is told. On a local filesystem it
   is renamed to a *spare* in ``tmp/`` instead (as atomic; "gone" means the
   same), which a publisher to the queue claims and rewrites rather than
   create a file (see :mod:`ddmq.reuse`).
4. **Requeue** first takes the work file by renaming it to a private name in
   ``tmp/`` (so two housekeepers cannot both requeue it), then publishes the
   copy through step 1, then unlinks the private file. A process killed in
   between leaves the private file, which housekeeping requeues once stale.
5. **Lease extension** renames the work file to a later expiry; failure means
   the lease was lost.
6. **Poison** (unparseable, past its requeue limit) is renamed into ``dead/``.

Never used, because each fails on some network filesystem: ``flock``/``fcntl``
locks, ``O_APPEND``, SQLite, or trusting one directory listing to be complete.
Transient errors of network filesystems (``EIO``, ``ENOTCONN``, ``ETIMEDOUT``,
``ESTALE`` on a folder) are retried with back-off for a bounded time, then
raised as :class:`~ddmq.errors.FilesystemError`.

Lease expiry is judged by the file server's clock, which every node can read:
:class:`ServerClock` learns its offset from the modification time the server
stamps on a new file.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import stat as stat_module
import threading
import time
import uuid
from typing import Callable, TypeVar

import tenacity

from .errors import FilesystemError

log = logging.getLogger(__name__)

T = TypeVar("T")

WORK = "work"
TMP = "tmp"
DEAD = "dead"
REQUEUE_PREFIX = "requeue."

#: errno values a network filesystem returns for a moment and then recovers from.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.ETIMEDOUT, errno.ESTALE,
                              errno.EAGAIN, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH,
                              # a GlusterFS client's answer while it reconnects to its server
                              getattr(errno, "EBADFD", 77)})
#: errno values that mean "the file is not there (any more)": another process took it.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})

_HOST = socket.gethostname().split(".")[0].replace("/", "_") or "host"
_token_lock = threading.Lock()
_token = ""
_token_count = 0
_claimer = ""


def unique_token() -> str:
    """A name part no other process on any node will produce: host.pid.random.count."""
    global _token_count
    with _token_lock:
        if not _token:
            _new_token()
        _token_count += 1
        return f"{_token}.{_token_count}"


def claimer_tag() -> str:
    """This process's tag for the work names of the messages it claims.

    A claim must never rename onto a name that may exist: a node that still
    has a claimed message's old name in its cache (NFS attribute cache, FUSE
    entry timeout) would rename it onto the work file another node made, and
    a rename of a file onto itself succeeds without asking the server.
    With the claimer's tag in the work name the two names differ, so the
    server is asked, and answers ENOENT."""
    with _token_lock:
        if not _token:
            _new_token()
        return _claimer


def _new_token() -> None:
    global _token, _token_count, _claimer
    random = uuid.uuid4().hex
    _token, _token_count = f"{_HOST}.{os.getpid()}.{random[:8]}", 0
    _claimer = random[8:16]


if hasattr(os, "register_at_fork"):  # a forked child must not reuse its parent's names
    os.register_at_fork(after_in_child=_new_token)


def is_transient(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in TRANSIENT_ERRNOS


def retrying(op: Callable[[], T], action: str, retry_timeout: float,
             transient: frozenset[int] = TRANSIENT_ERRNOS) -> T:
    """Run ``op``; retry it while it fails with a transient error, for at most
    ``retry_timeout`` seconds, then raise :class:`FilesystemError`.

    Other ``OSError`` s are raised at once as :class:`FilesystemError`, except
    ``FileNotFoundError``, which callers handle themselves.
    """
    try:
        return op()
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno not in transient:
            raise FilesystemError(err, action) from err
        first = err
    log.warning("%s: %s; retrying for up to %ss", action, first, retry_timeout)
    try:
        for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception(lambda e: isinstance(e, OSError)
                                                  and e.errno in transient),
                stop=tenacity.stop_after_delay(retry_timeout),
                wait=tenacity.wait_exponential(multiplier=0.01, max=2.0),
                reraise=True):
            with attempt:
                return op()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise FilesystemError(err, action) from err
    raise AssertionError("unreachable")  # pragma: no cover


# --- the steps -----------------------------------------------------------------

def write_new_file(tmp_dir: str, final_path: str, data: bytes, fsync: bool,
                   retry_timeout: float, spare: str | None = None) -> None:
    """Step 1: make ``final_path`` appear with ``data``, all at once.

    ``spare``: a file of this process alone (a spare it claimed, see
    :mod:`ddmq.reuse`) to rewrite instead of creating a new one; it is used
    up either way. Raises
    FileNotFoundError if ``tmp_dir`` or the destination folder is missing,
    FilesystemError for other failures (after retrying transient ones).
    Leaves no temporary file behind when it fails.
    """
    if spare is not None and _rewrite(spare, final_path, data, fsync):
        return
    temp = ""

    def write() -> None:
        nonlocal temp
        temp = f"{tmp_dir}{os.sep}{unique_token()}"  # a fresh name for every attempt
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            written = os.write(fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            remove_quietly(temp)
            raise
        os.close(fd)

    try:
        write()
    except FileNotFoundError:
        raise
    except OSError:
        retrying(write, f"write a message file in {tmp_dir}", retry_timeout,
                 TRANSIENT_ERRNOS - {errno.ESTALE})
    try:
        os.rename(temp, final_path)
    except FileNotFoundError:
        remove_quietly(temp)
        raise
    except OSError:
        try:
            retrying(lambda: os.rename(temp, final_path), f"publish {final_path}", retry_timeout)
        except FileNotFoundError:
            # The temporary file is ours alone and far younger than the age at which
            # housekeeping removes stale ones (broker.TMP_MAX_AGE_SECONDS), so
            # if it is gone while the destination folder is there, the failed try
            # did the rename: the server did it and its answer was lost. Publishing
            # again would put a second copy in the queue.
            if not is_folder(os.path.dirname(final_path), retry_timeout):
                remove_quietly(temp)
                raise
            log.warning("publish %s: the rename reported failed had been done: published once",
                        final_path)
        except BaseException:
            remove_quietly(temp)
            raise
    except BaseException:
        remove_quietly(temp)
        raise
    if fsync:
        fsync_folder(os.path.dirname(final_path))


def _rewrite(spare: str, final_path: str, data: bytes, fsync: bool) -> bool:
    """Publish ``data`` by rewriting the spare file and renaming it to
    ``final_path``. False if that cannot be done (the spare was removed by
    housekeeping, or lies on another filesystem): the spare is then gone and
    the caller publishes the usual way. Spares exist on local filesystems
    only, where a failed rename did not happen."""
    try:
        fd = os.open(spare, os.O_WRONLY)
        try:
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], written)
            # Shrink within the file's last block rather than truncate to zero,
            # which would free the block and allocate it again.
            os.ftruncate(fd, len(view))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(spare, final_path)
    except OSError as err:
        log.debug("cannot reuse %s (%s): writing a new file", spare, err)
        remove_quietly(spare)
        return False
    if fsync:
        fsync_folder(os.path.dirname(final_path))
    return True


def rename_local(src: str, dst: str) -> bool | None:
    """Rename ``src`` to ``dst`` on a local filesystem, where a rename either
    happened or did not: True if done; False if ``src`` was gone; None if it
    cannot be done (``dst``'s folder is missing, as in a queue of ddmq 0.9,
    which has no ``tmp/``; or another error). Steps 3 (retiring an acked file
    as a spare) and 1 (claiming a spare to rewrite) where files are reused."""
    try:
        os.rename(src, dst)
        return True
    except FileNotFoundError:
        return None if os.path.lexists(src) else False
    except OSError:
        return None


def fsync_folder(path: str) -> None:
    """Make a rename into ``path`` durable (no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move(src: str, dst: str, retry_timeout: float) -> bool:
    """Steps 2, 4 (take), 5 and 6: rename ``src`` to ``dst``.

    True if this process moved it; False if ``src`` was gone (``ENOENT`` or
    ``ESTALE``): another process took it first. After a retried rename, a
    ``ENOENT`` may hide our own earlier success; the file then waits in
    ``dst`` until its lease expires, so it is delayed, not lost.
    """
    try:
        os.rename(src, dst)
        return True
    except OSError as err:
        if err.errno in GONE_ERRNOS:
            return False
    return _slow(lambda: os.rename(src, dst), f"rename {src}", retry_timeout) is not _GONE


_GONE = object()


def _slow(op: Callable[[], T], action: str, retry_timeout: float) -> T | object:
    """The retrying path of an operation whose first try failed: ``_GONE`` if
    the file turns out to be gone, else what ``op`` returns."""
    try:
        return retrying(op, action, retry_timeout, TRANSIENT_ERRNOS - {errno.ESTALE})
    except FileNotFoundError:
        return _GONE
    except FilesystemError as err:
        if err.errno == errno.ESTALE:
            return _GONE
        raise


def remove(path: str, retry_timeout: float) -> bool:
    """Step 3: unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
        return True
    except OSError as err:
        if err.errno in GONE_ERRNOS:
            return False
    return _slow(lambda: os.unlink(path), f"remove {path}", retry_timeout) is not _GONE


def _read_all(path: str) -> bytes:
    # os.open/os.read rather than open(): a buffered file object costs an
    # fstat, an ioctl and two lseeks more per message.
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read(path: str, retry_timeout: float) -> bytes | None:
    """The bytes of a file this process owns (claimed or taken); None if gone."""
    try:
        return _read_all(path)
    except OSError as err:
        if err.errno in GONE_ERRNOS:
            return None
    data = _slow(lambda: _read_all(path), f"read {path}", retry_timeout)
    return None if data is _GONE else data  # type: ignore[return-value]


def list_folder(path: str, retry_timeout: float) -> list[str]:
    """Names in a folder (a hint: on a network filesystem it may be stale).

    Raises FileNotFoundError if the folder is missing.
    """
    return retrying(lambda: os.listdir(path), f"list {path}", retry_timeout)


def stat(path: str, retry_timeout: float) -> os.stat_result | None:
    """``os.stat(path)``, or None if there is nothing at ``path``.

    Unlike ``os.path.exists``, an error that is not "missing" (a server outage,
    no permission) is never taken for "missing": it is retried if transient,
    else raised as FilesystemError."""
    try:
        return retrying(lambda: os.stat(path), f"look at {path}", retry_timeout)
    except FileNotFoundError:
        return None
    except FilesystemError as err:
        if err.errno == errno.ENOTDIR:
            return None
        raise


def is_folder(path: str, retry_timeout: float) -> bool:
    """True if ``path`` is a folder; see :func:`stat` for errors."""
    st = stat(path, retry_timeout)
    return st is not None and stat_module.S_ISDIR(st.st_mode)


def is_file(path: str, retry_timeout: float) -> bool:
    """True if ``path`` is a regular file; see :func:`stat` for errors."""
    st = stat(path, retry_timeout)
    return st is not None and stat_module.S_ISREG(st.st_mode)


def make_folder(path: str, retry_timeout: float, mode: int = 0o777) -> None:
    """Create ``path`` if missing (another process creating it too is fine)."""
    def mkdir() -> None:
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not is_folder(path, retry_timeout):
                raise
    retrying(mkdir, f"create folder {path}", retry_timeout)


def remove_quietly(path: str) -> None:
    """Unlink ``path`` (a file of this process alone) if it is there; errors are ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


# --- time ------------------------------------------------------------------------

#: A clock probe slower than this bounds the offset too loosely to be used.
MAX_PROBE_SECONDS = 0.5


class ServerClock:
    """The file server's clock, as seen from this process.

    Nodes' clocks may differ by minutes; the file server stamps a newly created
    file with its own time, a clock every node can read. Every
    ``refresh_seconds`` the offset between the server and this process is
    measured by creating a probe file in ``folder`` and reading its
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

    @property
    def offset(self) -> float:
        """Server clock minus local clock, in seconds."""
        return self._offset

    def _measure(self) -> None:
        probe = os.path.join(self.folder, f".clock.{unique_token()}")
        try:
            before = time.time()
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
