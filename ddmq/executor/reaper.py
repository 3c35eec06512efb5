"""What a dead executor leaves behind, removed; and its tasks, dropped instead of run.

An executor that died (SIGKILL, a second Ctrl-C, its node crashed) never
deletes its reply queue ``reply-HOST-PID-TOKEN`` nor its spill folder
``.payloads/REPLY``, and its tasks still wait in the task queue. Whether it
is dead is told by its record (:mod:`ddmq.executor.drivers`); this module
acts on it, in three places::

    executor's collector, at start      for each reply-* queue of the root whose executor
    and every REAP_SECONDS (DriverUpkeep)  is dead (drivers.death):
    ddmq clean ROOT QUEUES (reap_dead)       delete the reply queue, then the spill folder,
                                             then the record (reap): a reap cut short is
                                             done again by the next, and never half-judged
    worker, for each task (OrphanTasks)  its reply queue gone, or its executor dead (then
                                         reaped): ack the task without running it, log it

While a task runs, the worker's keeper looks at its reply queue every
:data:`CHECK_SECONDS` (one ``lstat``; the whole check every
:data:`FULL_CHECK_SECONDS`). When it is gone (the executor shut down, was
interrupted with Ctrl-C, or was reaped) the keeper acks the task and
interrupts its call: a :data:`DROP_SIGNAL` to the main thread, whose handler
raises :class:`TaskDropped` inside the call, so a ``time.sleep`` or a
Python loop stops at once. A call that swallows it runs on, and its outcome
is dropped.

The reply queue of a named run (``run-NAME``) is never judged, reaped or
dropped: a run outlives its drivers (see :mod:`ddmq.executor.runs`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from .. import protocol
from ..broker import Broker
from ..errors import DdmqError, LeaseLostError, QueueNotFoundError, UnsafeFileError
from ..message import Message
from .bundle import task_envelopes
from .drivers import DRIVERS_DIR, DriverRecord, death, is_executor_reply, record_path
from .spill import SpillStore

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["REAP_SECONDS", "CHECK_SECONDS", "TaskDropped", "reap", "reap_dead", "DriverUpkeep",
           "OrphanTasks"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two reaps of the root by an executor's collector.
REAP_SECONDS = 60.0
#: Seconds between two looks of a worker at the reply queue of its running
#: task (and for how long it trusts what it found for the tasks it starts).
CHECK_SECONDS = 5.0
#: Seconds between two whole checks (the executor's record) of a running task.
FULL_CHECK_SECONDS = 30.0
#: The signal the keeper sends the worker's main thread to stop a dropped
#: task's call. Its default action is to ignore it, so a stray one is harmless.
DROP_SIGNAL = signal.SIGURG

#: signal.getsignal wraps its answer in an enum (2 us, once per task): ask
#: CPython's C module (which the signal module imports) directly.
_getsignal: Callable[[int], object] = getattr(sys.modules.get("_signal"), "getsignal",
                                              signal.getsignal)
#: Seconds transient filesystem errors are retried by these looks.
_RETRY = 5.0


class TaskDropped(BaseException):
    """Raised in a task's call when its executor went away: the call stops,
    and nothing is sent back. A BaseException, so a task's ``except
    Exception`` does not swallow it."""


def reap(broker: Broker, spills: SpillStore, reply: str, reason: str) -> bool:
    """Remove what the dead executor of ``reply`` left: its reply queue, then
    its spill folder, then its record. True if done; False (logged) if the
    queue could not be deleted, for the next reap to try again."""
    if not is_executor_reply(reply):
        return False
    try:
        broker.delete_queue(reply)
    except QueueNotFoundError:
        pass  # gone already, or a link planted in its place: never followed
    except DdmqError as err:
        log.warning("cannot remove the reply queue %s of a dead executor (%s): %s",
                    reply, reason, err)
        return False
    spills.remove(reply)
    protocol.remove_quietly(record_path(broker.root, reply))
    log.info("removed the reply queue %s and the spill folder of a dead executor (%s)",
             reply, reason)
    return True


def reap_dead(broker: Broker, spills: SpillStore | None = None) -> list[tuple[str, str]]:
    """Reap every executor of the root known to be dead (see
    :func:`ddmq.executor.drivers.death`); (reply queue, why dead) of each."""
    root = broker.root
    retry = float(broker.get_settings()["retry_timeout"])
    replies = {name for name in protocol.list_if_there(root, retry) if is_executor_reply(name)}
    try:
        records = protocol.list_if_there(os.path.join(root, DRIVERS_DIR), retry, follow=False)
    except UnsafeFileError as err:  # a link planted as the folder: not listed through
        log.warning("not reading executor records: %s", err)
        records = []
    for name in records:
        if name.endswith(".json") and is_executor_reply(name[:-5]):
            replies.add(name[:-5])
    spills = spills or SpillStore(root)
    reaped = []
    for reply in sorted(replies):
        reason = death(root, reply, broker.clock)
        if reason is not None and reap(broker, spills, reply, reason):
            reaped.append((reply, reason))
    return reaped


class DriverUpkeep:
    """An executor's part: its record, and reaping the dead ones'.

    :meth:`start` when the executor starts (before its reply queue is made),
    :meth:`round` from each of the collector's housekeeping rounds,
    :meth:`end` when it shuts down (what it leaves is removed there)."""

    def __init__(self, broker: Broker, spills: SpillStore, reply: str, queue: str):
        self._broker = broker
        self._spills = spills
        self.record = DriverRecord(broker.root, reply, queue)
        self._next_reap = 0.0

    def start(self) -> None:
        self.record.write()

    def round(self) -> None:
        self.record.beat()
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + REAP_SECONDS
            try:
                reap_dead(self._broker, self._spills)
            except (OSError, DdmqError) as err:
                log.warning("cannot look for dead executors in %s: %s", self._broker.root, err)

    def end(self, keep_queue: bool = False) -> None:
        """Delete the reply queue and its spill folder (unless ``keep_queue``:
        a named run's, which outlives its drivers), then the record, unless
        the reply queue could not be deleted: then the record stays, for the
        queue to be reaped once this process is gone."""
        reply = self.record.reply
        for attempt in range(0 if keep_queue else 3):
            try:
                self._broker.delete_queue(reply)
                break
            except QueueNotFoundError:
                break
            except DdmqError as err:  # a late reply landed while deleting: try again
                if attempt == 2:
                    log.warning("cannot delete the reply queue %s: %s", reply, err)
        if not keep_queue:
            self._spills.remove(reply)
        try:
            left = protocol.lstat(os.path.join(self._broker.root, self.record.reply), _RETRY)
        except DdmqError:
            left = None
        if left is None:
            self.record.remove()


class OrphanTasks:
    """A worker's part: its tasks whose executor is gone are dropped, not run.

    :meth:`drop_if_orphan` before a task starts (main thread); :meth:`run`
    around its call (main thread); :meth:`tick` from the keeper thread."""

    def __init__(self, worker: Worker):
        self._worker = worker
        self._lock = threading.Lock()
        # reply queue -> (monotonic time until which it holds, why gone or None)
        self._known: dict[str, tuple[float, str | None]] = {}
        self._told: set[str] = set()  # reply queues whose drops were logged as a warning
        self._current: tuple[Message, str, str] | None = None  # msg, task, reply of the call
        self._dropped: str | None = None  # the task the keeper dropped while it ran
        self._in_call = False
        self._raised = False
        self._next_look = 0.0
        self._next_full = 0.0

    # --- is the executor gone? ----------------------------------------------------

    def gone(self, reply: str, full: bool = True, cached: bool = True) -> str | None:
        """Why the executor of ``reply`` is gone, or None (as far as known:
        errors count as alive). ``full``: its record is read too, not only
        its reply queue looked at. What a full look found is remembered for
        :data:`CHECK_SECONDS` (``cached`` False: look again anyway); a dead
        executor found here is reaped."""
        if not is_executor_reply(reply):
            return None
        now = time.monotonic()
        known = self._known.get(reply)
        if known is not None and (known[1] is not None or (now < known[0] and full and cached)):
            return known[1]
        reason = self._look(reply, full)
        if full or reason is not None:
            if len(self._known) > 1024:
                self._known.clear()
            self._known[reply] = (now + CHECK_SECONDS, reason)
        return reason

    def _look(self, reply: str, full: bool) -> str | None:
        worker = self._worker
        try:
            if not protocol.is_folder(os.path.join(worker.root, reply), _RETRY, follow=False):
                return f"its reply queue {reply} is gone"
            reason = death(worker.root, reply, worker.broker.clock) if full else None
        except (OSError, DdmqError) as err:
            log.debug("cannot tell whether the executor of %s is alive: %s", reply, err)
            return None
        if reason is None:
            return None
        reap(worker.broker, worker._spills, reply, reason)
        return f"its executor is dead ({reason})"

    # --- before a task ------------------------------------------------------------

    def drop_if_orphan(self, msg: Message) -> bool:
        """If the executor of task message ``msg`` is gone, ack it without
        running it and say so; True then."""
        doc = task_envelopes(msg.message)[0]  # a bundle's tasks share their executor
        reply = doc.get("reply") if isinstance(doc, dict) else None
        if not isinstance(reply, str):
            return False
        reason = self.gone(reply)
        if reason is None:
            return False
        task = doc.get("task")
        if reply not in self._told:
            self._told.add(reply)
            log.warning("dropping the tasks of %s without running them: %s", reply, reason)
        log.info("dropped task %s without running it: %s", task, reason)
        try:
            self._worker.broker.ack(msg)
        except LeaseLostError:
            pass
        except DdmqError as err:
            log.warning("cannot ack dropped task %s: %s", task, err)
        return True

    # --- while a task runs ----------------------------------------------------------

    def run(self, msg: Message, task: str, reply: str, call: Callable[[], T]) -> T | None:
        """``call()``, the calls of task ``task`` (message ``msg``); None if
        the keeper dropped the task meanwhile (its outcome is not to be sent)."""
        if (threading.current_thread() is threading.main_thread()
                and _getsignal(DROP_SIGNAL) != self._on_signal):
            signal.signal(DROP_SIGNAL, self._on_signal)
        with self._lock:
            self._current, self._dropped, self._raised = (msg, task, reply), None, False
        outcome: T | None = None
        try:
            try:
                self._in_call = True
                outcome = call()
            finally:
                self._in_call = False
        except TaskDropped:
            self._in_call = False
        with self._lock:
            self._current = None
            dropped = self._dropped == task
        return None if dropped else outcome

    def _on_signal(self, signum: int, frame: object) -> None:
        # In the main thread, between two bytecodes of whatever runs there:
        # raise only inside the call of the dropped task, and once.
        if self._in_call and self._dropped is not None and not self._raised:
            self._raised = True
            raise TaskDropped(f"task {self._dropped} was dropped: its executor is gone")

    def tick(self) -> None:
        """From the keeper: drop the running task if its executor went away
        (see the module docstring)."""
        if self._dropped is not None and self._in_call and not self._raised:
            self._interrupt()  # again: CPython may miss a signal that comes just after another
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + CHECK_SECONDS
        current = self._current
        if current is None:
            return
        msg, task, reply = current
        # Stopping (e.g. the local worker whose executor died): every look is whole.
        full = now >= self._next_full or self._worker._stopping
        if full:
            self._next_full = now + FULL_CHECK_SECONDS
        reason = self.gone(reply, full, cached=False)
        if reason is None:
            return
        worker = self._worker
        with worker._lock:  # the keeper's lease extensions stop with lease_lost
            running = worker._running
            with self._lock:
                if running is None or running.msg is not msg or self._current is not current:
                    return  # it ended meanwhile
                self._dropped = task
            running.lease_lost = True
            try:
                worker.broker.ack(msg)
            except DdmqError:
                pass
        log.warning("dropping task %s while it runs: %s; stopping its call", task, reason)
        self._interrupt()

    def _interrupt(self) -> None:
        """Have the main thread raise TaskDropped in the call, if it still runs
        it and no task replaced the handler (then its outcome is just dropped)."""
        if self._in_call and _getsignal(DROP_SIGNAL) == self._on_signal:
            main = threading.main_thread().ident
            if main is not None:
                signal.pthread_kill(main, DROP_SIGNAL)
