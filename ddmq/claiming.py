"""Claiming messages: which file to rename into ``work/``, reading it, and waiting for one.

A claim is :func:`ddmq.protocol.claim` (one rename) of the next candidate
of the queue's cached listing (:mod:`ddmq.listing`). The lease's length is in
the file, which may be read only after the claim: a claim uses the length
of the last message claimed from the queue (messages of one queue mostly
share it) and, when the file asks for another, corrects it with one more
rename (:func:`ddmq.protocol.extend`).

What a claim reads is checked: a file that is not a message, or not a
regular file (a symbolic link, FIFO, folder: never followed or opened), or
larger than ``max_message_bytes``, is dead-lettered (``unparseable``); a file that holds another message than its
name says was reused after our lease was lost (see :mod:`ddmq.reuse`) and
is dropped as a lost lease.

:meth:`Claimer.wait_and_claim` waits with :func:`ddmq.backoff.wait_until`,
woken early by inotify where the folder is local (:mod:`ddmq.watch`).

With ``auto_ack`` a message is not claimed but received: read where it
waits, then taken out of the queue by :func:`ddmq.protocol.receive`, whose
rename decides which reader gets it; no lease, no ack (one rename instead
of two). A file that cannot be read as a message that way (not a regular
file, unparseable, another id than its name says) is claimed instead, and
dealt with as above.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from . import protocol, reading
from .backoff import wait_until
from .clock import lease_expiry
from .delivery import Delivery
from .errors import FilesystemError, InvalidMessageError, InvalidNameError, UnsafeFileError
from .layout import WORK, WaitingName, WorkName, claimer_tag, queue_time_ns
from .listing import Listings
from .message import Message, short_repr
from .root import Root

log = logging.getLogger(__name__)


def holds(msg: Message, file_id: str | None) -> bool:
    """Whether ``msg``, read from a file whose name says ``file_id``, is that
    file's message: a file is reused for another message once acked (see
    ddmq.reuse), so a reader that lost the race sees another id."""
    return msg.id is None or file_id is None or str(msg.id) == file_id


class Claimer:
    """The consuming side of one broker."""

    def __init__(self, root: Root, listings: Listings, delivery: Delivery):
        self.root = root
        self.listings = listings
        self.delivery = delivery
        self._lease_guess: dict[str, float] = {}  # queue -> lease of the last message claimed

    def claim(self, queue: str, folder: str, n: int, auto_ack: bool = False) -> list[Message]:
        """Claim (with ``auto_ack``: receive) up to ``n`` waiting messages,
        best first; [] if none."""
        settings = self.root.effective(queue)
        got: list[Message] = []
        names: list[str] = []  # the waiting name of each message got
        listed = False  # list at most once per call: what one listing missed, the next call finds
        while len(got) < n:
            try:
                name, fresh_listing = self.listings.next_candidate(queue, folder, settings, not listed)
            except FileNotFoundError:
                if self.root.create and not self.root.queue_exists(queue):
                    self.root.create_queue(queue)
                    return got
                raise self.root.missing(queue) from None
            listed = listed or fresh_listing
            if name is None:
                break
            try:
                if auto_ack:
                    msg = self._receive_one(queue, folder, name, settings)
                else:
                    msg = self._claim_one(queue, folder, name, settings)
            except FilesystemError as err:
                if not got:
                    raise
                # Keep what was claimed: the caller gets it; the file that
                # failed is requeued (or dead-lettered) when its lease expires.
                log.warning("claiming %s of %s failed: %s", name, queue, err)
                break
            self.listings.outcome(queue, msg is not None)
            if msg is not None:
                got.append(msg)
                names.append(name)
        if len(got) > 1:
            # Best first, whatever order the claims succeeded in: after a lost race
            # the listing skips ahead, and finds the messages it skipped when it
            # lists again; a worker runs its batch in this order.
            order = [_rank(name) for name in names]
            got = [msg for _, msg in sorted(zip(order, got), key=lambda pair: pair[0])]
        return got

    def claim_path(self, queue: str, folder: str, path: str, auto_ack: bool = False) -> list[Message]:
        """Claim (or receive) the waiting message file ``path`` (a name in ``queue``'s folder)."""
        name = os.path.basename(os.fspath(path))
        parent = os.path.dirname(os.path.abspath(os.path.join(folder, os.fspath(path))))
        if WaitingName.parse(name) is None or os.path.realpath(parent) != os.path.realpath(folder):
            raise InvalidNameError(f"{path!r} is not a waiting message of queue {queue!r}")
        if not protocol.is_folder(folder, self.root.retry_timeout()):
            raise self.root.missing(queue)
        settings = self.root.effective(queue)
        msg = (self._receive_one if auto_ack else self._claim_one)(queue, folder, name, settings)
        return [msg] if msg is not None else []

    def wait_and_claim(self, queue: str, folder: str, n: int, wait: float | None,
                       housekeeping: Callable[[], None] | None,
                       auto_ack: bool = False) -> list[Message]:
        """:meth:`claim` until something is claimed or ``wait`` seconds
        (None: for ever) passed, pausing with back-off up to the queue's
        ``poll_max`` and running ``housekeeping`` between looks. The caller
        armed the folder's watch, then looked once and found nothing: this
        starts with a pause."""
        watcher = self.root.watcher

        def attempt() -> list[Message]:
            got = self.claim(queue, folder, n, auto_ack)
            if not got and housekeeping is not None:
                housekeeping()
            return got

        if housekeeping is not None:
            housekeeping()
        def most() -> float:
            return float(self.root.effective(queue)["poll_max"])

        # Where every change passes through this kernel, the watch wakes the
        # wait for each new file: short pauses would only be wake-ups for nothing.
        first = most() if self.root.local and watcher.watches(folder) else 0.001
        return wait_until(attempt, wait, first=first, most=most,
                          sleep=lambda pause: watcher.wait(folder, pause), looked=[])

    def _claim_one(self, queue: str, folder: str, name: str, settings: dict[str, Any]) -> Message | None:
        """Claim the waiting file ``name``, read it, and give it its lease."""
        timeout = self._lease_guess.get(queue) or settings["message_timeout"]
        retry = settings["retry_timeout"]
        expiry = lease_expiry(self.root.clock.now(), timeout)
        work = WorkName(expiry, name, f"{claimer_tag()}{self.root.instance}")
        work_name = work.format()
        if not protocol.claim(folder, name, work_name, retry):
            return None
        # ``name`` parsed as a WaitingName when it was listed: its id is the rest.
        msg = self._read_claimed(queue, folder, work, work_name, name.rpartition(".ddmq")[2],
                                 retry, settings["max_message_bytes"])
        if msg is None:
            return None
        msg.filename, msg.expiry = work_name, expiry
        wanted = msg.timeout if msg.timeout is not None else settings["message_timeout"]
        self._lease_guess[queue] = wanted
        if wanted != timeout:
            expiry = lease_expiry(self.root.clock.now(), wanted)
            new_name = work.with_expiry(expiry).format()
            if not protocol.extend(folder, work_name, new_name, retry):
                return None
            msg.filename, msg.expiry = new_name, expiry
        return msg

    def _receive_one(self, queue: str, folder: str, name: str,
                     settings: dict[str, Any]) -> Message | None:
        """Receive the waiting file ``name`` (read it, then take it out of the
        queue: :func:`ddmq.protocol.receive`); None if another process took it."""
        retry = settings["retry_timeout"]
        try:
            data = reading.read(f"{folder}{os.sep}{name}", retry, settings["max_message_bytes"])
            if data is None:
                return None  # taken by another process
            msg: Message | None = Message.from_json(data)
        except (InvalidMessageError, UnsafeFileError):
            msg = None
        if msg is None or not holds(msg, name.rpartition(".ddmq")[2]):
            # Claimed and read again (a slow writer of ddmq 0.9), or dead-lettered.
            msg = self._claim_one(queue, folder, name, settings)
            if msg is not None:
                protocol.retire(folder, msg.filename or "", retry)
                msg.filename = msg.expiry = None
            return msg
        spares = self.root.spares
        if not protocol.receive(folder, name, retry, None if spares is None else spares.retire):
            return None
        msg.queue = queue  # the file's own "queue" field is not to be trusted
        msg.filename = None  # received: nothing to ack
        return msg

    def _read_claimed(self, queue: str, folder: str, work: WorkName, work_name: str,
                      file_id: str | None, retry: float, limit: int) -> Message | None:
        work_path = f"{folder}{os.sep}{WORK}{os.sep}{work_name}"
        problem: Exception
        for attempt in range(3):
            try:
                data = reading.read(work_path, retry, limit)
            except UnsafeFileError as err:  # never read, never followed: set aside at once
                problem = err
                break
            if data is None:
                return None
            try:
                msg = Message.from_json(data)
            except InvalidMessageError as err:
                problem = err
            else:
                if holds(msg, file_id):
                    msg.queue = queue  # the file's own "queue" field is not to be trusted
                    return msg
                if protocol.lstat(work_path, retry) is None:
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
        self.delivery.dead_letter(queue, work_path, "unparseable", work.waiting)
        return None


def _rank(name: str) -> tuple[int, int]:
    """(priority, publish time) of waiting name ``name``: the order of delivery."""
    waiting = WaitingName.parse(name)
    return (0, 0) if waiting is None else (waiting.priority, queue_time_ns(waiting.queue_number))
