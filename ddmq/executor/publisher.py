"""The publisher thread: sends the executor's tasks to the task queue, a burst of them in one message.

``submit``/``map`` add each task to the :class:`~.tasks.TaskTable` and hand
its signed envelope to the publisher (:meth:`Publisher.put`), which publishes
it at once if it is idle. Tasks handed over while it is publishing wait, and
go out together in the next message, a bundle (:mod:`.bundle`), as TCP's
Nagle algorithm coalesces small writes: a lone ``submit`` waits for nothing,
and a loop of 10,000 ``submit`` calls costs about a hundred messages
instead of 10,000::

    submit/map --put(task, envelope)--> pending --+--> publish one message per group
                                                  |      (tasks.published: task -> message id)
                       while publishing, more <---+

A lone task (the publisher idle, and nothing handed over for
:data:`LONE_GAP` seconds: not part of a burst), and the chunks of a ``map``
(handed over together) while the publisher is idle, are published by the
caller itself (:meth:`Publisher.publish_here`), sparing a round trip
through the thread; the tasks handed over meanwhile wait for it as above.

Only tasks known to be quick share a message (:class:`Pace`: the seconds
per call of the function's last results, which workers report), at most
:data:`BUNDLE_SECONDS` of expected work and :data:`BUNDLE_MAX` tasks per
message, so that slow tasks still spread over all the workers; and the
quick tasks of one publication are cut into at least as many bundles as
there are workers, so that each has its share. A function not seen yet, and
a task whose payload is a spill file, go one task per message. A task that
cannot be published fails its future with the broker's error.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ..errors import DdmqError
from .tasks import TaskRecord

if TYPE_CHECKING:
    from ..broker import Broker
    from .tasks import TaskTable

__all__ = ["Publisher", "Pace", "BUNDLE_SECONDS", "BUNDLE_MAX"]

log = logging.getLogger(__name__)

#: Most tasks in one message.
BUNDLE_MAX = 1000
#: Most bytes of envelopes (as JSON, about) in one message.
BUNDLE_BYTES = 1 << 20
#: Most seconds of expected work in one message: a bundle's tasks run one
#: after the other on one worker.
BUNDLE_SECONDS = 0.02
#: A task handed over at least this long after the last one was handed over
#: (or published alone) is not part of a burst: its caller publishes it.
LONE_GAP = 0.00025
#: Seconds the publisher keeps a count of the workers (counting them may
#: read every heartbeat record of the queue).
WORKER_COUNT_SECONDS = 5.0


class Pace:
    """Seconds per call of each function, from the results of its last tasks
    (an average that follows changes: each result weighs a quarter)."""

    def __init__(self) -> None:
        self._per_call: dict[str, float] = {}

    def record(self, fn: str, seconds: float, calls: int) -> None:
        if calls <= 0 or not seconds >= 0:
            return
        per_call = seconds / calls
        old = self._per_call.get(fn)
        self._per_call[fn] = per_call if old is None else 0.75 * old + 0.25 * per_call

    def expected(self, fn: str, calls: int) -> float | None:
        """Seconds the task would take, or None if the function was not seen."""
        per_call = self._per_call.get(fn)
        return None if per_call is None else per_call * calls


class Publisher(threading.Thread):
    """Publishes the tasks :meth:`put` hands over (see the module docstring).

    ``worker_count()``: how many workers share the tasks (asked at most
    every :data:`WORKER_COUNT_SECONDS`)."""

    def __init__(self, name: str, broker: Broker, queue: str, tasks: TaskTable,
                 publish_options: dict[str, Any], worker_count: Callable[[], int]):
        super().__init__(name=f"ddmq-publisher-{name}", daemon=True)
        self._broker = broker
        self._queue = queue
        self._tasks = tasks
        self._options = publish_options  # priority, timeout, requeue, requeue_limit
        self.pace = Pace()
        self._worker_count = worker_count
        self._workers = (1, -math.inf)  # (count, when counted)
        self._cond = threading.Condition()
        self._pending: list[tuple[TaskRecord, dict[str, Any]]] = []
        self._busy = False  # a publication is in progress (the thread's, or a caller's)
        self._stopping = False
        self._last_put = -math.inf
        self._idle_waiters = 0  # callers waiting for the publication in progress to end

    def put(self, items: list[tuple[TaskRecord, dict[str, Any]]]) -> bool:
        """Publish ``items`` (tasks already in the task table, with their
        envelopes) soon. True: the publisher is idle and they are not part of
        a burst (a map's chunks, or a lone task: see the module docstring);
        the caller must publish them now with :meth:`publish_here` (outside
        its own locks)."""
        with self._cond:
            now = time.monotonic()
            mine = (not self._busy and not self._pending and not self._stopping
                    and (len(items) > 1 or now - self._last_put >= LONE_GAP))
            self._last_put = now
            if mine:
                return True
            self._pending.extend(items)
            if not self._busy:  # else the end of the publication in progress wakes the thread
                self._cond.notify_all()
            return False

    def publish_here(self, items: list[tuple[TaskRecord, dict[str, Any]]]) -> None:
        """Publish the tasks :meth:`put` gave back, in the caller's thread
        (or hand them over after all, if another publication began meanwhile).

        Until this call, the tasks are neither pending nor being published: a
        Ctrl-C in between leaves them unpublished, with nothing to wait for
        (the interrupt cancels them as tasks without a message)."""
        with self._cond:
            if self._busy or self._pending or self._stopping:
                self._pending.extend(items)
                if not self._busy:
                    self._cond.notify_all()
                return
            self._busy = True
        try:
            for group in self._groups(items):
                self._publish(group)
        except BaseException as err:  # e.g. Ctrl-C in the middle: the tasks fail, the caller sees err
            self._fail_unpublished([task for task, _ in items], err)
            raise
        finally:
            self._end_publication(by_caller=True)

    def withdraw(self, task: TaskRecord) -> bool | None:
        """Take ``task`` back if it is not published yet (True); None if it
        is published (it has its message), False if unknown. Waits for a
        publication in progress to end."""
        with self._cond:
            for index, (pending, _) in enumerate(self._pending):
                if pending is task:
                    del self._pending[index]
                    return True
            self._idle_waiters += 1
            try:
                while self._busy and task.msg is None:
                    self._cond.wait(0.1)
            finally:
                self._idle_waiters -= 1
            return None if task.msg is not None else False

    def take_pending(self) -> list[TaskRecord]:
        """Take back every task not published yet (Ctrl-C), and wait for a
        publication in progress to end."""
        with self._cond:
            taken = [task for task, _ in self._pending]
            self._pending = []
            self._idle_waiters += 1
            try:
                while self._busy:
                    self._cond.wait(0.1)
            finally:
                self._idle_waiters -= 1
        return taken

    def republish(self, envelopes: list[dict[str, Any]], msg_id: str) -> None:
        """Publish ``envelopes`` of published tasks again, as one message with
        id ``msg_id`` (their bundle was withdrawn to cancel one of its tasks)."""
        group = [(task, envelope) for task, envelope in
                 ((self._tasks.get(envelope.get("task")), envelope) for envelope in envelopes)
                 if task is not None]
        if group:
            self._publish(group, msg_id)

    def stop(self) -> None:
        """End the thread once nothing is pending (the executor is done)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.is_alive() and self is not threading.current_thread():
            self.join()

    def run(self) -> None:
        while True:
            with self._cond:
                # A caller publishing a lone task goes first (its task was handed over first).
                while self._busy or (not self._pending and not self._stopping):
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._busy = True
            try:
                for group in self._groups(batch):
                    self._publish(group)
            except BaseException as err:  # a bug: fail what it held rather than hang
                log.exception("the publisher thread failed")
                self._fail_unpublished([task for task, _ in batch], err)
            finally:
                self._end_publication(by_caller=False)

    def _end_publication(self, by_caller: bool) -> None:
        """A publication ended: wake whoever has something to do now (a
        wake-up for nothing costs the caller a switch to the thread and back)."""
        with self._cond:
            self._busy = False
            if by_caller:
                self._last_put = time.monotonic()
            if self._pending or self._stopping or self._idle_waiters:
                self._cond.notify_all()

    def _groups(self, batch: list[tuple[TaskRecord, dict[str, Any]]]
                ) -> list[list[tuple[TaskRecord, dict[str, Any]]]]:
        """The batch cut into messages: quick tasks together (up to the
        limits, and in at least as many messages as there are workers),
        every other task alone; in the order submitted."""
        per_bundle = BUNDLE_MAX
        if len(batch) > 1:
            per_bundle = min(BUNDLE_MAX, math.ceil(len(batch) / self._workers_now()))
        groups: list[list[tuple[TaskRecord, dict[str, Any]]]] = []
        current: list[tuple[TaskRecord, dict[str, Any]]] = []
        seconds = 0.0
        size = 0
        for item in batch:
            task, envelope = item
            if self._tasks.get(task.id) is None:
                continue  # cancelled, or the executor broke, while it waited
            expected = self.pace.expected(task.pace, task.ncalls)
            length = len(envelope.get("payload") or "") + 200
            # A spilled payload's file belongs to one message (the worker
            # refuses a bundle that names one), and slow or unknown work
            # should spread over the workers: such a task goes alone.
            if expected is None or expected > BUNDLE_SECONDS or "file" in envelope:
                if current:
                    groups.append(current)
                    current, seconds, size = [], 0.0, 0
                groups.append([item])
                continue
            if current and (len(current) >= per_bundle or seconds + expected > BUNDLE_SECONDS
                            or size + length > BUNDLE_BYTES):
                groups.append(current)
                current, seconds, size = [], 0.0, 0
            current.append(item)
            seconds += expected
            size += length
        if current:
            groups.append(current)
        return groups

    def _fail_unpublished(self, tasks: list[TaskRecord], err: BaseException) -> None:
        """Fail the futures of those of ``tasks`` that got no message: publishing them raised ``err``."""
        for task in tasks:
            if task.msg is None:
                self._tasks.settle(task, None, DdmqError(
                    f"task {task.id} ({task.fn_name}) was not published: "
                    f"{type(err).__name__}: {err}"))

    def _workers_now(self) -> int:
        count, when = self._workers
        if time.monotonic() - when > WORKER_COUNT_SECONDS:
            try:
                count = max(1, int(self._worker_count()))
            except Exception:  # noqa: BLE001 (a count is a hint: never fail a publication for it)
                log.debug("cannot count the workers", exc_info=True)
            self._workers = (count, time.monotonic())
        return count

    def _publish(self, group: list[tuple[TaskRecord, dict[str, Any]]],
                 msg_id: str | None = None) -> None:
        body: Any = group[0][1] if len(group) == 1 else [envelope for _, envelope in group]
        try:
            msg = self._broker.publish(self._queue, body, msg_id=msg_id, **self._options)
        except DdmqError as err:
            log.error("cannot publish %d task(s) to %s: %s", len(group), self._queue, err)
            for task, _ in group:
                self._tasks.settle(task, None, err)
            return
        with self._cond:  # withdraw() waits for this
            for task, _ in group:
                self._tasks.published(task, msg)
