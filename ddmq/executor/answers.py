"""A worker's answers: the results of the tasks it ran, published to their reply queues, then their tasks acked.

Also the answers that are not results: a refusal for each task of a message
that failed verification (:meth:`Answers.refuse`, the message dead-lettered
unopened) and for a task whose payload file is gone (:meth:`Answers.drop`).

The worker's main thread gathers the :class:`Answer` of each task of a
batch and sends them together (one reply message per reply queue); the
keeper thread sends those gathered so far when a task of the batch turns
out slow. On a full filesystem (ENOSPC, EDQUOT) nothing is given back,
which would have the tasks run again: the main thread tries again with
back-off as space returns, for up to the queue's ``retry_timeout``,
extending the leases it holds meanwhile (:meth:`Answers.when_room`).
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ..backoff import wait_until
from ..errors import (DdmqError, FilesystemError, InvalidNameError, LeaseLostError,
                      QueueNotFoundError)
from ..layout import DEAD, check_queue_name
from ..message import Message
from .envelope import Refusal
from .errors import PayloadMissingError, SignatureError

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("ddmq.executor.worker")

#: errno values of a full filesystem: results wait for room, not given back.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class Answer:
    """A task that ran: its message, and the result envelope to send back
    (None: nothing to send). ``last``: its message is acked once this is
    sent (False for the tasks of a bundle before its last, see :mod:`.bundle`)."""

    __slots__ = ("msg", "task", "reply", "result", "last")

    def __init__(self, msg: Message, task: str, reply: str, result: dict[str, Any] | None,
                 last: bool = True):
        self.msg, self.task, self.reply, self.result = msg, task, reply, result
        self.last = last


class Answers:
    """The answers of one worker not sent yet, and how they are sent."""

    def __init__(self, worker: Worker):
        self._worker = worker
        # Its own lock, not the worker's: the keeper sends what is unsent while
        # holding the worker's lock when the grace period ends.
        self._lock = threading.Lock()
        self._unsent: list[Answer] = []  # tasks of the batch that ran, not answered yet
        self._room_given_up = -math.inf  # when when_room last waited in vain for space
        # Bundles (see .bundle) a result of which could not be published: given
        # back, not acked, when their last task is answered.
        self._failed: set[str] = set()

    def add(self, answer: Answer) -> None:
        """Keep ``answer`` to be sent with the rest of its batch."""
        with self._lock:
            self._unsent.append(answer)

    def any_unsent(self) -> bool:
        return bool(self._unsent)

    def send_unsent(self) -> None:
        """Send the answers kept so far (from either thread; each is sent once)."""
        with self._lock:
            unsent, self._unsent = self._unsent, []
        if unsent:
            self.answer(unsent)

    def answer(self, answers: list[Answer]) -> None:
        """Publish the results (one message per reply queue), then ack their tasks."""
        by_reply: dict[str, list[Answer]] = {}
        for answer in answers:
            by_reply.setdefault(answer.reply, []).append(answer)
        done: list[Answer] = []
        for reply, group in by_reply.items():
            try:
                if not self._publish_results(reply, group):
                    with self._lock:  # the filesystem is full: sent again later
                        self._unsent.extend(group)
                    continue
                done.extend(group)
                continue
            except QueueNotFoundError:
                log.info("reply queue %s is gone (its executor shut down): results of %d "
                         "task(s) dropped", reply, len(group))
                done.extend(group)
            except DdmqError as err:
                log.error("cannot publish results to %s: %s; giving %d task(s) back",
                          reply, err, len(group))
                for answer in group:  # once per message (a bundle's tasks share one)
                    if answer.last:
                        self._worker._nack(answer.msg, answer.task)
                    elif answer.msg.filename:  # given back when its last task is answered
                        self._failed.add(answer.msg.filename)
            for answer in group:
                if answer.result is not None:
                    self._worker._spills.discard(answer.result, answer.reply)
        names = []
        for answer in done:
            if not answer.last or not answer.msg.filename:
                continue
            if answer.msg.filename in self._failed:  # a result of its bundle was not sent
                self._failed.discard(answer.msg.filename)
                self._worker._nack(answer.msg, answer.task)
            else:
                names.append(answer.msg.filename)
        if not names:
            return
        try:
            self._worker.broker.ack(self._worker.queue, names)
        except LeaseLostError as err:
            log.warning("lease already lost at ack (the task was requeued and may run again "
                        "elsewhere; the executor keeps the first result): %s", ", ".join(err.missing))
        except DdmqError as err:
            log.warning("cannot ack %d task(s): %s (they may run again; their duplicate "
                        "results will be ignored)", len(done), err)
        log.debug("done: tasks %s", ", ".join(a.task for a in done))

    def _publish_results(self, reply: str, group: list[Answer]) -> bool:
        """Publish the results of ``group`` to ``reply`` (True). On a full
        filesystem they are not given back, which would have them run again:
        the main thread tries again as space returns (:meth:`_when_room`); the
        keeper thread leaves them for later (False), unless the worker is
        stopping. Raises the broker's errors otherwise."""
        body = [a.result for a in group if a.result is not None]
        if not body:
            return True
        try:
            self.when_room(lambda: self._worker.broker.publish(reply, body), f"publish results to {reply}",
                            [a.msg for a in group])
            return True
        except FilesystemError as err:
            if err.errno in FULL_ERRNOS and threading.current_thread() is self._worker._keeper \
                    and not self._worker._stopping:
                log.debug("cannot publish results to %s now: %s", reply, err)
                return False
            raise

    def when_room(self, act: Callable[[], Any], what: str, held: list[Message]) -> None:
        """``act()``. On a full filesystem (:data:`FULL_ERRNOS`), the main
        thread does it again with back-off as space returns, for up to the
        queue's ``retry_timeout`` (less if told to stop and the grace period
        ends), extending the leases of the messages ``held`` meanwhile (a
        rename needs no space). Raises the last error if it never succeeds,
        and at once in the keeper thread, which must not wait."""
        try:
            act()
            return
        except FilesystemError as err:
            if err.errno not in FULL_ERRNOS or threading.current_thread() is self._worker._keeper:
                raise
            last = err
        timeout = float(self._worker.broker.get_settings(self._worker.queue)["retry_timeout"])
        if time.monotonic() - self._room_given_up < timeout:
            raise last  # still full: waiting for each of a batch would take its length times
        log.warning("cannot %s: %s; trying again for up to %.0f s", what, last, timeout)
        lease = min(self._worker._lease_of(msg) for msg in held)
        next_extend = 0.0

        def attempt() -> bool:
            nonlocal last, next_extend
            if self._worker._stopping and time.monotonic() >= self._worker._stop_deadline:
                raise last  # told to stop, and the grace period is over
            if time.monotonic() >= next_extend:
                next_extend = time.monotonic() + lease / 3
                for msg in held:
                    try:
                        self._worker.broker.extend_lease(msg, self._worker._lease_of(msg))
                    except DdmqError:
                        pass  # lost: it may run again; its duplicate result is ignored
            try:
                act()
                return True
            except FilesystemError as err:
                if err.errno not in FULL_ERRNOS:
                    raise
                last = err
                return False

        if not wait_until(attempt, timeout, first=0.05, most=2.0):
            self._room_given_up = time.monotonic()
            raise last
        log.warning("could %s: the filesystem has room again", what)

    def refuse(self, msg: Message, docs: list[Any], err: SignatureError) -> None:
        """Dead-letter a task message that failed verification and tell the
        executor of each task it names (``docs``: its envelopes), with a
        refusal in place of a result."""
        worker = self._worker
        tasks = [doc.get("task") if isinstance(doc, dict) else None for doc in docs]
        named = ", ".join(task if isinstance(task, str) else "?" for task in tasks)
        log.error("refused task %s (message %s): %s; dead-lettering it without unpickling it",
                  named, msg.id, err)
        try:
            dead = worker.broker.reject(msg)
            where = f"{worker.queue}/{DEAD}/{dead}"
        except DdmqError as reject_err:
            log.warning("cannot dead-letter message %s: %s", msg.id, reject_err)
            where = "(not dead-lettered)"
        for task, doc in zip(tasks, docs):
            reply = doc.get("reply") if isinstance(doc, dict) else None
            if not isinstance(task, str) or not isinstance(reply, str):
                continue
            try:
                check_queue_name(reply)
                worker.broker.publish(reply, [Refusal(task, worker.name, f"{err}; message {where}")
                                              .to_doc(worker.secret, reply)])
            except (InvalidNameError, QueueNotFoundError):
                pass
            except DdmqError as pub_err:
                log.warning("cannot tell %s that task %s was refused: %s", reply, task, pub_err)

    def drop(self, doc: dict[str, Any], err: PayloadMissingError) -> None:
        """A task whose payload file is gone is over (its executor has the
        result, or is gone): tell the executor in case it waits (its message
        is acked with the batch's answers)."""
        worker = self._worker
        log.warning("dropping task %s: %s", doc.get("task"), err)
        try:
            worker.broker.publish(doc["reply"], [Refusal(doc["task"], worker.name, str(err))
                                                 .to_doc(worker.secret, doc["reply"])])
        except DdmqError:
            pass
