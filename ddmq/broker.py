"""The broker: ddmq's public API over one root folder of queues (the seed's API).

``broker(root)`` opens a root; its methods publish, consume, ack, nack,
extend leases, clean, purge, and list queues and messages. The broker is a
facade: each concept lives in a module of its own, and every change to a
queue's files is a transition of :mod:`ddmq.protocol`::

    Broker ──> root          the root folder, settings, queue lifecycle (ddmq.root)
           ──> delivery      publish, requeue, the dead-letter policy   (ddmq.delivery)
           ──> claiming      consume: claim, read, wait                 (ddmq.claiming)
                 └─> listing   which message next: the cached listing   (ddmq.listing)
           ──> housekeeping  expired leases, abandoned requeues, stale files (ddmq.housekeeping)
                               all of them ──> protocol ──> layout (file names)

Housekeeping runs inside publish/consume/ack/nack at most once per
``clean_interval`` seconds per queue and client, and on :meth:`Broker.clean`.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, Callable, Iterable, Literal, Sequence, overload

from . import protocol, reading
from .claiming import Claimer, holds
from .clock import lease_expiry
from .delivery import Delivery
from .errors import (FilesystemError, InvalidMessageError, InvalidNameError, LeaseLostError,
                     MessageNotFoundError)
from .housekeeping import Housekeeper
from .layout import (DEAD, DEAD_REASONS, WORK, DeadName, WaitingName, WorkName, check_queue_name,
                     message_id, new_message_id)
from .listing import Listings
from .message import MAX_NUMBER, MAX_TIMEOUT, Message, next_queue_number, short_repr
from .root import Root
from .settings import DEFAULTS

log = logging.getLogger(__name__)


def _check_publish_options(priority: Any, timeout: Any, requeue: Any, requeue_prio: Any,
                           requeue_limit: Any, msg_id: Any) -> None:
    """InvalidMessageError for an argument of :meth:`Broker.publish` out of range."""
    _check_int("priority", priority, 0)
    _check_int("requeue_prio", requeue_prio, 0)
    _check_int("requeue_limit", requeue_limit, 0)
    _check_int("timeout", timeout, 1, MAX_TIMEOUT)
    if requeue is not None and not isinstance(requeue, bool):
        raise InvalidMessageError(f"requeue must be True, False or None, not {requeue!r}")
    if msg_id is not None and not (isinstance(msg_id, str) and len(msg_id) == 32
                                   and all(c in "0123456789abcdef" for c in msg_id)):
        raise InvalidMessageError(f"msg_id must be 32 lowercase hex digits, not {msg_id!r}")


def _check_int(name: str, value: Any, minimum: int, maximum: int = MAX_NUMBER) -> None:
    if value is not None and (type(value) is not int or not minimum <= value <= maximum):
        raise InvalidMessageError(f"{name} must be a whole number from {minimum} to {maximum}, "
                                  f"not {short_repr(value)}")


def _work_name(name: Any) -> WorkName:
    parsed = WorkName.parse(name) if isinstance(name, str) else None
    if parsed is None:
        raise InvalidNameError(f"{name!r} is not the name of a consumed message "
                               "(EXPIRY.PRIO.NUMBER.ddmqID)")
    return parsed


class Broker:
    """A root folder of queues. Safe to share between threads; every process
    (or node) opens its own.

    ``Broker(root, create=False)`` raises :class:`RootMissingError` if ``root``
    does not exist and :class:`RootUninitiatedError` if it holds no
    ``ddmq.yaml``; with ``create=True`` it makes both (the root private to its
    owner, mode 0700) and publish/consume create missing queues.
    ``verbose`` and ``debug`` are accepted for the original's signature and
    ignored: a library does not set log levels (configure ``logging``).
    """

    def __init__(self, root: str | os.PathLike, create: bool = False,
                 verbose: bool = False, debug: bool = False):
        self._root = Root(root, create)
        self.root = self._root.path
        self.create = self._root.create
        self.clock = self._root.clock
        self._listings = Listings(self._root.clock, self._root.watcher if self._root.local else None)
        self._delivery = Delivery(self._root, self._listings)
        self._claimer = Claimer(self._root, self._listings, self._delivery)
        self._housekeeper = Housekeeper(self._root, self._delivery)

    def __repr__(self) -> str:
        return f"ddmq.broker({self.root!r})"

    # --- settings -------------------------------------------------------------------

    def get_settings(self, queue: str = "") -> dict[str, Any]:
        """The effective settings of ``queue`` (or of the root when empty):
        defaults, overridden by the root's ``ddmq.yaml``, then the queue's."""
        if queue:
            check_queue_name(queue)
        return dict(self._root.effective(queue))

    def get_config_file(self, queue: str = "") -> dict[str, Any]:
        """Only what the ``ddmq.yaml`` of ``queue`` (or of the root) itself says."""
        folder = self._root.queue_dir(queue) if queue else self.root
        return dict(self._root.settings.file_values(folder))

    def update_settings_file(self, queue: str = "", package: dict[str, Any] | None = None) -> None:
        """Set the keys in ``package`` in the ``ddmq.yaml`` of ``queue`` (or of
        the root when empty), replacing the file atomically. Raises
        SettingsError for invalid values, QueueNotFoundError for a missing queue."""
        folder = self._root.require_queue(queue) if queue else self.root
        self._root.update_settings_file(folder, package or {})

    # --- queues ---------------------------------------------------------------------

    def queue_exists(self, queue: str) -> bool:
        """True if ``queue`` is a complete queue folder (``ddmq.yaml`` and ``work/``)."""
        return self._root.queue_exists(queue)

    def create_queue(self, queue: str) -> bool:
        """Create ``queue`` if it does not exist; True. Safe to race with other
        creators. The queue's ``ddmq.yaml`` starts empty, so it follows the root's."""
        self._root.create_queue(queue)
        return True

    def delete_queue(self, queue: str) -> bool:
        """Delete ``queue`` with all its messages, dead letters and settings; True.

        Raises QueueNotFoundError if missing, FilesystemError if the folder
        holds files ddmq did not make (nothing of them is deleted)."""
        self._root.queue_dir(queue)
        self._listings.forget(queue)
        self._root.delete_queue(queue)
        return True

    def list_queues(self) -> list[str]:
        """Names of the queues in the root, sorted."""
        return self._root.list_queues()

    # --- publish and consume --------------------------------------------------------

    def publish(self, queue: str, msg_text: Any = None, priority: int | None = None,
                timeout: int | None = None, requeue: bool | None = None,
                requeue_prio: int | None = None, requeue_limit: int | None = None,
                clean: bool = True, msg_id: str | None = None) -> Message:
        """Publish ``msg_text`` (any JSON-serialisable value) to ``queue``; return the message.

        ``priority``: 0 is consumed first (default: the queue's setting, 999).
        ``timeout``: lease length in seconds once consumed. ``requeue``: whether
        nack and lease expiry requeue it (``requeue_prio`` implies True).
        ``requeue_limit``: requeues allowed before it is dead-lettered. Values
        left None follow the queue's settings. ``msg_id``: the message's id
        (32 hex digits; default: a new random one), for a message that carries
        on part of another one, under the id its publisher knows it by.
        Raises QueueNotFoundError (unless the broker creates queues),
        InvalidMessageError, FilesystemError.
        """
        folder = self._root.queue_dir(queue)
        _check_publish_options(priority, timeout, requeue, requeue_prio, requeue_limit, msg_id)
        if requeue_prio is not None and requeue is None:
            requeue = True
        settings = self._root.effective(queue)
        if priority is None:
            priority = settings["priority"]
        msg = Message(queue=queue, message="" if msg_text is None else msg_text,
                      timeout=timeout, id=msg_id or new_message_id(), priority=priority,
                      queue_number=next_queue_number(), requeue=requeue,
                      requeue_limit=requeue_limit, requeue_prio=requeue_prio)
        self._delivery.write_waiting(queue, folder, msg, settings)
        if clean:
            self._housekeeper.maybe_clean(queue)
        log.debug("published %s to %s", msg.filename, queue)
        return msg

    # The seed's contract: one Message (or None) for n == 1, else a list. The
    # overloads overlap for an ``n`` typed int that is 1 at run time; pass n
    # as a literal 1 (or leave it out) to be typed a Message.
    @overload
    def consume(self, queue: str, n: Literal[1] = 1,  # type: ignore[overload-overlap]
                path: str | None = None, wait: float | None = 0.0,
                clean: bool = True, *, auto_ack: bool = False) -> Message | None: ...

    @overload
    def consume(self, queue: str, n: int, path: str | None = None, wait: float | None = 0.0,
                clean: bool = True, *, auto_ack: bool = False) -> list[Message]: ...

    def consume(self, queue: str, n: int = 1, path: str | None = None, wait: float | None = 0.0,
                clean: bool = True, *, auto_ack: bool = False) -> Message | list[Message] | None:
        """Claim up to ``n`` messages of ``queue``, best priority first.

        Returns a Message or None when ``n`` is 1, else a list (maybe empty).
        Each message is leased to the caller until ``ack``/``nack`` or until
        its lease (``timeout``, else the queue's ``message_timeout``) expires.
        ``wait``: seconds to block until at least one message is available
        (None or infinity: for ever; 0: return at once). ``path``: claim that
        message file. ``auto_ack``: taken out of the queue as read, no lease, nothing to
        ack (``filename`` None); still each to one consumer, but lost if it dies (at-most-once).
        Raises ValueError for an ``n`` that is not a whole number >= 1 or a ``wait``
        that is negative or NaN (before anything is claimed); QueueNotFoundError, FilesystemError.
        """
        if type(n) is not int or n < 1:
            raise ValueError(f"n must be a whole number >= 1, not {n!r}")
        if wait is not None and not (isinstance(wait, (int, float)) and wait >= 0):  # NaN too
            raise ValueError(f"wait must be a number of seconds >= 0, or None, not {wait!r}")
        folder = self._root.queue_dir(queue)
        if clean:
            self._housekeeper.maybe_clean(queue)
        if path is not None:
            got = self._claimer.claim_path(queue, folder, path, auto_ack)
        else:
            if wait != 0:
                self._root.watcher.arm(folder)  # before the first look: no change missed
            got = self._claimer.claim(queue, folder, n, auto_ack)
            if not got and wait != 0:
                housekeeping = (lambda: self._housekeeper.maybe_clean(queue)) if clean else None
                got = self._claimer.wait_and_claim(queue, folder, n, wait, housekeeping, auto_ack)
        if n == 1:
            return got[0] if got else None
        return got

    def watch(self, queue: str) -> bool:
        """Watch ``queue`` (inotify): a message arriving later ends :meth:`wait_for_messages`
        at once. Call before a look that may find it empty. False: waits only sleep."""
        return self._root.watcher.watches(self._root.queue_dir(queue))

    def wait_for_messages(self, queue: str, timeout: float) -> bool:
        """Block until a file appears in ``queue`` (True: a hint) or ``timeout`` s pass."""
        return self._root.watcher.wait(self._root.queue_dir(queue), timeout)

    # --- ack, nack, lease -----------------------------------------------------------

    def _targets(self, queue: str | Message,
                 msg_files: str | Sequence[str] | None) -> tuple[str, list[tuple[str, WorkName]]]:
        if isinstance(queue, Message):
            if msg_files is None:
                msg_files = [queue.filename] if queue.filename is not None else []
            queue = queue.queue if queue.queue is not None else ""
        self._root.queue_dir(queue)
        if msg_files is None or msg_files == [] or msg_files == "":
            raise ValueError("no message files given")
        names = [msg_files] if isinstance(msg_files, str) else list(msg_files)
        return queue, [(name, _work_name(name)) for name in names]

    def ack(self, queue: str | Message, msg_files: str | Sequence[str] | None = None,
            clean: bool = True) -> list[str]:
        """Acknowledge consumed messages: delete their work files.

        ``ack(msg)`` or ``ack(queue, work_file_name_or_names)``. Returns the
        names acked. Raises LeaseLostError (``.missing``) if any work file was
        gone: its lease expired (it was requeued) or it was acked already.
        """
        queue, works = self._targets(queue, msg_files)
        folder = self._root.queue_dir(queue)
        retry = self._root.retry_timeout(queue)
        spares = self._root.spares
        make_spare = None if spares is None else spares.retire
        return self._settle(queue, works, clean,
                            lambda name, work: protocol.retire(folder, name, retry, make_spare))

    def nack(self, queue: str | Message, msg_files: str | Sequence[str] | None = None,
             requeue: bool | None = None, clean: bool = True, *, count: bool = True) -> list[str]:
        """Negatively acknowledge consumed messages.

        ``requeue=None`` follows each message's ``requeue`` (else the queue's
        setting, true by default); True requeues it (``requeue_counter`` + 1,
        priority ``requeue_prio``; past ``requeue_limit`` it is dead-lettered);
        False deletes it. ``count=False`` gives a message back untouched (same
        priority, counter and limit check skipped), for a consumer that stops
        before it could try: it is not a failure. Returns the names nacked;
        raises LeaseLostError like ack. On a full filesystem (FilesystemError
        ENOSPC or EDQUOT) the message stays at work, still leased to the
        caller, who may nack it again once there is room.
        """
        queue, works = self._targets(queue, msg_files)
        folder = self._root.queue_dir(queue)
        retry = self._root.retry_timeout(queue)

        def give_back(name: str, work: WorkName) -> bool:
            work_path = os.path.join(folder, WORK, name)
            if requeue is False:
                return protocol.remove(work_path, retry)
            private = self._delivery.take(queue, work_path, work.waiting)
            if private is None:
                return False
            try:
                self._delivery.finish_requeue(queue, private, requeue, drop_when_not_requeued=True,
                                              count=count)
            except FilesystemError as err:
                # No room for the copy (nothing was published): the message goes back
                # to work/ under its lease, still the caller's, who may nack it again
                # as space returns, instead of waiting in tmp/ for housekeeping.
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    protocol.move(private, work_path, retry)
                raise
            return True

        return self._settle(queue, works, clean, give_back)

    def _settle(self, queue: str, works: list[tuple[str, WorkName]], clean: bool,
                act: Callable[[str, WorkName], bool]) -> list[str]:
        """``act`` on each consumed message (False: its work file was gone);
        the names done, or LeaseLostError naming those that were gone."""
        done: list[str] = []
        missing: list[str] = []
        for name, work in works:
            (done if act(name, work) else missing).append(name)
        if clean:
            self._housekeeper.maybe_clean(queue)
        if missing:
            raise LeaseLostError(f"lease lost for {', '.join(missing)} in {queue}: "
                                 "it expired and was requeued, or was acked already", missing)
        return done

    def extend_lease(self, msg: Message, timeout: float | None = None) -> Message:
        """Renew the lease of a consumed message: it now ends ``timeout``
        seconds from now (default: its own timeout, else the queue's
        ``message_timeout``). Updates and returns ``msg``; raises
        LeaseLostError if the lease was already lost, InvalidMessageError
        (before anything changes) for a ``timeout`` that is not a number of
        seconds from 1 to ``MAX_TIMEOUT`` (ten years)."""
        if timeout is not None and not (isinstance(timeout, (int, float))
                                        and not isinstance(timeout, bool)
                                        and 1 <= timeout <= MAX_TIMEOUT):  # refuses NaN, inf
            raise InvalidMessageError(f"a lease must be a number of seconds from 1 to "
                                      f"{MAX_TIMEOUT}, not {short_repr(timeout)}")
        queue, ((old, work),) = self._targets(msg, None)
        folder = self._root.queue_dir(queue)
        settings = self._root.effective(queue)
        if timeout is None:
            timeout = msg.timeout if msg.timeout is not None else settings["message_timeout"]
        expiry = lease_expiry(self.clock.now(), timeout)
        new = work.with_expiry(expiry).format()
        if not protocol.extend(folder, old, new, settings["retry_timeout"]):
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
        queue, ((name, work),) = self._targets(msg, None)
        folder = self._root.queue_dir(queue)
        private = self._delivery.take(queue, os.path.join(folder, WORK, name), work.waiting)
        if private is None:
            raise LeaseLostError(f"lease lost for {name} in {queue}", [name])
        self._delivery.dead_letter(queue, private, reason, work.waiting)
        log.warning("dead-lettered %s of %s: %s", work.waiting, queue, reason)
        return DeadName(reason, work.waiting).format()

    # --- dead letters ---------------------------------------------------------------

    def list_dead(self, queue: str) -> list[str]:
        """Names of the dead letters of ``queue`` (``REASON.PRIO.NUMBER.ddmqID``), sorted."""
        folder = self._root.require_queue(queue, create=False)
        names = protocol.list_if_there(os.path.join(folder, DEAD), self._root.retry_timeout(queue),
                                       follow=False)
        return sorted(n for n in names if DeadName.parse(n))

    def requeue_dead(self, queue: str, names: Iterable[str] | None = None) -> list[str]:
        """Put dead letters of ``queue`` back in the queue as they are (all of
        them when ``names`` is None); returns the names requeued. Raises
        MessageNotFoundError for a named dead letter that does not exist."""
        folder = self._root.require_queue(queue, create=False)
        retry = self._root.retry_timeout(queue)
        wanted = self.list_dead(queue) if names is None else list(names)
        done = []
        for name in wanted:
            parsed = DeadName.parse(name) if isinstance(name, str) else None
            if parsed is None or parsed.reason not in DEAD_REASONS:
                raise InvalidNameError(f"{name!r} is not the name of a dead letter")
            if protocol.undead(folder, name, parsed.waiting, retry):
                done.append(name)
            elif names is not None:
                raise MessageNotFoundError(f"no dead letter {name} in {queue}")
        self._listings.forget(queue)
        return done

    # --- housekeeping ---------------------------------------------------------------

    def clean(self, queue: str, force: bool = False) -> bool:
        """Housekeeping of ``queue``: requeue messages whose lease expired
        (or dead-letter them: past ``requeue_limit``, or ``requeue`` false),
        finish requeues abandoned by dead processes, remove temporary files
        of dead publishers. Unless ``force``, runs only if this client has not
        cleaned the queue in the last ``clean_interval`` seconds; returns
        whether it ran. Safe to run in many processes at once."""
        self._root.require_queue(queue, create=False)
        if not force and not self._housekeeper.due(queue):
            return False
        self._housekeeper.clean(queue, thorough=True)
        return True

    def requeue_claims(self, queue: str, claimer: str, *, count: bool = True) -> list[str]:
        """Requeue now every message of ``queue`` held by a consumer known to
        be dead, whose claimer tag (:func:`ddmq.layout.claimer_tag`, which a
        consumer may publish, e.g. in a heartbeat) is ``claimer``: each is
        handled as if its lease had expired (requeued with its counter + 1,
        or dead-lettered past its limit). ``count=False`` gives them back
        untouched, as ``nack(count=False)`` does (the consumer died of
        something that was not its messages' fault, e.g. its batch job's
        time limit). Returns the waiting names handled."""
        if not (isinstance(claimer, str) and claimer.isascii() and claimer.isalnum()):
            raise ValueError(f"not a claimer tag: {claimer!r}")
        self._root.require_queue(queue, create=False)
        return self._housekeeper.requeue_claims(queue, claimer, count=count)

    def clean_all(self) -> None:
        """Run :meth:`clean` (forced) on every queue of the root."""
        for queue in self.list_queues():
            self.clean(queue, force=True)

    # --- inspection and removal -----------------------------------------------------

    def get_message_list(self, queue: str) -> tuple[list[str], list[str]]:
        """(waiting file names, at-work file names) of ``queue``."""
        folder = self._root.require_queue(queue, create=False)
        retry = self._root.retry_timeout(queue)
        waiting = [n for n in protocol.list_if_there(folder, retry, follow=False)
                   if WaitingName.parse(n)]
        work = [n for n in protocol.list_if_there(os.path.join(folder, WORK), retry, follow=False)
                if WorkName.parse(n)]
        return waiting, work

    def get_message(self, path: str) -> Message:
        """Read the message file at ``path`` (inside the root) without claiming it."""
        full = self._root.message_path(path)
        data = reading.read(full, self._root.retry_timeout(),
                             self._root.effective()["max_message_bytes"])
        msg = None if data is None else Message.from_json(data)
        if msg is None or not holds(msg, message_id(full)):  # gone, or reused since
            raise MessageNotFoundError(f"no message file {full}")
        return msg

    def delete_message(self, path: str | Message) -> bool:
        """Delete one waiting or at-work message (a path inside the root, or a
        Message). Raises MessageNotFoundError if it is gone."""
        full = self._root.message_path(path)
        if not protocol.remove(full, self._root.retry_timeout()):
            raise MessageNotFoundError(f"no message file {full}")
        return True

    def purge_queue(self, queue: str) -> tuple[int, int]:
        """Delete every waiting and at-work message of ``queue`` (dead letters
        stay); returns (waiting removed, at work removed)."""
        folder = self._root.require_queue(queue, create=False)
        retry = self._root.retry_timeout(queue)
        waiting, work = self.get_message_list(queue)
        removed = sum(protocol.remove(os.path.join(folder, n), retry) for n in waiting)
        removed_work = sum(protocol.remove(os.path.join(folder, WORK, n), retry) for n in work)
        self._listings.forget(queue)
        return removed, removed_work

    def close(self) -> None:
        """Release the folder watches and remove the files kept for reuse
        (the broker stays usable)."""
        self._root.close()


#: The original's name for the class: ``ddmq.broker(root)``.
broker = Broker

__all__ = ["Broker", "broker", "check_queue_name", "DEFAULTS"]
