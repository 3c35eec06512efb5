"""The broker: ddmq's public API over one root folder of queues.

``broker(root)`` opens a root; its methods publish, consume, ack, nack, extend
leases, clean, purge, and list queues and messages. Every change to a queue's
files goes through :mod:`ddmq.protocol`, which states why each step is safe
when many processes on many nodes share the root.

Two things keep consuming cheap when queues are deep:

* A broker lists a queue's folder once, sorts the names by their numbers and
  walks that list, claiming as it goes; it lists again when the list runs
  out, when it is older than a bound that grows with the cost of listing
  (so a deep queue is not re-sorted for every message) or after a run of lost
  races. A message published by another process is therefore seen at this
  consumer's next listing, at most about a second later for queues of up to
  tens of thousands of messages.
* Competing consumers that keep colliding on the head of the list pick at
  random among the first few messages of the best priority, so they spread
  out instead of all renaming the same file. Priority order always holds; FIFO
  order within a priority holds exactly for a consumer that is not competing.

Housekeeping (requeue of expired leases, dead-lettering, removal of stale
temporary files) runs inside publish/consume/ack/nack at most once per
``clean_interval`` seconds per queue and client, and on :meth:`Broker.clean`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import random
import threading
import time
import uuid
from typing import Any, Iterable, Sequence

from . import protocol, reuse
from .errors import (DdmqError, FilesystemError, InvalidMessageError, InvalidNameError,
                     LeaseLostError, MessageNotFoundError, QueueNotFoundError,
                     RootMissingError, RootUninitiatedError)
from .message import (DEAD_REASONS, MAX_NUMBER, MAX_TIMEOUT, Message, WaitingName,
                      next_queue_number, parse_dead_name, parse_waiting_name, parse_work_name,
                      short_repr)
from .clock import ServerClock, lease_expiry
from .layout import DEAD, REQUEUE_PREFIX, TMP, WORK, claimer_tag, unique_token
from .settings import DEFAULTS, SETTINGS_FILE, SettingsCache, write_file
from .watch import FolderWatcher

log = logging.getLogger(__name__)

#: A requeue taken privately but not finished after this many seconds is
#: assumed abandoned (its process died) and is finished by housekeeping.
REQUEUE_STALE_SECONDS = 60
#: Temporary files of publishes older than this are remains of dead publishers.
TMP_MAX_AGE_SECONDS = 3600
#: After this many lost races in a row, the cached listing is stale: list again.
RELIST_AFTER_LOST = 32
#: A folder unchanged for this long (server clock) can be watched by its mtime.
QUIET_SECONDS = 2.0
#: An empty queue whose folder did not change is listed again after this long anyway
#: (a safety net for attribute caches of network filesystems).
IDLE_RELIST_SECONDS = 10.0
#: Automatic housekeeping looks into tmp/ at most this often (what it seeks there
#: is at least REQUEUE_STALE_SECONDS old).
TMP_SCAN_SECONDS = 30.0
#: Longest queue name: its folder and the names of its files must fit NAME_MAX (255).
MAX_QUEUE_NAME = 128
#: On a local filesystem an acked file becomes a spare in its queue's tmp/
#: folder, for a publisher to that queue to rewrite (see ddmq.reuse).
#: Each broker leaves at most this many spares per queue that no publisher
#: has taken yet; past that, acked files are unlinked.
SPARES_MAX = 32
#: Spares older than this (by their ctime, set when they were retired) are
#: remains of dead processes or of a queue nobody publishes to: housekeeping removes them.
SPARE_MAX_AGE_SECONDS = 60

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


def check_queue_name(queue: Any) -> str:
    """Return ``queue`` if it is a valid queue name, else raise InvalidNameError."""
    if (not isinstance(queue, str) or not queue or not queue.isascii()
            or not all(c.isalnum() or c in "_-" for c in queue)):
        raise InvalidNameError(f"invalid queue name {queue!r}: use letters, digits, '_' and '-'")
    if len(queue) > MAX_QUEUE_NAME:
        raise InvalidNameError(f"invalid queue name {queue[:20]!r}...: longer than "
                               f"{MAX_QUEUE_NAME} characters")
    return queue


_INSTANCES = itertools.count()


def _waiting_name(work_name: str) -> str:
    """The waiting name inside a work name (validated by the caller)."""
    parsed = parse_work_name(work_name)
    if parsed is None:
        raise InvalidNameError(f"{work_name!r} is not the name of a consumed message")
    return parsed[1]


def _check_int(name: str, value: Any, minimum: int, maximum: int = MAX_NUMBER) -> None:
    if value is not None and (type(value) is not int or not minimum <= value <= maximum):
        raise InvalidMessageError(f"{name} must be a whole number from {minimum} to {maximum}, "
                                  f"not {short_repr(value)}")


class _Candidates:
    """One queue's cached, sorted listing, best message last (popped first)."""

    __slots__ = ("entries", "listed_at", "relist_after", "streak", "lost_in_row", "empty_signature")

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, str]] = []  # (-priority, -queue_number, name)
        self.listed_at = -1e18
        self.relist_after = 0.5
        self.streak = 0.0
        self.lost_in_row = 0
        # the folder's signature after a listing found it empty (see _quiet_signature)
        self.empty_signature: tuple[int, int] | None = None

    def pick(self) -> str | None:
        """Take the next name to try, or None when the listing is used up."""
        entries = self.entries
        if not entries:
            return None
        window = min(len(entries), 1 << int(self.streak))
        index = len(entries) - 1
        if window > 1:
            best = entries[-1][0]
            same = 1
            while same < window and entries[-1 - same][0] == best:
                same += 1
            index -= random.randrange(same)
        return entries.pop(index)[2]

    def lost(self) -> None:
        self.streak = min(self.streak + 1.0, 6.0)
        self.lost_in_row += 1

    def won(self) -> None:
        self.streak = max(self.streak - 0.25, 0.0)
        self.lost_in_row = 0


class Broker:
    """A root folder of queues. Safe to share between threads; every process
    (or node) opens its own.

    ``Broker(root, create=False)`` raises :class:`RootMissingError` if ``root``
    does not exist and :class:`RootUninitiatedError` if it holds no
    ``ddmq.yaml``; with ``create=True`` it makes both (the root private to its
    owner, mode 0700) and publish/consume create missing queues.
    """

    def __init__(self, root: str | os.PathLike, create: bool = False,
                 verbose: bool = False, debug: bool = False):
        self.root = os.path.abspath(os.fspath(root))
        self.create = bool(create)
        if debug or verbose:
            logging.getLogger("ddmq").setLevel(logging.DEBUG if debug else logging.INFO)
        settings_path = os.path.join(self.root, SETTINGS_FILE)
        retry = DEFAULTS["retry_timeout"]
        if not protocol.is_folder(self.root, retry):
            if not create:
                raise RootMissingError(f"root folder {self.root} does not exist")
            try:
                os.makedirs(self.root, mode=0o700, exist_ok=True)
                os.chmod(self.root, 0o700)
            except OSError as err:
                raise FilesystemError(err, f"create root {self.root}") from err
        if not protocol.is_file(settings_path, retry):
            if not create:
                raise RootUninitiatedError(f"root folder {self.root} is not initiated (no {SETTINGS_FILE})")
            self._write_root_settings(settings_path)
        self._settings = SettingsCache(self.root)
        self.clock = ServerClock(self.root)
        self._lock = threading.Lock()
        self._folders: dict[str, str] = {}
        self._candidates: dict[str, _Candidates] = {}
        self._next_clean: dict[str, float] = {}
        self._next_tmp_scan: dict[str, float] = {}
        self._work_listing: dict[str, tuple[tuple[int, int] | None, list[str]]] = {}
        self._lease_guess: dict[str, float] = {}  # queue -> lease of the last message claimed
        self._watcher = FolderWatcher()
        self._instance = next(_INSTANCES)  # brokers of one process on two mounts claim apart
        # Acked files to rewrite for later publishes, on a local filesystem only.
        local = reuse.filesystem_type(self.root) in reuse.REUSE_FILESYSTEMS
        self._spares = reuse.SparePool(SPARES_MAX) if local else None

    def __repr__(self) -> str:
        return f"ddmq.broker({self.root!r})"

    @staticmethod
    def _write_root_settings(path: str) -> None:
        temp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                handle.write(_ROOT_TEMPLATE)
            if not os.path.exists(path):
                os.replace(temp, path)
        except OSError as err:
            raise FilesystemError(err, f"initiate root {os.path.dirname(path)}") from err
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    # --- paths and settings -------------------------------------------------------

    def _queue_dir(self, queue: str) -> str:
        """The folder of ``queue``; InvalidNameError if the name is not valid."""
        try:
            return self._folders[queue]
        except (KeyError, TypeError):
            folder = os.path.join(self.root, check_queue_name(queue))
            self._folders[queue] = folder
            return folder

    def get_settings(self, queue: str = "") -> dict[str, Any]:
        """The effective settings of ``queue`` (or of the root when empty):
        defaults, overridden by the root's ``ddmq.yaml``, then the queue's."""
        if queue:
            check_queue_name(queue)
        return dict(self._settings.effective(queue))

    def get_config_file(self, queue: str = "") -> dict[str, Any]:
        """Only what the ``ddmq.yaml`` of ``queue`` (or of the root) itself says."""
        folder = self._queue_dir(queue) if queue else self.root
        return dict(self._settings.file_values(folder))

    def update_settings_file(self, queue: str = "", package: dict[str, Any] | None = None) -> None:
        """Set the keys in ``package`` in the ``ddmq.yaml`` of ``queue`` (or of
        the root when empty), replacing the file atomically. Raises
        SettingsError for invalid values, QueueNotFoundError for a missing queue."""
        folder = self.root
        if queue:
            self._require_queue(queue)
            folder = self._queue_dir(queue)
        self._settings.forget(folder)
        values = dict(self._settings.file_values(folder))
        values.update(package or {})
        try:
            write_file(os.path.join(folder, SETTINGS_FILE), values)
        except OSError as err:
            raise FilesystemError(err, f"write settings of {folder}") from err
        self._settings.forget(folder)

    def _retry_timeout(self, queue: str = "") -> float:
        return float(self._settings.effective(queue)["retry_timeout"])

    # --- queues -------------------------------------------------------------------

    def queue_exists(self, queue: str) -> bool:
        """True if ``queue`` is a complete queue folder (``ddmq.yaml`` and ``work/``)."""
        folder = self._queue_dir(queue)
        retry = self._retry_timeout()
        return (protocol.is_file(os.path.join(folder, SETTINGS_FILE), retry)
                and protocol.is_folder(os.path.join(folder, WORK), retry))

    def _require_queue(self, queue: str) -> str:
        folder = self._queue_dir(queue)
        if not self.queue_exists(queue):
            if not self.create:
                raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.root}")
            self.create_queue(queue)
        return folder

    def create_queue(self, queue: str) -> bool:
        """Create ``queue`` if it does not exist; True. Safe to race with other
        creators. The queue's ``ddmq.yaml`` starts empty, so it follows the root's."""
        folder = self._queue_dir(queue)
        timeout = self._retry_timeout()
        for sub in ("", TMP, WORK, DEAD):  # ddmq.yaml last: it marks the queue complete
            protocol.make_folder(os.path.join(folder, sub) if sub else folder, timeout)
        path = os.path.join(folder, SETTINGS_FILE)
        if not protocol.is_file(path, timeout):
            try:
                write_file(path, {})
            except OSError as err:
                raise FilesystemError(err, f"create queue {queue}") from err
        log.info("created queue %s", queue)
        return True

    def delete_queue(self, queue: str) -> bool:
        """Delete ``queue`` with all its messages, dead letters and settings.

        Raises QueueNotFoundError if missing, FilesystemError if the folder
        holds files ddmq did not make (nothing of them is deleted)."""
        folder = self._queue_dir(queue)
        if not protocol.is_folder(folder, self._retry_timeout()):
            raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.root}")
        timeout = self._retry_timeout(queue)
        foreign = [n for n in self._list(folder, timeout)
                   if n not in (TMP, WORK, DEAD, SETTINGS_FILE, "ddmq.yaml.intermediate")
                   and not parse_waiting_name(n) and not n.startswith(SETTINGS_FILE + ".tmp-")]
        if foreign:
            raise FilesystemError(OSError(39, "queue folder holds files ddmq did not make", foreign[0]),
                                  f"delete queue {queue}")
        with self._lock:
            self._candidates.pop(queue, None)
        self._watcher.forget(folder)
        if self._spares is not None:
            self._spares.forget(os.path.join(folder, TMP))
        for sub in (WORK, DEAD, TMP):
            path = os.path.join(folder, sub)
            for name in self._list(path, timeout):
                protocol.remove(os.path.join(path, name), timeout)
            self._rmdir(path)
        for name in self._list(folder, timeout):
            protocol.remove(os.path.join(folder, name), timeout)
        self._rmdir(folder)
        self._settings.forget(folder)
        log.info("deleted queue %s", queue)
        return True

    @staticmethod
    def _rmdir(path: str) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise FilesystemError(err, f"remove folder {path}") from err

    def list_queues(self) -> list[str]:
        """Names of the queues in the root, sorted."""
        names = self._list(self.root, self._retry_timeout())
        queues = []
        for name in sorted(names):
            try:
                if self.queue_exists(name):
                    queues.append(name)
            except InvalidNameError:
                continue
        return queues

    @staticmethod
    def _list(folder: str, retry_timeout: float) -> list[str]:
        try:
            return protocol.list_folder(folder, retry_timeout)
        except FileNotFoundError:
            return []

    # --- publish ------------------------------------------------------------------

    def publish(self, queue: str, msg_text: Any = None, priority: int | None = None,
                timeout: int | None = None, requeue: bool | None = None,
                requeue_prio: int | None = None, requeue_limit: int | None = None,
                clean: bool = True) -> Message:
        """Publish ``msg_text`` (any JSON-serialisable value) to ``queue``; return the message.

        ``priority``: 0 is consumed first (default: the queue's setting, 999).
        ``timeout``: lease length in seconds once consumed. ``requeue``: whether
        nack and lease expiry requeue it (``requeue_prio`` implies True).
        ``requeue_limit``: requeues allowed before it is dead-lettered. Values
        left None follow the queue's settings. Raises QueueNotFoundError (unless
        the broker creates queues), InvalidMessageError, FilesystemError.
        """
        folder = self._queue_dir(queue)
        _check_int("priority", priority, 0)
        _check_int("requeue_prio", requeue_prio, 0)
        _check_int("requeue_limit", requeue_limit, 0)
        _check_int("timeout", timeout, 1, MAX_TIMEOUT)
        if requeue is not None and not isinstance(requeue, bool):
            raise InvalidMessageError(f"requeue must be True, False or None, not {requeue!r}")
        if requeue_prio is not None and requeue is None:
            requeue = True
        settings = self._settings.effective(queue)
        if priority is None:
            priority = settings["priority"]
        msg = Message(queue=queue, message="" if msg_text is None else msg_text,
                      timeout=timeout, id=os.urandom(16).hex(), priority=priority,
                      queue_number=next_queue_number(), requeue=requeue,
                      requeue_limit=requeue_limit, requeue_prio=requeue_prio)
        msg.filename = f"{priority}.{msg.queue_number}.ddmq{msg.id}"
        self._write_waiting(queue, folder, msg, settings)
        self._remember(queue, WaitingName(priority, msg.queue_number, msg.filename))
        if clean:
            self._maybe_clean(queue)
        log.debug("published %s to %s", msg.filename, queue)
        return msg

    def _write_waiting(self, queue: str, folder: str, msg: Message, settings: dict[str, Any]) -> None:
        data = msg.to_json().encode("utf-8")
        final = f"{folder}{os.sep}{msg.filename}"
        tmp = f"{folder}{os.sep}{TMP}"
        spare = None if self._spares is None else self._spares.take(tmp, settings["retry_timeout"])
        for attempt in range(3):
            try:
                protocol.publish(folder, msg.filename, data, fsync=settings["fsync"],
                                 retry_timeout=settings["retry_timeout"], spare=spare)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.root}") from None
                if not self.queue_exists(queue):
                    self._require_queue(queue)
                else:  # a queue made by ddmq 0.9 has no tmp/ folder
                    protocol.make_folder(tmp, settings["retry_timeout"])
            finally:
                spare = None  # used up, whatever happened

    def _retire(self, folder: str, work_path: str, retry: float) -> bool:
        """Remove an acked work file: where files are reused, make it a spare
        in the queue's tmp/ (see ddmq.reuse), else unlink it.
        False if it was gone (the lease was lost)."""
        if self._spares is not None:
            retired = self._spares.retire(work_path, f"{folder}{os.sep}{TMP}")
            if retired is not None:
                return retired
        return protocol.remove(work_path, retry)

    def _remember(self, queue: str, waiting: WaitingName) -> None:
        """Add our own publish to our cached listing, so we need not list again."""
        with self._lock:
            cands = self._candidates.get(queue)
            if cands is not None and cands.entries:
                bisect.insort(cands.entries, (-waiting.priority, -waiting.queue_number, waiting.name))

    # --- consume ------------------------------------------------------------------

    def consume(self, queue: str, n: int = 1, path: str | None = None,
                wait: float | None = 0.0, clean: bool = True) -> Message | list[Message] | None:
        """Claim up to ``n`` messages of ``queue``, best priority first.

        Returns a Message or None when ``n`` is 1, else a list (maybe empty).
        Each message is leased to the caller until ``ack``/``nack`` or until
        its lease (``timeout``, else the queue's ``message_timeout``) expires.
        ``wait``: seconds to block until at least one message is available
        (None: for ever; 0: return at once). ``path``: claim that message file.
        Raises QueueNotFoundError, FilesystemError.
        """
        if not n:
            n = 1
        if type(n) is not int or n < 1:
            raise ValueError(f"n must be a whole number >= 1, not {n!r}")
        if wait is not None and wait < 0:
            raise ValueError(f"wait must be >= 0 or None, not {wait!r}")
        folder = self._queue_dir(queue)
        if clean:
            self._maybe_clean(queue)
        if path is not None:
            got = self._claim_path(queue, folder, path)
        else:
            got = self._claim(queue, folder, n)
            if not got and wait != 0:
                got = self._wait_and_claim(queue, folder, n, wait, clean)
        if n == 1:
            return got[0] if got else None
        return got

    def _claim_path(self, queue: str, folder: str, path: str) -> list[Message]:
        name = os.path.basename(os.fspath(path))
        parent = os.path.dirname(os.path.abspath(os.path.join(folder, os.fspath(path))))
        if parse_waiting_name(name) is None or os.path.realpath(parent) != os.path.realpath(folder):
            raise InvalidNameError(f"{path!r} is not a waiting message of queue {queue!r}")
        if not protocol.is_folder(folder, self._retry_timeout()):
            raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.root}")
        msg = self._claim_one(queue, folder, name, self._settings.effective(queue))
        return [msg] if msg is not None else []

    def _claim(self, queue: str, folder: str, n: int) -> list[Message]:
        settings = self._settings.effective(queue)
        got: list[Message] = []
        listed = False  # list at most once per call: what one listing missed, the next call finds
        while len(got) < n:
            name, fresh_listing = self._next_candidate(queue, folder, settings, not listed)
            listed = listed or fresh_listing
            if name is None:
                break
            msg = self._claim_one(queue, folder, name, settings)
            with self._lock:
                cands = self._candidates.get(queue)
                if cands is not None:
                    cands.won() if msg is not None else cands.lost()
            if msg is not None:
                got.append(msg)
        return got

    def _next_candidate(self, queue: str, folder: str, settings: dict[str, Any],
                        may_list: bool) -> tuple[str | None, bool]:
        """The next waiting name to try, from the cached listing or (if
        ``may_list``) a new one; and whether a new listing was taken."""
        with self._lock:
            cands = self._candidates.setdefault(queue, _Candidates())
            fresh = time.monotonic() - cands.listed_at < cands.relist_after
            if cands.entries and (not may_list or (fresh and cands.lost_in_row < RELIST_AFTER_LOST)):
                return cands.pick(), False
            if not may_list:
                return None, False
            empty_signature = cands.empty_signature
        started = time.monotonic()
        retry = settings["retry_timeout"]
        if (empty_signature is not None and started - cands.listed_at < IDLE_RELIST_SECONDS
                and self._quiet_signature(folder, retry) == empty_signature):
            return None, False  # still empty: one stat instead of a listing (spares the server)
        try:
            names = protocol.list_folder(folder, retry)
        except FileNotFoundError:
            if self.create and not self.queue_exists(queue):
                self.create_queue(queue)
                return None, True
            raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.root}") from None
        entries = []
        for name in names:
            parsed = parse_waiting_name(name)
            if parsed is not None:
                entries.append((-parsed.priority, -parsed.queue_number, name))
        entries.sort()
        took = time.monotonic() - started
        # Taken after the listing: a name added in between makes the folder
        # "not quiet", so the next call lists again.
        signature = None if entries else self._quiet_signature(folder, retry)
        with self._lock:
            cands.empty_signature = signature
            cands.entries = entries
            cands.listed_at = time.monotonic()
            # List again after a pause 20x what listing cost: under 5% of the time
            # goes to listing, however deep the queue.
            cands.relist_after = max(0.5, 20 * took)
            cands.lost_in_row = 0
            return cands.pick(), True

    def _claim_one(self, queue: str, folder: str, name: str, settings: dict[str, Any]) -> Message | None:
        """Claim the waiting file ``name``: rename it into work/, then read it.

        The lease's length is in the file, which is read only after the claim:
        claim with the length of the last message claimed from this queue
        (messages of one queue mostly share it), and correct it if it differs.
        """
        timeout = self._lease_guess.get(queue) or settings["message_timeout"]
        retry = settings["retry_timeout"]
        expiry = lease_expiry(self.clock.now(), timeout)
        work_name = f"{expiry}.{name}.{claimer_tag()}{self._instance}"
        work_path = f"{folder}{os.sep}{WORK}{os.sep}{work_name}"
        if not protocol.move(f"{folder}{os.sep}{name}", work_path, retry):
            return None
        msg = self._read_claimed(queue, folder, work_name, _file_id(name), retry)
        if msg is None:
            return None
        msg.filename, msg.expiry = work_name, expiry
        wanted = msg.timeout if msg.timeout is not None else settings["message_timeout"]
        self._lease_guess[queue] = wanted
        if wanted != timeout:
            try:
                self.extend_lease(msg, wanted)
            except LeaseLostError:
                return None
        return msg

    def _read_claimed(self, queue: str, folder: str, work_name: str, file_id: str | None,
                      retry: float) -> Message | None:
        work_path = f"{folder}{os.sep}{WORK}{os.sep}{work_name}"
        for attempt in range(3):
            data = protocol.read(work_path, retry)
            if data is None:
                return None
            try:
                msg = Message.from_json(data)
            except InvalidMessageError as err:
                problem = err
            else:
                if _holds(msg, file_id):
                    msg.queue = queue  # the file's own "queue" field is not to be trusted
                    return msg
                if not os.path.lexists(work_path):
                    # Our lease was lost while we read, and the file was reused
                    # for another message (see ddmq.reuse): not ours.
                    log.warning("message %s of %s changed while it was read: lease lost", work_name, queue)
                    return None
                problem = InvalidMessageError(
                    f"it holds message {short_repr(msg.id)}, not the one its name says")
                break
            # ddmq 0.9 writes final names directly: give a slow writer a moment.
            time.sleep(0.02 * (attempt + 1))
        log.warning("dead-lettering unparseable message %s of %s: %s", work_name, queue, problem)
        waiting = _waiting_name(work_name)
        self._dead_letter(folder, work_path, "unparseable", waiting, retry)
        return None

    def _wait_and_claim(self, queue: str, folder: str, n: int, wait: float | None,
                        clean: bool) -> list[Message]:
        deadline = None if wait is None else time.monotonic() + wait
        pause = 0.001
        while True:
            self._watcher.arm(folder)
            got = self._claim(queue, folder, n)
            if got:
                return got
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            if clean:
                self._maybe_clean(queue)
            poll_max = float(self._settings.effective(queue)["poll_max"])
            timeout = pause if deadline is None else min(pause, deadline - now)
            self._watcher.wait(folder, timeout)
            pause = min(pause * 2, poll_max)

    # --- ack, nack, lease -----------------------------------------------------------

    def _targets(self, queue: str | Message, msg_files: str | Sequence[str] | None) -> tuple[str, list[str]]:
        if isinstance(queue, Message):
            msg_files = [queue.filename] if msg_files is None else msg_files
            queue = queue.queue
        self._queue_dir(queue)
        if msg_files is None or msg_files == [] or msg_files == "":
            raise ValueError("no message files given")
        names = [msg_files] if isinstance(msg_files, str) else list(msg_files)
        for name in names:
            if not isinstance(name, str) or parse_work_name(name) is None:
                raise InvalidNameError(f"{name!r} is not the name of a consumed message (EXPIRY.PRIO.NUMBER.ddmqID)")
        return queue, names

    def ack(self, queue: str | Message, msg_files: str | Sequence[str] | None = None,
            clean: bool = True) -> list[str]:
        """Acknowledge consumed messages: delete their work files.

        ``ack(msg)`` or ``ack(queue, work_file_name_or_names)``. Returns the
        names acked. Raises LeaseLostError (``.missing``) if any work file was
        gone: its lease expired (it was requeued) or it was acked already.
        """
        queue, names = self._targets(queue, msg_files)
        folder = self._queue_dir(queue)
        retry = self._retry_timeout(queue)
        acked, missing = [], []
        work = f"{folder}{os.sep}{WORK}{os.sep}"
        for name in names:
            (acked if self._retire(folder, work + name, retry) else missing).append(name)
        if clean:
            self._maybe_clean(queue)
        if missing:
            raise LeaseLostError(f"lease lost for {', '.join(missing)} in {queue}: "
                                 "it expired and was requeued, or was acked already", missing)
        return acked

    def nack(self, queue: str | Message, msg_files: str | Sequence[str] | None = None,
             requeue: bool | None = None, clean: bool = True, *, count: bool = True) -> list[str]:
        """Negatively acknowledge consumed messages.

        ``requeue=None`` follows each message's ``requeue`` (else the queue's
        setting, true by default); True requeues it (``requeue_counter`` + 1,
        priority ``requeue_prio``; past ``requeue_limit`` it is dead-lettered);
        False deletes it. ``count=False`` gives a message back untouched (same
        priority, counter and limit check skipped), for a consumer that stops
        before it could try: it is not a failure. Returns the names nacked;
        raises LeaseLostError like ack.
        """
        queue, names = self._targets(queue, msg_files)
        folder = self._queue_dir(queue)
        retry = self._retry_timeout(queue)
        done, missing = [], []
        for name in names:
            work_path = os.path.join(folder, WORK, name)
            if requeue is False:
                ok = protocol.remove(work_path, retry)
            else:
                private = self._take(folder, work_path, _waiting_name(name), retry)
                ok = private is not None
                if ok:
                    self._requeue_taken(queue, folder, private, requeue, drop_when_not_requeued=True,
                                        count=count)
            (done if ok else missing).append(name)
        if clean:
            self._maybe_clean(queue)
        if missing:
            raise LeaseLostError(f"lease lost for {', '.join(missing)} in {queue}: "
                                 "it expired and was requeued, or was acked already", missing)
        return done

    def extend_lease(self, msg: Message, timeout: float | None = None) -> Message:
        """Renew the lease of a consumed message: it now ends ``timeout``
        seconds from now (default: its own timeout, else the queue's
        ``message_timeout``). Updates and returns ``msg``; raises
        LeaseLostError if the lease was already lost."""
        queue, (old,) = self._targets(msg, None)
        folder = self._queue_dir(queue)
        settings = self._settings.effective(queue)
        if timeout is None:
            timeout = msg.timeout if msg.timeout is not None else settings["message_timeout"]
        expiry = lease_expiry(self.clock.now(), timeout)
        new = f"{expiry}.{old.partition('.')[2]}"
        if new != old:
            if not protocol.move(os.path.join(folder, WORK, old), os.path.join(folder, WORK, new),
                                 settings["retry_timeout"]):
                raise LeaseLostError(f"lease lost for {old} in {queue}", [old])
        elif not os.path.exists(os.path.join(folder, WORK, old)):
            raise LeaseLostError(f"lease lost for {old} in {queue}", [old])
        msg.filename, msg.expiry = new, expiry
        return msg

    def reject(self, msg: Message, reason: str = "rejected") -> str:
        """Move a consumed message to the queue's dead letters (``dead/``), for a
        person to inspect, instead of requeueing or deleting it. ``reason`` is
        one of ``DEAD_REASONS``. Returns the dead letter's name; raises
        LeaseLostError if the lease was already lost."""
        if reason not in DEAD_REASONS:
            raise ValueError(f"reason must be one of {DEAD_REASONS}, not {reason!r}")
        queue, (name,) = self._targets(msg, None)
        folder = self._queue_dir(queue)
        retry = self._retry_timeout(queue)
        waiting = _waiting_name(name)
        private = self._take(folder, os.path.join(folder, WORK, name), waiting, retry)
        if private is None:
            raise LeaseLostError(f"lease lost for {name} in {queue}", [name])
        self._dead_letter(folder, private, reason, waiting, retry)
        log.warning("dead-lettered %s of %s: %s", waiting, queue, reason)
        return f"{reason}.{waiting}"

    # --- requeue and dead letters ---------------------------------------------------

    def _take(self, folder: str, path: str, waiting: str, retry: float) -> str | None:
        """Protocol step 4a: rename a work (or abandoned) file to a private name."""
        private = os.path.join(folder, TMP, f"{REQUEUE_PREFIX}{int(self.clock.now())}."
                               f"{unique_token()}.{waiting}")
        return private if self._move_into(path, private, retry) else None

    @staticmethod
    def _move_into(path: str, target: str, retry: float) -> bool:
        """protocol.move, creating the target's folder (``tmp/``, ``dead/``) if
        missing: queues made by ddmq 0.9 have neither."""
        if protocol.move(path, target, retry):
            return True
        folder = os.path.dirname(target)
        if protocol.is_folder(folder, retry):
            return False
        protocol.make_folder(folder, retry)
        return protocol.move(path, target, retry)

    def _requeue_taken(self, queue: str, folder: str, private: str, requeue: bool | None,
                       drop_when_not_requeued: bool, count: bool = True) -> str:
        """Protocol steps 4b-c: publish the copy of a privately taken message,
        then unlink it; or dead-letter it. Returns what happened."""
        settings = self._settings.effective(queue)
        retry = settings["retry_timeout"]
        waiting = ".".join(os.path.basename(private).split(".")[-3:])
        data = protocol.read(private, retry)
        if data is None:
            return "gone"
        try:
            msg = Message.from_json(data)
        except InvalidMessageError as err:
            log.warning("dead-lettering unparseable message %s of %s: %s", waiting, queue, err)
            self._dead_letter(folder, private, "unparseable", waiting, retry)
            return "unparseable"
        if requeue is None:
            requeue = msg.requeue if msg.requeue is not None else settings["requeue"]
        if not requeue:
            if drop_when_not_requeued:
                protocol.remove(private, retry)
                return "dropped"
            self._dead_letter(folder, private, "expired", waiting, retry)
            return "expired"
        limit = msg.requeue_limit if msg.requeue_limit is not None else settings["requeue_limit"]
        if count and limit is not None and msg.requeue_counter >= limit:
            log.warning("dead-lettering %s of %s: requeued %d times, limit %d",
                        waiting, queue, msg.requeue_counter, limit)
            self._dead_letter(folder, private, "requeue_limit", waiting, retry)
            return "requeue_limit"
        msg.queue = queue
        if count:
            msg.requeue_counter += 1
            msg.priority = msg.requeue_prio if msg.requeue_prio is not None else settings["requeue_prio"]
        msg.queue_number = next_queue_number()
        msg.filename = f"{msg.priority}.{msg.queue_number}.ddmq{msg.id}"
        self._write_waiting(queue, folder, msg, settings)
        protocol.remove(private, retry)
        self._remember(queue, WaitingName(msg.priority, msg.queue_number, msg.filename))
        log.info("requeued %s of %s as %s", waiting, queue, msg.filename)
        return "requeued"

    def _dead_letter(self, folder: str, path: str, reason: str, waiting: str, retry: float) -> None:
        self._move_into(path, os.path.join(folder, DEAD, f"{reason}.{waiting}"), retry)

    def list_dead(self, queue: str) -> list[str]:
        """Names of the dead letters of ``queue`` (``REASON.PRIO.NUMBER.ddmqID``), sorted."""
        folder = self._require_existing(queue)
        names = self._list(os.path.join(folder, DEAD), self._retry_timeout(queue))
        return sorted(n for n in names if parse_dead_name(n))

    def requeue_dead(self, queue: str, names: Iterable[str] | None = None) -> list[str]:
        """Put dead letters of ``queue`` back in the queue as they are (all of
        them when ``names`` is None); returns the names requeued. Raises
        MessageNotFoundError for a named dead letter that does not exist."""
        folder = self._require_existing(queue)
        retry = self._retry_timeout(queue)
        wanted = self.list_dead(queue) if names is None else list(names)
        done = []
        for name in wanted:
            parsed = parse_dead_name(name) if isinstance(name, str) else None
            if parsed is None or parsed[0] not in DEAD_REASONS:
                raise InvalidNameError(f"{name!r} is not the name of a dead letter")
            if protocol.move(os.path.join(folder, DEAD, name), os.path.join(folder, parsed[1]), retry):
                done.append(name)
            elif names is not None:
                raise MessageNotFoundError(f"no dead letter {name} in {queue}")
        with self._lock:
            self._candidates.pop(queue, None)
        return done

    # --- housekeeping ----------------------------------------------------------------

    def _maybe_clean(self, queue: str) -> None:
        """Housekeeping as a side effect of publish, consume and ack: at most
        once per ``clean_interval``; its errors are logged, not raised."""
        if time.monotonic() < self._next_clean.get(queue, 0.0):
            return
        try:
            self._housekeep(queue, self._queue_dir(queue), thorough=False)
        except QueueNotFoundError:
            pass
        except DdmqError as err:
            log.warning("housekeeping of %s failed: %s", queue, err)

    def clean(self, queue: str, force: bool = False) -> bool:
        """Housekeeping of ``queue``: requeue messages whose lease expired
        (or dead-letter them: past ``requeue_limit``, or ``requeue`` false),
        finish requeues abandoned by dead processes, remove temporary files
        of dead publishers. Unless ``force``, runs only if this client has not
        cleaned the queue in the last ``clean_interval`` seconds; returns
        whether it ran. Safe to run in many processes at once."""
        folder = self._require_existing(queue)
        if not force and time.monotonic() < self._next_clean.get(queue, 0.0):
            return False
        self._housekeep(queue, folder, thorough=True)
        return True

    def _housekeep(self, queue: str, folder: str, thorough: bool) -> None:
        """The work of :meth:`clean`. Unless ``thorough``, it spares the file
        server: work/ is listed again only when it changed (the names hold
        the expiries), tmp/ at most every TMP_SCAN_SECONDS."""
        settings = self._settings.effective(queue)
        now_mono = time.monotonic()
        self._next_clean[queue] = now_mono + float(settings["clean_interval"])
        retry = settings["retry_timeout"]
        now = self.clock.now()
        work = os.path.join(folder, WORK)
        for name in self._work_names(queue, work, retry, thorough):
            parsed = parse_work_name(name)
            if parsed is None or parsed[0] >= now:
                continue
            private = self._take(folder, os.path.join(work, name), parsed[1], retry)
            if private is not None:
                outcome = self._requeue_taken(queue, folder, private, None, drop_when_not_requeued=False)
                log.info("lease of %s in %s expired: %s", name, queue, outcome)
        if not thorough and now_mono < self._next_tmp_scan.get(queue, 0.0):
            return
        self._next_tmp_scan[queue] = now_mono + TMP_SCAN_SECONDS
        tmp = os.path.join(folder, TMP)
        for name in self._list(tmp, retry):
            path = os.path.join(tmp, name)
            if name.startswith(REQUEUE_PREFIX):
                parts = name.split(".")
                if len(parts) < 4 or not parts[1].isdigit() or now - int(parts[1]) < REQUEUE_STALE_SECONDS:
                    continue
                private = self._take(folder, path, ".".join(parts[-3:]), retry)
                if private is not None:
                    log.warning("finishing a requeue abandoned by a dead process: %s", name)
                    self._requeue_taken(queue, folder, private, None, drop_when_not_requeued=False)
            else:
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if name.startswith(reuse.SPARE_PREFIX):
                    # A spare keeps the mtime of its last message; retiring it (a rename) set its ctime.
                    if now - st.st_ctime > SPARE_MAX_AGE_SECONDS:
                        log.debug("removing unused spare %s", name)
                        protocol.remove(path, retry)
                elif now - st.st_mtime > TMP_MAX_AGE_SECONDS:
                    log.info("removing temporary file of a dead publisher: %s", name)
                    protocol.remove(path, retry)

    def _work_names(self, queue: str, work: str, retry: float, fresh: bool) -> list[str]:
        """The names in ``work``, from the last listing if the folder has not
        changed since (and ``fresh`` is false)."""
        cached = self._work_listing.get(queue)
        if not fresh and cached is not None and cached[0] is not None:
            if self._quiet_signature(work, retry) == cached[0]:
                return cached[1]
        names = self._list(work, retry)
        self._work_listing[queue] = (self._quiet_signature(work, retry), names)
        return names

    def _quiet_signature(self, folder: str, retry: float) -> tuple[int, int] | None:
        """(mtime, inode) of ``folder`` if it has not changed for QUIET_SECONDS
        by the file server's clock; else (or if it is missing) None.

        A listing taken before this signature is still right while the
        signature stays the same: adding or removing a name sets the folder's
        mtime to the server's "now", which differs from a time QUIET_SECONDS
        old whatever the timestamps' granularity."""
        st = protocol.stat(folder, retry)
        if st is None or self.clock.now() - st.st_mtime < QUIET_SECONDS:
            return None
        return st.st_mtime_ns, st.st_ino

    def clean_all(self) -> None:
        """Run :meth:`clean` (forced) on every queue of the root."""
        for queue in self.list_queues():
            self.clean(queue, force=True)

    def _require_existing(self, queue: str) -> str:
        folder = self._queue_dir(queue)
        if not self.queue_exists(queue):
            raise QueueNotFoundError(f"queue {queue!r} does not exist in {self.root}")
        return folder

    # --- inspection and removal --------------------------------------------------------

    def get_message_list(self, queue: str) -> tuple[list[str], list[str]]:
        """(waiting file names, at-work file names) of ``queue``."""
        folder = self._require_existing(queue)
        retry = self._retry_timeout(queue)
        waiting = [n for n in self._list(folder, retry) if parse_waiting_name(n)]
        work = [n for n in self._list(os.path.join(folder, WORK), retry) if parse_work_name(n)]
        return waiting, work

    def get_message(self, path: str) -> Message:
        """Read the message file at ``path`` (inside the root) without claiming it."""
        full = self._message_path(path)
        data = protocol.read(full, self._retry_timeout())
        msg = None if data is None else Message.from_json(data)
        if msg is None or not _holds(msg, _file_id(os.path.basename(full))):  # gone, or reused since
            raise MessageNotFoundError(f"no message file {full}")
        return msg

    def _message_path(self, path: str | Message) -> str:
        if isinstance(path, Message):
            queue = check_queue_name(path.queue)
            name = path.filename or ""
            sub = WORK if parse_work_name(name) else ""
            path = os.path.join(self.root, queue, sub, name)
        full = os.path.realpath(os.path.join(self.root, os.fspath(path)))
        name = os.path.basename(full)
        parent = os.path.dirname(full)
        if parent.endswith(os.sep + WORK):
            parent = os.path.dirname(parent)
        ok_name = parse_waiting_name(name) or parse_work_name(name)
        if not ok_name or os.path.dirname(parent) != os.path.realpath(self.root):
            raise InvalidNameError(f"{path!r} is not a message file of a queue in {self.root}")
        return full

    def delete_message(self, path: str | Message) -> bool:
        """Delete one waiting or at-work message (a path inside the root, or a
        Message). Raises MessageNotFoundError if it is gone."""
        full = self._message_path(path)
        if not protocol.remove(full, self._retry_timeout()):
            raise MessageNotFoundError(f"no message file {full}")
        return True

    def purge_queue(self, queue: str) -> tuple[int, int]:
        """Delete every waiting and at-work message of ``queue`` (dead letters
        stay); returns (waiting removed, at work removed)."""
        folder = self._require_existing(queue)
        retry = self._retry_timeout(queue)
        waiting, work = self.get_message_list(queue)
        removed = sum(protocol.remove(os.path.join(folder, n), retry) for n in waiting)
        removed_work = sum(protocol.remove(os.path.join(folder, WORK, n), retry) for n in work)
        with self._lock:
            self._candidates.pop(queue, None)
        return removed, removed_work

    def close(self) -> None:
        """Release the folder watches and remove the files kept for reuse
        (the broker stays usable)."""
        self._watcher.close()
        if self._spares is not None:
            self._spares.close()


def _file_id(name: str) -> str | None:
    """The message id that a waiting, work or dead-letter file name says; None
    for a name that says none."""
    parsed = parse_work_name(name)
    _, mark, file_id = (parsed[1] if parsed else name).rpartition(".ddmq")
    return file_id if mark else None


def _holds(msg: Message, file_id: str | None) -> bool:
    """Whether ``msg``, read from a file whose name says ``file_id``, is that
    file's message: a file is reused for another message once acked (see
    ddmq.reuse), so a reader that lost the race sees another id."""
    return msg.id is None or file_id is None or str(msg.id) == file_id


#: The original's name for the class: ``ddmq.broker(root)``.
broker = Broker

__all__ = ["Broker", "broker", "check_queue_name", "DEFAULTS"]
