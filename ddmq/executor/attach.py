"""An executor attached to a named run: what to publish, what to take from the run, what to adopt from a dead driver.

``DDMQExecutor(root, run="NAME")`` makes an :class:`AttachedRun`, which
stands between the executor and the run's store (:mod:`ddmq.executor.runs`)::

    start      Run.open: this driver takes the run (RunInUseError if a live one has it)
               and loads its outcomes. If the run's reply queue run-NAME is there, a driver
               of the run died with tasks out, so:
                 1. the replies it had claimed and not acked go back to run-NAME (nack);
                 2. its tasks still in the task queue (waiting and work files whose envelope
                    names run-NAME) are adopted: a TaskRecord each, under their own task ids,
                    their call keys mapped to their futures;
                 3. run-NAME is drained: the replies of tasks that ended meanwhile are recorded.
    map/submit plan(): the key of each call; its outcome in the run? return it (a failure
               raises again, unless retry_failed); in an adopted task? wait for that task;
               else publish it, the keys in the task envelope (signed), which the worker
               echoes in the result.
    collector  record(): a result's outcomes go to the run (by the task's keys, or, for a task
               this driver does not know, by the keys the result echoes: late_result());
               ackable(): the reply files are acked only once a flush wrote their
               outcomes (one write per batch of replies), so a driver killed at any
               moment loses none.
    shutdown   release(): adopted tasks no call asked for are not waited for; close(): the
               last flush, the run let go; run-NAME and its spill folder are deleted only
               when nothing of the run can still be in flight (else the next driver needs them).

A run whose reply queue is gone has nothing in flight, so starting a
finished run again reads its outcomes and nothing else: it returns at once.

The same scan of the task queue (:func:`run_tasks`) counts a run's waiting
and running calls for ``ddmq runs``, and :func:`discard_run` is ``ddmq runs rm``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, NamedTuple, Sequence

from ..broker import Broker
from ..errors import DdmqError, LeaseLostError, MessageNotFoundError, QueueNotFoundError
from ..layout import WORK, message_id
from ..message import Message
from .bundle import task_envelopes
from .envelope import Result, check_keys, rebuild
from .errors import SignatureError
from .callkeys import Key, TaskKeys, call_keys, function_key
from .runs import Outcome, Run, RunInfo, remove_run, run_info
from .spill import SpillStore
from .tasks import TaskFuture, TaskRecord, TaskTable, settle

if TYPE_CHECKING:
    from .collector import Collector
    from .executor import DDMQExecutor

__all__ = ["AttachedRun", "Plan", "RunTask", "run_tasks", "discard_run"]

log = logging.getLogger(__name__)

#: Most functions whose keys an attached run remembers (computing one hashes its code).
_FUNCTIONS_MAX = 256


class Plan:
    """What to do with the calls of one ``map`` or ``submit`` in a run.

    ``arglists``, ``kwargs`` and ``keys``: the calls to publish. ``sources``:
    None when every call is to be published (the common case, which costs
    nothing per call); else, for each call in order, an :class:`Outcome`
    from the run, (future, index) of an adopted task, or the position of the
    call among those published.
    """

    __slots__ = ("function", "keys", "arglists", "kwargs", "sources")

    def __init__(self, function: str, keys: Sequence[Key], arglists: list[tuple[Any, ...]],
                 kwargs: list[dict[str, Any]] | None, sources: list[Any] | None):
        self.function, self.keys, self.arglists, self.kwargs = function, keys, arglists, kwargs
        self.sources = sources

    def task_keys(self, start: int, stop: int) -> TaskKeys:
        """The keys of the calls ``start:stop`` to publish (one task)."""
        return TaskKeys(self.function, self.keys[start:stop])

    def results(self, futures: list[TaskFuture], chunksize: int,
                end_time: float | None) -> Iterator[Any]:
        """The values of all the calls in order, from their sources;
        ``futures``: of the published chunks of ``chunksize`` calls. Raises a
        call's exception where its value would be, and TimeoutError at
        ``end_time``; then the published calls not started are cancelled."""
        opened: dict[Future, tuple[list[Any], dict[int, BaseException]]] = {}
        try:
            for source in self.sources or ():
                if type(source) is int:
                    future, index = futures[source // chunksize], source % chunksize
                elif type(source) is Outcome:
                    if not source.ok:
                        raise source.value.with_traceback(None)
                    yield source.value
                    continue
                else:
                    future, index = source
                chunk = opened.get(future)
                if chunk is None:
                    values, errors = future.result(
                        None if end_time is None else end_time - time.monotonic())
                    chunk = opened[future] = (values, dict(errors))
                error = chunk[1].get(index)
                if error is not None:
                    raise error
                yield chunk[0][index]
        finally:
            for future in futures:
                future.cancel()

    def future(self) -> Future:
        """The future of a lone call (``submit``) that is not to be published."""
        assert self.sources is not None
        source = self.sources[0]
        result: Future = Future()
        if type(source) is Outcome:
            settle(result, source.value if source.ok else None,
                   None if source.ok else source.value.with_traceback(None))
            return result
        future, index = source

        def copy(done: Future) -> None:
            try:
                values, errors = done.result()
            except BaseException as err:  # noqa: BLE001 (the adopted task failed as a whole)
                settle(result, None, err)
                return
            error = dict(errors).get(index)
            settle(result, None if error is not None else values[index], error)

        future.add_done_callback(copy)
        return result


class AttachedRun:
    """The run ``name`` of root ``root`` as one executor drives it (see the
    module docstring). ``retry_failed``: calls that failed run again."""

    def __init__(self, root: str | os.PathLike, name: str, secret: bytes, retry_failed: bool):
        self.run = Run(root, name, secret)
        self.name = self.run.name
        self.reply_queue = self.run.reply_queue
        self.retry_failed = retry_failed
        self._secret = secret
        self._lock = threading.Lock()  # _inflight, _adopted, _wanted, and the run's outcomes
        # function key -> call key -> (adopted task, index of the call in it)
        self._inflight: dict[str, dict[Key, tuple[TaskRecord, int]]] = {}
        self._adopted: dict[str, TaskRecord] = {}  # task id -> record, until its future is done
        self._wanted: set[str] = set()  # adopted tasks a call of this driver waits for
        self._held: list[str] = []  # reply files handled whose outcomes are not written yet
        self._released = 0  # adopted tasks not waited for at shutdown (still in flight)
        self._resuming = False  # run-NAME was there at start: a driver died with tasks out
        self._functions: dict[Any, str] = {}

    # --- start -----------------------------------------------------------------------

    def open(self, broker: Broker, queue: str) -> None:
        """Take the run for this driver and load its outcomes. Raises
        RunInUseError if a live driver has it."""
        self.run.open(queue)
        self._resuming = broker.queue_exists(self.reply_queue)
        done, failed = self.run.counts()
        log.info("run %s: %d call(s) done and %d failed so far%s", self.name, done, failed,
                 "; a previous driver left tasks out" if self._resuming else "")

    def resume(self, executor: DDMQExecutor, collector: Collector) -> None:
        """Before the collector thread starts: take over what a dead driver of
        the run left (see the module docstring, steps 1-3)."""
        if not self._resuming:
            return
        broker = executor._broker
        try:
            _, claimed = broker.get_message_list(self.reply_queue)
            if claimed:
                broker.nack(self.reply_queue, claimed, requeue=True, count=False)
        except LeaseLostError:
            pass
        except DdmqError as err:
            log.warning("run %s: cannot give back the replies its last driver held: %s "
                        "(they come back when their lease ends)", self.name, err)
        adopted = 0
        for task in run_tasks(broker, executor.queue, self._secret, {self.reply_queue}):
            adopted += self._adopt(executor, task)
        collector.drain()
        done, failed = self.run.counts()
        log.info("run %s resumed: %d call(s) done, %d failed, %d task(s) of its last driver "
                 "still out", self.name, done, failed, len(self._adopted))

    def _adopt(self, executor: DDMQExecutor, task: RunTask) -> int:
        if task.task in self._adopted or executor._tasks.get(task.task) is not None:
            return 0
        future = TaskFuture(task.task, executor._withdraw, executor._timed_out)
        record = TaskRecord(task.task, future, len(task.keys.keys), False,
                            task.keys.function.rsplit(":", 1)[0],
                            None)  # its spill file, if any, goes with the run's spill folder
        record.keys = task.keys
        executor._tasks.add(record)
        executor._tasks.published(record, task.msg)
        with self._lock:
            self._adopted[task.task] = record
            inflight = self._inflight.setdefault(task.keys.function, {})
            for index, key in enumerate(task.keys.keys):
                inflight.setdefault(key, (record, index))
        record.future.add_done_callback(lambda _: self._landed(task.task))
        return 1

    def _landed(self, task: str) -> None:
        """An adopted task's future is done: its calls are not in flight any more."""
        with self._lock:
            record = self._adopted.pop(task, None)
            self._wanted.discard(task)
            if record is None or record.keys is None:
                return
            inflight = self._inflight.get(record.keys.function, {})
            for key in record.keys.keys:
                if inflight.get(key, (None,))[0] is record:
                    del inflight[key]

    # --- map and submit ----------------------------------------------------------------

    def plan(self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]],
             kwargs: list[dict[str, Any]] | None = None, explicit: Sequence[Any] | None = None,
             iterables: tuple[Any, ...] = ()) -> Plan:
        """What to do with calls ``fn(*arglists[i], **kwargs[i])`` (keyed by
        ``explicit`` if given; TypeError for a key of the wrong type).
        ``iterables``: those of ``map``, whose calls ``arglists`` are; one
        ``range`` is the keys itself (see :func:`.callkeys.call_keys`)."""
        function = self._function_key(fn)
        if len(iterables) == 1 and type(iterables[0]) is range and iterables[0].step == 1 \
                and explicit is None:
            keys: Sequence[Key] = iterables[0]
        else:
            keys = call_keys(arglists, kwargs, explicit)
        with self._lock:
            run, failures = self.run, not self.retry_failed
            inflight = self._inflight.get(function, {})
            if not run.touches(function, keys, failures) and (not inflight
                                                              or inflight.keys().isdisjoint(keys)):
                return Plan(function, keys, arglists, kwargs, None)
            sources: list[Any] = []
            publish: list[int] = []
            for index, key in enumerate(keys):
                outcome = run.known(function, key)
                if outcome is not None and (outcome.ok or failures):
                    sources.append(outcome)
                elif key in inflight:
                    record, at = inflight[key]
                    self._wanted.add(record.id)
                    sources.append((record.future, at))
                else:
                    sources.append(len(publish))
                    publish.append(index)
        return Plan(function, [keys[i] for i in publish], [arglists[i] for i in publish],
                    None if kwargs is None else [kwargs[i] for i in publish], sources)

    def _function_key(self, fn: Callable[..., Any]) -> str:
        try:
            return self._functions[fn]
        except (KeyError, TypeError):  # not seen yet, or not hashable
            pass
        key = function_key(fn)
        try:
            if len(self._functions) >= _FUNCTIONS_MAX:
                self._functions.clear()
            self._functions[fn] = key
        except TypeError:
            pass
        return key

    # --- the collector's hooks ----------------------------------------------------------

    def record(self, task: TaskRecord, values: list[Any] | None,
               errors: Sequence[tuple[int | None, BaseException]]) -> None:
        """Keep the outcomes of ``task``'s calls (none if it failed as a whole)."""
        keys = task.keys
        if keys is None or values is None or len(values) != len(keys.keys):
            return
        raised = [(index, exc) for index, exc in errors if index is not None]
        with self._lock:
            self.run.record(keys.function, keys.keys, values, raised)

    def late_result(self, doc: dict[str, Any], load: Callable[[Any], Result]) -> bool:
        """A result for a task this driver does not wait for (sent to a dead
        driver of the run, or run twice): its outcomes are kept if it echoes
        the keys of its calls. True if it was dealt with here (``load``:
        checks and unpickles a result envelope)."""
        try:
            text = check_keys(self._secret, doc, self.reply_queue)
            if text is None:
                return False
            keys = TaskKeys.decode(text)
        except (SignatureError, ValueError) as err:
            log.error("run %s: the result of task %s names calls it cannot prove: %s",
                      self.name, doc.get("task"), err)
            return False
        try:
            result = load(doc)
        except Exception as err:  # noqa: BLE001 (unpickling can raise anything)
            log.warning("run %s: cannot read the result of task %s: %s: %s", self.name,
                        doc.get("task"), type(err).__name__, err)
            return True
        if result.values is not None and len(result.values) == len(keys.keys):
            errors = [(index, rebuild(exc, tb)) for index, exc, tb in result.failures
                      if index is not None]
            with self._lock:
                self.run.record(keys.function, keys.keys, result.values, errors)
            log.debug("run %s: kept the outcomes of task %s, sent to an earlier driver",
                      self.name, doc.get("task"))
        return True

    def ackable(self, names: list[str]) -> list[str]:
        """Of the reply files ``names`` just handled, and any held before, the
        ones that may be acked now: all of them once the outcomes they held
        are written (a flush per batch of replies: one ``write``); none if
        they cannot be written (then :meth:`tick` tries again)."""
        self._held.extend(names)
        return self.tick()

    def tick(self) -> list[str]:
        """From the collector's loop: refresh the driver's record; write the
        outcomes not written yet, and return the reply files held for them."""
        self.run.beat()
        if not self._held:
            return []
        try:
            self.run.flush()
        except OSError as err:
            log.warning("run %s: cannot write its outcomes (%s); their replies stay in %s until "
                        "they are written", self.name, err, self.reply_queue)
            return []
        held, self._held = self._held, []
        return held

    # --- the end ---------------------------------------------------------------------------

    def release(self, tasks: TaskTable) -> None:
        """At shutdown: stop waiting for the adopted tasks no call asked for.
        They go on; their results land in the run's reply queue, which stays."""
        with self._lock:
            unwanted = [record for task, record in self._adopted.items()
                        if task not in self._wanted]
        for record in unwanted:
            if tasks.forget(record):
                self._released += 1

    def close(self, in_flight: bool) -> bool:
        """The last flush; the run is let go. True if the run's reply queue
        and spill folder must stay: tasks of the run may still be in flight
        (``in_flight``: of this driver's), or outcomes could not be written
        and are still in replies there."""
        if not self.run.owned:  # never taken (another driver has it): nothing here is ours
            return True
        written = self.run.close()
        keep = in_flight or self._released > 0 or not written or bool(self._held)
        log.info("run %s closed: %d call(s) done, %d failed%s", self.name, *self.run.counts(),
                 f"; its reply queue {self.reply_queue} stays for the tasks still out" if keep else "")
        return keep


# --- the run's tasks in the task queue ------------------------------------------------------

class RunTask(NamedTuple):
    """A task of a run found in the task queue (its keys checked)."""

    task: str
    reply: str
    keys: TaskKeys
    running: bool  # claimed by a worker (a work file), else waiting
    msg: Message


def run_tasks(broker: Broker, queue: str, secret: bytes, replies: Collection[str]) -> list[RunTask]:
    """The tasks of ``queue`` whose reply queue is one of ``replies`` (runs'
    reply queues) and whose call keys are signed with ``secret``, read
    without claiming them. A task that moves while it is read (claimed, or
    given back) is looked for once more under its new name; one that is
    gone was done (its result is in its reply queue, published before the ack)."""
    try:
        waiting, work = broker.get_message_list(queue)
    except QueueNotFoundError:
        return []
    found: list[RunTask] = []
    moved = _read_tasks(broker, queue, waiting, work, secret, replies, found)
    if moved:
        try:
            waiting, work = broker.get_message_list(queue)
        except QueueNotFoundError:
            return found
        _read_tasks(broker, queue, [name for name in waiting if message_id(name) in moved],
                    [name for name in work if message_id(name) in moved], secret, replies, found)
    return found


def _read_tasks(broker: Broker, queue: str, waiting: list[str], work: list[str], secret: bytes,
                replies: Collection[str], found: list[RunTask]) -> set[str]:
    """Add the tasks of ``replies`` among these waiting and work files to
    ``found``; the message ids of the files that were gone."""
    gone: set[str] = set()
    for running, names in ((False, waiting), (True, work)):
        for name in names:
            try:
                msg = broker.get_message(os.path.join(queue, WORK, name) if running
                                         else os.path.join(queue, name))
            except MessageNotFoundError:
                gone.add(message_id(name) or name)
                continue
            except DdmqError:
                continue
            msg.queue, msg.filename = queue, name
            for doc in task_envelopes(msg.message):  # a bundle carries several (see .bundle)
                _read_task(doc, msg, queue, secret, replies, running, found)
    return gone


def _read_task(doc: Any, msg: Message, queue: str, secret: bytes, replies: Collection[str],
               running: bool, found: list[RunTask]) -> None:
    """Add the task of envelope ``doc`` (of message ``msg``) to ``found`` if
    it is a task of ``replies`` whose call keys are signed with ``secret``."""
    reply = doc.get("reply") if isinstance(doc, dict) else None
    if not isinstance(reply, str) or reply not in replies or not isinstance(doc.get("task"), str):
        return
    try:
        text = check_keys(secret, doc)
        keys = None if text is None else TaskKeys.decode(text)
    except (SignatureError, ValueError) as err:
        log.warning("task %s in %s names calls of run queue %s it cannot prove: %s",
                    doc.get("task"), queue, reply, err)
        return
    if keys is not None:
        found.append(RunTask(doc["task"], reply, keys, running, msg))


def discard_run(broker: Broker, secret: bytes | None, name: str) -> tuple[RunInfo, int]:
    """Remove run ``name`` (RunInUseError while a live driver has it): its
    outcomes, its waiting tasks (found with the root's ``secret``), its
    reply queue and spill folder. Tasks running go on, and their results are
    dropped. Returns (what the run was, tasks withdrawn)."""
    info = run_info(broker.root, name, secret)
    remove_run(broker.root, name)
    withdrawn = 0
    if info.queue is not None and secret is not None:
        for task in run_tasks(broker, info.queue, secret, {info.reply_queue}):
            if not task.running:
                try:
                    withdrawn += broker.delete_message(task.msg)
                except MessageNotFoundError:
                    pass
    try:
        broker.delete_queue(info.reply_queue)
    except QueueNotFoundError:
        pass
    SpillStore(broker.root).remove(info.reply_queue)
    return info, withdrawn
