"""The filesystem protocol: every transition of a message file, and why each is safe.

A queue is a folder (file names: :mod:`ddmq.layout`). Each transition below
is one atomic filesystem operation, or a sequence of them in which a process
may die between any two steps and no message is lost; at worst one is
delivered twice (at-least-once), never half-written and never to two
consumers at once while its lease holds::

    publisher                 QUEUE/                        consumer
    ---------                 ------                        --------
    write tmp/TOKEN  --rename-->  PRIO.QNUM.ddmqID                       (publish)
                                       |
                                       +--rename--> work/EXPIRY.PRIO.QNUM.ddmqID.CLAIMER  (claim)
                                                         |      |        |
                      ack:  unlink or retire to tmp/spare.TOKEN |        |   (retire)
                      extend: rename to work/LATER.PRIO...  <---+        |   (extend)
                      nack, lease expiry:                                |
                        rename to tmp/requeue.NOW.TOKEN.PRIO.QNUM.ddmqID <-+ (take)
                        publish a copy (counter + 1), then unlink it        (requeue)
                      poison: rename to dead/REASON.PRIO.QNUM.ddmqID        (dead_letter)

    consumer without a lease (auto-ack): read PRIO.QNUM.ddmqID where it waits, then
      rename it to tmp/spare.TOKEN or tmp/TOKEN (and unlink that): the
      rename decides who received it                                     (receive)

This module is the only one in ddmq that renames, replaces or links files
(``os.rename``, ``os.replace``, ``os.link``): every other module calls one
of the transitions (:func:`publish`, :func:`claim`, :func:`extend`,
:func:`take`, :func:`requeue`, :func:`dead_letter`, :func:`retire`,
:func:`receive`) or
:func:`atomic_write` / :func:`atomic_file` (settings, heartbeats, the
secret, spill files), and retries through :func:`retrying`.

Never used, because each fails on some network filesystem: ``flock``/``fcntl``
locks, ``O_APPEND``, SQLite, or trusting one directory listing to be complete.
Transient errors of network filesystems (``EIO``, ``ENOTCONN``, ``ETIMEDOUT``,
``ESTALE`` on a folder) are retried with back-off for a bounded time, then
raised as :class:`~ddmq.errors.FilesystemError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_module
from typing import Callable, Iterator, TypeVar

import tenacity

from .errors import FilesystemError, UnsafeFileError
from .layout import DEAD, TMP, WORK, DeadName, RequeueName, temporary_name, unique_token

log = logging.getLogger(__name__)

T = TypeVar("T")

#: errno values a network filesystem returns for a moment and then recovers from.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.ETIMEDOUT, errno.ESTALE,
                              errno.EAGAIN, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH,
                              # a GlusterFS client's answer while it reconnects to its server
                              getattr(errno, "EBADFD", 77)})
#: errno values that mean "the file is not there (any more)": another process took it.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})
#: How often a move into a folder that others may be removing is tried.
_FOLDER_ATTEMPTS = 5


def retrying(op: Callable[[], T], action: str, retry_timeout: float,
             transient: frozenset[int] = TRANSIENT_ERRNOS) -> T:
    """The one retry policy: run ``op``; retry it while it fails with a
    transient error, for at most ``retry_timeout`` seconds, then raise
    :class:`FilesystemError`.

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


# --- the transitions -------------------------------------------------------------

def publish(queue_dir: str, waiting: str, data: bytes, *, fsync: bool, retry_timeout: float,
            spare: str | None = None) -> None:
    """Make ``QUEUE/WAITING`` appear with ``data``, all at once.

    Safe because the data is written to a temporary file in ``tmp/`` (a
    fresh :func:`~ddmq.layout.temporary_name` per attempt, which no scanner
    reads), closed (fsynced if asked), and only then renamed into the queue:
    ``rename`` is atomic, so consumers see the whole file or nothing. A
    publisher killed before the rename leaves only a temporary file, which
    housekeeping removes once old. A rename reported failed whose temporary
    file is gone was done by the server (its answer was lost): it is not
    done again, so the message is published once.

    ``spare``: a file of this process alone (a spare it claimed, see
    :mod:`ddmq.reuse`) to rewrite instead of creating one; used up either way.
    Raises FileNotFoundError if ``tmp/`` or the queue folder is missing,
    FilesystemError for other failures (after retrying transient ones).
    Leaves no temporary file behind when it fails.
    """
    final = f"{queue_dir}{os.sep}{waiting}"
    if spare is not None and _rewrite(spare, final, data, fsync):
        return
    tmp = f"{queue_dir}{os.sep}{TMP}"
    temp = ""

    def write() -> None:
        nonlocal temp
        temp = f"{tmp}{os.sep}{temporary_name()}"
        _write_new(temp, data, 0o666, fsync)

    try:
        write()
    except FileNotFoundError:
        raise
    except OSError:
        retrying(write, f"write a message file in {tmp}", retry_timeout,
                 TRANSIENT_ERRNOS - {errno.ESTALE})
    try:
        os.rename(temp, final)
    except FileNotFoundError:
        remove_quietly(temp)
        raise
    except OSError:
        try:
            retrying(lambda: os.rename(temp, final), f"publish {final}", retry_timeout)
        except FileNotFoundError:
            # The temporary file is ours alone and far younger than the age at which
            # housekeeping removes stale ones, so if it is gone while the queue folder
            # is there, the failed try did the rename and its answer was lost.
            if not is_folder(queue_dir, retry_timeout):
                remove_quietly(temp)
                raise
            log.warning("publish %s: the rename reported failed had been done: published once",
                        final)
        except BaseException:
            remove_quietly(temp)
            raise
    except BaseException:
        remove_quietly(temp)
        raise
    if fsync:
        fsync_folder(queue_dir)


def claim(queue_dir: str, waiting: str, work: str, retry_timeout: float) -> bool:
    """Rename ``QUEUE/WAITING`` to ``QUEUE/work/WORK``: True if this process
    now holds the message (and only then may read it).

    Safe because exactly one of several renamers of one file wins; the
    others get ``ENOENT`` (or ``ESTALE`` on NFS) and move on. The work name
    carries the claimer's tag, so it differs from any other process's (see
    :func:`~ddmq.layout.claimer_tag`). After a retried rename, an ``ENOENT``
    may hide our own earlier success: the file then waits in ``work/`` until
    its lease expires, so it is delayed, not lost.
    """
    return move(f"{queue_dir}{os.sep}{waiting}", f"{queue_dir}{os.sep}{WORK}{os.sep}{work}",
                retry_timeout)


def extend(queue_dir: str, old_work: str, new_work: str, retry_timeout: float) -> bool:
    """Renew a lease: rename ``work/OLD`` to ``work/NEW`` (a later expiry).
    False if the work file was gone: the lease was lost.

    Safe because housekeeping takes an expired work file by renaming it
    too: of the two renames exactly one succeeds, so a message is either
    extended and still ours, or requeued and no longer ours, never both.
    When the name does not change, the file is only looked at (never
    ``os.path.exists``, which takes a server outage for "gone")."""
    work = f"{queue_dir}{os.sep}{WORK}{os.sep}"
    if new_work == old_work:
        return lstat(work + old_work, retry_timeout) is not None
    return move(work + old_work, work + new_work, retry_timeout)


def take(queue_dir: str, path: str, waiting: str, now: float, retry_timeout: float) -> str | None:
    """First step of a requeue or a dead-lettering: rename ``path`` (a work
    file, or an abandoned requeue) to a private name in ``tmp/``
    (:class:`~ddmq.layout.RequeueName`, stamped ``now``); that name, or None
    if another process took it first.

    Safe because only one process can rename a given file, so two
    housekeepers (or a housekeeper and a nack) never both requeue one
    message. A process killed after this step leaves the private file,
    which housekeeping finishes once it is older than
    ``REQUEUE_STALE_SECONDS`` (by ``now`` in its name). ``tmp/`` is created
    if missing (queues made by ddmq 0.9 have none)."""
    private = (f"{queue_dir}{os.sep}{TMP}{os.sep}"
               f"{RequeueName(int(now), unique_token(), waiting).format()}")
    return private if _move_creating_folder(path, private, retry_timeout) else None


def requeue(queue_dir: str, private: str, waiting: str, data: bytes, *, fsync: bool,
            retry_timeout: float, spare: str | None = None) -> None:
    """Second and last steps of a requeue: publish ``data`` (the message
    with its new counter, priority and number) as ``QUEUE/WAITING``, then
    unlink the private file :func:`take` made.

    Safe because the copy is complete in the queue before the private file
    goes: a process killed in between leaves both, and housekeeping's later
    requeue of the private file makes a second copy (at-least-once: the
    message is delivered twice, never lost)."""
    publish(queue_dir, waiting, data, fsync=fsync, retry_timeout=retry_timeout, spare=spare)
    remove(private, retry_timeout)


def dead_letter(queue_dir: str, path: str, reason: str, waiting: str, retry_timeout: float) -> bool:
    """Move ``path`` (a work file or a private file of :func:`take`) to
    ``dead/REASON.WAITING``, for a person to inspect; False if it was gone.

    Safe as one rename: the message is in exactly one place, and never
    silently deleted. ``dead/`` is created if missing (ddmq 0.9's queues)."""
    target = f"{queue_dir}{os.sep}{DEAD}{os.sep}{DeadName(reason, waiting).format()}"
    return _move_creating_folder(path, target, retry_timeout)


def undead(queue_dir: str, dead: str, waiting: str, retry_timeout: float) -> bool:
    """Put the dead letter ``dead/DEAD`` back in the queue as ``WAITING``;
    False if it was gone. One rename, as safe as :func:`claim`."""
    return move(f"{queue_dir}{os.sep}{DEAD}{os.sep}{dead}", f"{queue_dir}{os.sep}{waiting}",
                retry_timeout)


def retire(queue_dir: str, work: str, retry_timeout: float,
           make_spare: Callable[[str, str], bool | None] | None = None) -> bool:
    """The end of an acked message: unlink ``work/WORK``, or where files
    are reused let ``make_spare(path, tmp_folder)`` rename it to a spare in
    ``tmp/`` (see :mod:`ddmq.reuse`). False if the work file was gone: the
    lease was lost (housekeeping took it when it expired).

    Safe because unlinking and renaming away are both single operations that
    fail for every process but one; a spare is claimed by one rename too, and
    is used only on local filesystems, where a reader that raced with its
    reuse finds another message id in it (see Broker)."""
    path = f"{queue_dir}{os.sep}{WORK}{os.sep}{work}"
    if make_spare is not None:
        retired = make_spare(path, f"{queue_dir}{os.sep}{TMP}")
        if retired is not None:
            return retired
    return remove(path, retry_timeout)


def receive(queue_dir: str, waiting: str, retry_timeout: float,
            make_spare: Callable[[str, str], bool | None] | None = None) -> bool:
    """The last step of consuming ``QUEUE/WAITING`` without a lease
    (auto-ack), after the caller read it where it waits: take it out of the
    queue. True if this process did, and so received the message (and may
    keep what it read); False if another process took it first (the caller
    drops what it read).

    Safe for competing consumers because the file leaves the queue by one
    rename (to a spare, ``make_spare(path, tmp_folder)``, see
    :mod:`ddmq.reuse`; else to a private name in ``tmp/``, then unlinked),
    which exactly one process can do; a claim (:func:`claim`) racing with it
    is one rename too, so a message is either received or claimed, once. What
    the winner read is the message: a name in a queue folder is never
    written to once renamed in (files are rewritten only under names in
    ``tmp/``, and a message's name is unique), so the file it renamed away
    held the bytes it read from the start of its read (a file that ddmq
    0.9, which writes final names directly, is still writing does not parse:
    the caller claims such a file instead, see :mod:`ddmq.claiming`). A reader that lost
    read a file that was taken, or reused, meanwhile: it drops what it read.
    A rename reported failed whose private name exists was done (a network
    filesystem lost the answer): received once. There is no lease: a
    receiver that dies after this step loses the message (at-most-once), so
    it is for queues whose messages are worthless once their one reader is
    gone (a driver's reply queue). ``tmp/`` is created if missing."""
    path = f"{queue_dir}{os.sep}{waiting}"
    tmp = f"{queue_dir}{os.sep}{TMP}"
    if make_spare is not None:
        retired = make_spare(path, tmp)
        if retired is not None:
            return retired
    private = f"{tmp}{os.sep}{temporary_name()}"
    if _move_creating_folder(path, private, retry_timeout) or lstat(private, retry_timeout) is not None:
        remove(private, retry_timeout)
        return True
    return False


def _move_creating_folder(path: str, target: str, retry_timeout: float) -> bool:
    """:func:`move`, creating the target's folder if it is missing: False
    only if ``path`` was gone (another process took it).

    A failed rename whose ``path`` is still there found the folder missing:
    made again, and the rename tried again. Others may be making it at the
    same moment (the first dead letters of several processes) or removing it
    while empty (housekeeping, see :mod:`ddmq.housekeeping`), so whether the
    folder exists *now* says nothing about the rename that failed."""
    folder = os.path.dirname(target)
    for _ in range(_FOLDER_ATTEMPTS):
        if move(path, target, retry_timeout):
            return True
        if lstat(path, retry_timeout) is None:
            return False
        make_folder(folder, retry_timeout)
    raise FilesystemError(FileNotFoundError(errno.ENOENT, "its folder keeps disappearing", folder),
                          f"move {path} into {folder}")


def _rewrite(spare: str, final: str, data: bytes, fsync: bool) -> bool:
    """Publish ``data`` by rewriting the spare file and renaming it to
    ``final``. False if that cannot be done (the spare was removed by
    housekeeping, or lies on another filesystem): the spare is then gone and
    the caller publishes the usual way. Spares exist on local filesystems
    only, where a failed rename did not happen."""
    try:
        fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not is_own_file(os.fstat(fd)):
                raise UnsafeFileError(f"{spare} is not a file of this process's own")
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
        os.rename(spare, final)
    except (OSError, UnsafeFileError) as err:
        log.debug("cannot reuse %s (%s): writing a new file", spare, err)
        remove_quietly(spare)
        return False
    if fsync:
        fsync_folder(os.path.dirname(final))
    return True


def is_own_file(st: os.stat_result) -> bool:
    """Whether a file (by its ``fstat``) may be rewritten in place: a regular
    file of this user with no other name (a hard link to a file outside the
    root, planted under a spare's name, must never be written through)."""
    return (stat_module.S_ISREG(st.st_mode) and st.st_nlink == 1
            and st.st_uid == os.geteuid())


# --- atomic writes of other files ------------------------------------------------

@contextlib.contextmanager
def atomic_file(path: str, *, mode: int = 0o666, fsync: bool = False,
                exclusive: bool = False) -> Iterator[int]:
    """Write a file that appears at ``path`` whole or not at all.

    Yields the descriptor of a new temporary file beside ``path``; when the
    block ends without an exception, the file is closed (fsynced if asked)
    and renamed over ``path`` (readers see the old or the new file, never a
    mix); with ``exclusive``, hard-linked to ``path`` instead, so it appears
    only if nothing is there yet: of many racing creators exactly one wins
    (the others' files are dropped), and where the filesystem has no hard
    links, ``path`` is created with ``O_EXCL`` and written in place.
    The temporary file never outlives the block.
    """
    temp = f"{path}.tmp-{unique_token()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            yield fd
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not exclusive:
            os.replace(temp, path)
            return
        try:
            os.link(temp, path)
        except FileExistsError:
            return
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            with open(temp, "rb") as handle:
                _write_new(path, handle.read(), mode, fsync, exist_ok=True)
    finally:
        remove_quietly(temp)


def atomic_write(path: str, data: bytes, *, mode: int = 0o666, fsync: bool = False,
                 exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, mode=mode, fsync=fsync, exclusive=exclusive) as fd:
        write_all(fd, data)


def _write_new(path: str, data: bytes, mode: int, fsync: bool, exist_ok: bool = False) -> None:
    """Create ``path`` with ``data`` (removed again on failure); if it exists,
    FileExistsError, or with ``exist_ok`` nothing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        if exist_ok:
            return
        raise
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until all of ``data`` is written."""
    written = os.write(fd, data)
    if written < len(data):  # rare: a signal, or a very large write
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


# --- primitives ------------------------------------------------------------------

def move(src: str, dst: str, retry_timeout: float) -> bool:
    """Rename ``src`` to ``dst``: True if this process moved it; False if
    ``src`` was gone (``ENOENT`` or ``ESTALE``): another process took it first."""
    try:
        os.rename(src, dst)
        return True
    except OSError as err:
        if err.errno in GONE_ERRNOS:
            return False
    return _slow(lambda: os.rename(src, dst), f"rename {src}", retry_timeout) is not _GONE


def rename_local(src: str, dst: str) -> bool | None:
    """Rename ``src`` to ``dst`` on a local filesystem, where a rename either
    happened or did not: True if done; False if ``src`` was gone; None if it
    cannot be done (``dst``'s folder is missing, as in a queue of ddmq 0.9,
    which has no ``tmp/``; or another error). The steps of :mod:`ddmq.reuse`."""
    try:
        os.rename(src, dst)
        return True
    except FileNotFoundError:
        return None if os.path.lexists(src) else False
    except OSError:
        return None


def remove(path: str, retry_timeout: float) -> bool:
    """Unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
        return True
    except OSError as err:
        if err.errno in GONE_ERRNOS:
            return False
    return _slow(lambda: os.unlink(path), f"remove {path}", retry_timeout) is not _GONE


def remove_quietly(path: str) -> None:
    """Unlink ``path`` (a file of this process alone) if it is there; errors are ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


def close_quietly(fd: int | None) -> None:
    """Close ``fd`` if there is one; errors are ignored (it is given up either way)."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def remove_folder(path: str, retry_timeout: float) -> None:
    """Remove the empty folder ``path`` if it is there."""
    try:
        retrying(lambda: os.rmdir(path), f"remove folder {path}", retry_timeout)
    except FileNotFoundError:
        pass


def remove_folder_if_empty(path: str) -> bool:
    """Remove the folder ``path`` if it is empty; True if removed. Never
    raises: a folder that is not empty (or gone, or not ours) stays as it is.
    Safe while others write into it: ``rmdir`` fails on a folder with a file,
    and a writer that finds the folder gone creates it again."""
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def list_folder(path: str, retry_timeout: float, follow: bool = True) -> list[str]:
    """Names in a folder (a hint: on a network filesystem it may be stale).

    With ``follow`` False, a symbolic link in place of the folder is not
    listed through: UnsafeFileError. Raises FileNotFoundError if the folder
    is missing."""
    if follow:
        return retrying(lambda: os.listdir(path), f"list {path}", retry_timeout)
    return retrying(lambda: _list_nofollow(path), f"list {path}", retry_timeout)


def _list_nofollow(path: str) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFileError(f"{path} is not a folder (a symbolic link or a file): "
                                  "not listed") from None
        raise
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def list_if_there(path: str, retry_timeout: float, follow: bool = True) -> list[str]:
    """:func:`list_folder`, or [] if the folder is missing."""
    try:
        return list_folder(path, retry_timeout, follow)
    except FileNotFoundError:
        return []


def stat(path: str, retry_timeout: float) -> os.stat_result | None:
    """``os.stat(path)``, or None if there is nothing at ``path``.

    Unlike ``os.path.exists``, an error that is not "missing" (a server outage,
    no permission) is never taken for "missing": it is retried if transient,
    else raised as FilesystemError."""
    return _stat(os.stat, path, retry_timeout)


def lstat(path: str, retry_timeout: float) -> os.stat_result | None:
    """:func:`stat` of ``path`` itself (a symlink is not followed)."""
    return _stat(os.lstat, path, retry_timeout)


def _stat(fn: Callable[[str], os.stat_result], path: str,
          retry_timeout: float) -> os.stat_result | None:
    try:
        return retrying(lambda: fn(path), f"look at {path}", retry_timeout)
    except FileNotFoundError:
        return None
    except FilesystemError as err:
        if err.errno == errno.ENOTDIR:
            return None
        raise


def is_folder(path: str, retry_timeout: float, follow: bool = True) -> bool:
    """True if ``path`` is a folder (with ``follow`` False: itself, not a
    symbolic link to one); see :func:`stat` for errors."""
    st = stat(path, retry_timeout) if follow else lstat(path, retry_timeout)
    return st is not None and stat_module.S_ISDIR(st.st_mode)


def is_file(path: str, retry_timeout: float) -> bool:
    """True if ``path`` itself is a regular file (not a symbolic link to
    one); see :func:`stat` for errors."""
    st = lstat(path, retry_timeout)
    return st is not None and stat_module.S_ISREG(st.st_mode)


def make_folder(path: str, retry_timeout: float, mode: int = 0o777) -> None:
    """Create ``path`` if missing (another process creating it too is fine).
    Something else at ``path``, a symbolic link included, is an error."""
    def mkdir() -> None:
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not is_folder(path, retry_timeout, follow=False):
                raise
    retrying(mkdir, f"create folder {path}", retry_timeout)


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
