"""Putting messages into a queue: publishing, requeueing, and the dead-letter policy.

Every message file that appears in a queue folder comes through
:meth:`Delivery.write_waiting`: a new message (``publish``) or a requeued
copy (``nack``, lease expiry). The policy of what happens to a message taken
back from ``work/`` lives here too (:meth:`Delivery.finish_requeue`):
requeued with its counter + 1, dropped, or dead-lettered (unparseable, past
its ``requeue_limit``, or ``requeue`` false). The filesystem steps
themselves, and why each is safe, are in :mod:`ddmq.protocol`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import protocol, reading
from .errors import InvalidMessageError, UnsafeFileError
from .layout import TMP, RequeueName, WaitingName
from .listing import Listings
from .message import Message, next_queue_number
from .root import Root

log = logging.getLogger(__name__)


class Delivery:
    """Writes waiting messages and finishes requeues for one broker."""

    def __init__(self, root: Root, listings: Listings):
        self.root = root
        self.listings = listings

    def write_waiting(self, queue: str, folder: str, msg: Message, settings: dict[str, Any],
                      private: str | None = None) -> None:
        """Write ``msg`` (its ``priority`` and ``queue_number`` set) as a
        waiting file of ``queue``, setting ``msg.filename``; with ``private``
        (a file taken by :meth:`take`), as a requeue that then unlinks it.

        Creates ``tmp/`` if missing (queues made by ddmq 0.9 have none), and
        the queue if the root creates queues; else QueueNotFoundError."""
        assert msg.priority is not None and msg.queue_number is not None and msg.id is not None
        waiting = WaitingName(msg.priority, msg.queue_number, msg.id)
        msg.filename = name = waiting.format()
        data = msg.to_json(requeue_default=bool(settings["requeue"])).encode("utf-8")
        limit = settings["max_message_bytes"]
        if len(data) > limit:
            raise InvalidMessageError(f"message is {len(data)} bytes, over the queue's "
                                      f"max_message_bytes of {limit}")
        retry = settings["retry_timeout"]
        tmp = f"{folder}{os.sep}{TMP}"
        spares = self.root.spares
        spare = None if spares is None else spares.take(tmp, retry)
        for attempt in range(3):
            try:
                if private is None:
                    protocol.publish(folder, name, data, fsync=settings["fsync"],
                                     retry_timeout=retry, spare=spare)
                else:
                    protocol.requeue(folder, private, name, data, fsync=settings["fsync"],
                                     retry_timeout=retry, spare=spare)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise self.root.missing(queue) from None
                if not self.root.queue_exists(queue):
                    self.root.require_queue(queue)
                else:  # a queue made by ddmq 0.9 has no tmp/ folder
                    protocol.make_folder(tmp, retry)
            finally:
                spare = None  # used up, whatever happened
        self.listings.remember(queue, waiting, name)

    def take(self, queue: str, path: str, waiting: str) -> str | None:
        """Take a work file (or an abandoned requeue) privately, the first
        step of a requeue or a dead-lettering; see :func:`protocol.take`."""
        return protocol.take(self.root.queue_dir(queue), path, waiting, self.root.clock.now(),
                             self.root.retry_timeout(queue))

    def finish_requeue(self, queue: str, private: str, requeue: bool | None,
                       drop_when_not_requeued: bool, count: bool = True) -> str:
        """Publish the copy of a privately taken message, then unlink it; or
        drop it, or dead-letter it. Returns what happened: "requeued",
        "dropped", "gone", or the dead-letter reason.

        ``requeue`` None follows the message's own ``requeue``, else the
        queue's setting. ``count`` False gives it back untouched (same
        priority, no counter increment, no limit check)."""
        folder = self.root.queue_dir(queue)
        settings = self.root.effective(queue)
        retry = settings["retry_timeout"]
        parsed = RequeueName.parse(os.path.basename(private))
        assert parsed is not None, private
        waiting = parsed.waiting
        try:
            data = reading.read(private, retry, settings["max_message_bytes"])
            if data is None:
                return "gone"
            msg = Message.from_json(data)
        except (InvalidMessageError, UnsafeFileError) as err:
            log.warning("dead-lettering unparseable message %s of %s: %s", waiting, queue, err)
            self.dead_letter(queue, private, "unparseable", waiting)
            return "unparseable"
        if requeue is None:
            requeue = msg.requeue if msg.requeue is not None else settings["requeue"]
        if not requeue:
            if drop_when_not_requeued:
                protocol.remove(private, retry)
                return "dropped"
            self.dead_letter(queue, private, "expired", waiting)
            return "expired"
        limit = msg.requeue_limit if msg.requeue_limit is not None else settings["requeue_limit"]
        if count and limit is not None and msg.requeue_counter >= limit:
            log.warning("dead-lettering %s of %s: requeued %d times, limit %d",
                        waiting, queue, msg.requeue_counter, limit)
            self.dead_letter(queue, private, "requeue_limit", waiting)
            return "requeue_limit"
        msg.queue = queue
        if msg.id is None:  # a file of another writer: keep the id its name says
            msg.id = WaitingName.parse(waiting).id  # type: ignore[union-attr]
        if count:
            msg.requeue_counter += 1
            msg.priority = msg.requeue_prio if msg.requeue_prio is not None else settings["requeue_prio"]
        if msg.priority is None:
            msg.priority = settings["priority"]
        msg.queue_number = next_queue_number()
        self.write_waiting(queue, folder, msg, settings, private=private)
        log.info("requeued %s of %s as %s", waiting, queue, msg.filename)
        return "requeued"

    def dead_letter(self, queue: str, path: str, reason: str, waiting: str) -> None:
        """Move ``path`` to the dead letters of ``queue`` (see :func:`protocol.dead_letter`)."""
        protocol.dead_letter(self.root.queue_dir(queue), path, reason, waiting,
                             self.root.retry_timeout(queue))

