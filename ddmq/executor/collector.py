"""The collector thread: turns the workers' replies into resolved futures, and keeps the task queue moving.

One per executor, like CPython's ``_ExecutorManagerThread``: the executor's
thread only publishes; everything that comes back is handled here::

    ROOT/reply-.../ --consume--> Collector --check, unpickle (envelope)--> TaskTable.settle --> Future
                    <---ack-----     |
                                     +-- every HOUSEKEEPING_INTERVAL s (the housekeeping round):
                                           clean(task queue): requeue the tasks of expired leases
                                           DriverUpkeep.round(): beat this executor's record;
                                             every minute remove what dead executors left (reaper)
                                           LocalPool.mind(): reap and replace local workers that
                                             died; DeathWatch requeues what they held at once
                                           while tasks are unresolved:
                                             DeathWatch.scan(): the same for lost workers elsewhere
                                             dead letters of the task queue: fail their futures,
                                               saying how each attempt's worker died
                                           Watchdog (no local workers): warn if nobody serves the queue

The reply queue is consumed with the broker's wait (inotify on a local
filesystem, else polling with back-off), at most :data:`REPLY_BATCH`
messages at a time. Only this collector reads it, and its replies are
worthless once the driver is gone, so they are received without a lease
(``consume(auto_ack=True)``: one rename per reply, no ack); in a named run
(``run=``), whose reply queue outlives a driver, they are claimed and acked
only once their outcomes are written (see :mod:`.attach`). While ``map``
publishes, the collector pauses up to
:data:`MAP_PAUSE_MAX` between batches. The first reply of a task wins; a
late duplicate (from a worker that lost its lease and came back) is logged
and dropped. When the executor is shut down and no task is unresolved (or
it is abandoned), the thread cleans up (:meth:`DDMQExecutor._cleanup`) and
ends; if it fails, the executor is broken and every future fails.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any

from ..backoff import Backoff
from ..errors import DdmqError, LeaseLostError, QueueNotFoundError
from ..layout import DEAD, DeadName, message_id
from ..message import Message
from .deaths import DeathWatch, lost_error
from .heartbeat import WorkerRecord
from .envelope import load_refusal, load_result, rebuild, reply_envelopes
from .errors import BrokenDDMQExecutor, SignatureError, TaskRejectedError, WorkerLostError
from .tasks import TaskRecord
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .executor import DDMQExecutor

log = logging.getLogger(__name__)

#: Seconds between two housekeeping rounds of the collector thread.
HOUSEKEEPING_INTERVAL = 2.0
#: Most reply messages the collector claims at once.
REPLY_BATCH = 256
#: Longest pause (s) of the collector while ``map`` publishes its chunks.
#: Both threads need the GIL: the pause lets ``map`` publish at full speed,
#: and the collector then takes the replies that came meanwhile in one batch.
MAP_PAUSE_MAX = 0.05


class Collector(threading.Thread):
    """The collector thread of ``executor`` (see the module docstring)."""

    def __init__(self, executor: DDMQExecutor):
        super().__init__(name=f"ddmq-collector-{executor._token}", daemon=True)
        self._executor = executor
        self._broker = executor._broker
        self._tasks = executor._tasks
        self._reply_queue = executor.reply_queue
        self._spills = executor._spills
        # Dead workers (local ones as the pool reaps them) and, with no local
        # workers, the warning when nobody serves the queue.
        self.deaths = DeathWatch(executor._broker, executor.queue, executor._tasks)
        self.deaths.explain = self._explain_death  # how a worker's Slurm job ended
        executor._pool.on_exit = self.deaths.local_exit
        self._watchdog = None if executor.max_workers else Watchdog(executor.root, executor.queue)

    def wake(self) -> None:
        """Have the collector look at the executor's state now (its shutdown):
        publish a reply body without envelopes."""
        try:
            self._broker.publish(self._reply_queue, [])
        except DdmqError:
            pass  # the collector is gone, and the reply queue with it

    def _explain_death(self, record: WorkerRecord) -> tuple[str | None, bool]:
        """How a dead worker's Slurm job ended, and whether the requeue of
        its tasks counts (see :mod:`.slurm_pool`)."""
        if not record.slurm_job:
            return None, True
        from .slurm_pool import worker_death  # Slurm only when asked for
        slurm = self._executor._slurm
        return worker_death(record, slurm.ends if slurm is not None else None)

    def run(self) -> None:
        executor = self._executor
        next_round = 0.0
        errors = Backoff(0.1, 5.0)  # pauses while the filesystem recovers
        try:
            while True:
                if time.monotonic() >= next_round:
                    self._housekeeping_round()
                    next_round = time.monotonic() + HOUSEKEEPING_INTERVAL
                if executor._shutdown and (not len(self._tasks) or executor._abandon):
                    break
                executor._collect_now.wait(MAP_PAUSE_MAX)
                try:
                    got = self._broker.consume(self._reply_queue, n=REPLY_BATCH,
                                               wait=max(0.0, next_round - time.monotonic()),
                                               auto_ack=executor._run is None)
                    errors.reset()
                except QueueNotFoundError:
                    executor._break(f"the reply queue {self._reply_queue} was deleted")
                    break
                except DdmqError as err:
                    log.warning("cannot read the reply queue %s: %s", self._reply_queue, err)
                    errors.sleep()
                    continue
                if isinstance(got, list) and got:  # n > 1: always a list
                    self._take_replies(got)
                if executor._run is not None:
                    self._ack(executor._run.tick())
        except BaseException as err:  # a bug: say so on every unresolved future
            log.exception("the collector thread of %r failed", executor)
            executor._break(f"the collector thread failed: {type(err).__name__}: {err}")
        finally:
            if executor._run is not None:  # its last outcomes written, then their replies acked
                self._ack(executor._run.tick())
            executor._cleanup()

    # --- replies ------------------------------------------------------------------

    def _take_replies(self, msgs: list[Message]) -> None:
        for msg in msgs:
            for doc in reply_envelopes(msg.message):
                try:
                    self._resolve(doc)
                except Exception:  # noqa: BLE001 (one bad reply must not stop the others)
                    log.exception("cannot handle a reply in message %s", msg.id)
        names = [msg.filename for msg in msgs if msg.filename]
        if self._executor._run is not None:
            names = self._executor._run.ackable(names)  # once their outcomes are written
        self._ack(names)

    def drain(self) -> None:
        """Handle every reply now in the reply queue (before the thread starts:
        a restarted run's driver, see :mod:`.attach`), and ack them."""
        while True:
            got = self._broker.consume(self._reply_queue, n=REPLY_BATCH,
                                       auto_ack=self._executor._run is None)
            if not got:
                break
            self._take_replies(got)
        if self._executor._run is not None:
            self._ack(self._executor._run.tick())

    def _ack(self, names: list[str]) -> None:
        if not names:
            return
        try:
            self._broker.ack(self._reply_queue, names)
        except LeaseLostError:
            pass
        except DdmqError as err:
            log.warning("cannot ack replies: %s", err)

    def _resolve(self, doc: Any) -> None:
        """Settle the future of the task a result or refusal envelope answers."""
        executor = self._executor
        if not isinstance(doc, dict):
            log.warning("ignoring a reply that is not a JSON object: %.80r", doc)
            return
        task = self._tasks.get(doc.get("task"))
        if task is None and executor._run is not None and executor._run.late_result(
                doc, lambda doc: load_result(executor._secret, self._reply_queue, doc, self._spills)):
            return  # the outcomes of a task sent by an earlier driver of the run: kept
        if task is None:
            self._spills.discard(doc, self._reply_queue)
            log.info("dropping a reply for task %s from worker %s: not pending (a duplicate "
                     "from a worker that lost its lease, or the task was cancelled)",
                     doc.get("task"), doc.get("worker"))
            return
        try:
            refusal = load_refusal(executor._secret, self._reply_queue, doc)
        except SignatureError as err:
            log.error("ignoring a refusal of task %s (%s): %s; something other than a worker "
                      "of this root wrote into %s", task.id, task.fn_name, err, self._reply_queue)
            return
        if refusal is not None:
            self._tasks.settle(task, None, TaskRejectedError(
                f"task {task.id} ({task.fn_name}) was refused by worker {refusal.worker}: "
                f"{refusal.reason}"))
            return
        try:
            result = load_result(executor._secret, self._reply_queue, doc, self._spills)
        except SignatureError as err:
            log.error("refused a result for task %s without unpickling it: %s", task.id, err)
            self._tasks.settle(task, None, SignatureError(
                f"the result of task {task.id} ({task.fn_name}) was refused: {err}; something "
                f"other than a worker of this root wrote into {self._reply_queue}"))
            return
        except Exception as err:  # noqa: BLE001 (unpickling can raise anything)
            error = pickle.UnpicklingError(
                f"the result of task {task.id} ({task.fn_name}) cannot be unpickled in this "
                f"process: {type(err).__name__}: {err}")
            error.__cause__ = err
            self._tasks.settle(task, None, error)
            return
        took = doc.get("took")  # the worker's word, unsigned: only a hint for the publisher
        if isinstance(took, (int, float)):
            executor._publisher.pace.record(task.pace, float(took), task.ncalls)
        errors = [(index, rebuild(exc, tb)) for index, exc, tb in result.failures]
        values = result.values
        if executor._run is not None:  # a named run keeps the outcomes (before the ack)
            executor._run.record(task, values, errors)
        if values is None:  # the task failed as a whole (e.g. it could not be loaded)
            self._tasks.settle(task, None, errors[0][1] if errors
                               else DdmqError(f"task {task.id} failed"))
        elif len(values) != task.ncalls:
            self._tasks.settle(task, None, DdmqError(f"task {task.id}: {len(values)} outcomes "
                                                     f"for {task.ncalls} calls"))
        elif not task.single:
            self._tasks.settle(task, (values, errors), None)
        elif errors:
            self._tasks.settle(task, None, errors[0][1])
        else:
            self._tasks.settle(task, values[0], None)

    # --- the housekeeping round -------------------------------------------------------

    def _housekeeping_round(self) -> None:
        """Requeue expired leases, mind local workers (requeueing at once what
        dead ones held), requeue what lost workers elsewhere held, fail
        dead-lettered tasks (in that order: a task whose last try just died
        fails in this round)."""
        executor = self._executor
        try:
            self._broker.clean(executor.queue, force=True)
        except DdmqError as err:
            log.warning("housekeeping of queue %s failed: %s", executor.queue, err)
        executor._upkeep.round()  # this executor's record; reap dead executors (see reaper)
        try:
            executor._pool.mind(busy=bool(len(self._tasks)))
        except BrokenDDMQExecutor as err:
            executor._break(str(err))
        executor._environment.scan()  # a worker on another Python or cloudpickle: warn once
        if executor._slurm is not None:
            executor._slurm.mind(self._broker)  # Slurm jobs: how they ended; adaptive scaling
        waiting = self._tasks.has_messages()
        if waiting:
            self.deaths.scan()
            self._fail_dead_letters()
        if self._watchdog is not None:
            seen = self.deaths.seen
            self._watchdog.check(len(self._tasks) if waiting else 0, seen[0] if seen else 0)

    def _fail_dead_letters(self) -> None:
        """Fail the futures of our tasks found in the task queue's dead letters."""
        try:
            dead = self._broker.list_dead(self._executor.queue)
        except DdmqError as err:
            log.warning("cannot list the dead letters of %s: %s", self._executor.queue, err)
            return
        for name in dead:
            parsed = DeadName.parse(name)
            msg_id = message_id(parsed.waiting) if parsed is not None else None
            if parsed is None or not msg_id:
                continue
            for task in self._tasks.of_message(msg_id):  # a bundle's: several
                self._tasks.settle(task, None, self._dead_error(task, parsed.reason, name))

    def _dead_error(self, task: TaskRecord, reason: str, name: str) -> DdmqError:
        executor = self._executor
        where = os.path.join(executor.root, executor.queue, DEAD, name)
        if reason == "requeue_limit":
            attempts = executor.retries + 1
            log.error("task %s (%s) dead-lettered after %d attempt(s): its worker was lost each time",
                      task.id, task.fn_name, attempts)
            return lost_error(task, attempts, executor.lease, executor.retries, where)
        if reason == "expired":
            return WorkerLostError(
                f"task {task.id} ({task.fn_name}) failed: the worker running it was lost and its "
                f"message was dead-lettered instead of requeued ({where})")
        return TaskRejectedError(f"task {task.id} ({task.fn_name}) was dead-lettered by a worker "
                                 f"({reason}): {where}")
