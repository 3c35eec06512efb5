"""DDMQExecutor: a ``concurrent.futures.Executor`` whose workers share only a filesystem.

The data flow, and the module that owns each step::

  |========== the caller's process ==========|== shared folder ROOT/ ==|== any node ==|

  +-----------+         +--------------+         +-------------------+         +----------+
  |           | submit  | TaskTable    | publish | tasks/            | consume | worker   |
  |           | map  => | {task id:    | ======> |  PRIO.QNUM.ddmqID | ======> | process  |
  |   DDMQ    |         |  TaskRecord} |         |  work/EXPIRY.P... |         | #1 .. #n |
  | Executor  |         +--------------+         |  dead/REASON.P... |         |          |
  |           |               ^ settle           +-------------------+         |  runs    |
  |           |               |                                                |  calls   |
  |           |         +--------------+ consume +-------------------+ publish |          |
  |           |         | Collector    | <====== | reply-HOST-PID-X/ | <====== |          |
  |           |         | thread       |   ack   |  PRIO.QNUM.ddmqID |         |          |
  +-----------+         +--------------+         +-------------------+         +----------+
                          every 2 s: clean(tasks) requeues expired leases;
                          list_dead(tasks) fails poison tasks; LocalPool replaces dead workers

``submit()`` / ``map()`` (this module):
- pickle the function and a batch of calls and sign them with the root's
  secret (:mod:`.envelope`, :mod:`.pickling`, :mod:`.secret`), add a
  :class:`~.tasks.TaskRecord` to the :class:`~.tasks.TaskTable`, then publish
  one message to the task queue. The message's lease is ``lease`` seconds
  and its requeue limit is ``retries``. Payloads over 64 KiB (of tasks and
  of results) travel as spill files in ``ROOT/.payloads/REPLY_QUEUE/``
  (:mod:`.spill`).

Worker (``python -m ddmq.worker ROOT``, :mod:`.worker`):
- claims a task message, verifies it, runs its calls, publishes their
  outcomes to the task's reply queue, then acks the task; while a call runs
  its keeper thread (:mod:`.keeper`) extends the lease.

Collector thread (:mod:`.collector`, one per executor):
- consumes the reply queue, verifies each result, settles its future and
  acks it; every :data:`~.collector.HOUSEKEEPING_INTERVAL` seconds requeues
  the expired leases of the task queue, fails the futures of dead-lettered
  tasks (:class:`WorkerLostError`), and has the local worker pool
  (:mod:`.pool`) replace workers that died.

``Future.cancel()`` deletes the task's message if no worker has claimed it.
``shutdown()`` waits for the unresolved futures, stops the local workers and
deletes the reply queue and the spill folder.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import pickle
import re
import secrets
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterable, Iterator

from ..broker import Broker
from ..errors import DdmqError, MessageNotFoundError, QueueNotFoundError
from ..layout import HOST, check_queue_name, message_id
from . import heartbeat
from .collector import Collector
from .envelope import dump_task
from .errors import BrokenDDMQExecutor, TaskRejectedError, WorkerLostError
from .pickling import callable_name
from .pool import WORKER_STOP_TIMEOUT, LocalPool
from .secret import load_secret
from .spill import SpillStore
from .tasks import TaskFuture, TaskRecord, TaskTable

__all__ = ["DDMQExecutor", "BrokenDDMQExecutor", "TaskRejectedError", "WorkerLostError"]

log = logging.getLogger(__name__)

#: Worker count assumed for choosing a chunk size when none can be seen.
DEFAULT_WORKER_GUESS = 16

_executors: weakref.WeakSet[DDMQExecutor] = weakref.WeakSet()


class DDMQExecutor(Executor):
    """An Executor that runs calls in ddmq workers, local or on other nodes.

    ``root``: the ddmq root folder, on a filesystem the workers share (made,
    mode 0700, if missing). ``max_workers``: local workers to start
    (``python -m ddmq.worker`` processes); None starts ``os.cpu_count()``;
    0 starts none and relies on workers started elsewhere on the same root
    and queue. ``queue``: the task queue. ``lease``: seconds a worker holds a
    task before it counts as lost; workers extend it while the task runs, so
    it bounds how long a dead worker's task waits, not how long a task may
    run. ``retries``: how many times a task is run again after its worker was
    lost, before its future fails with :class:`WorkerLostError`.
    ``priority``: of the task messages (lower first; None: the queue's
    setting). ``worker_args``: extra command-line arguments for the local
    workers. ``start_timeout``: seconds to wait for the local workers to be
    ready (0: do not wait); raises :class:`BrokenDDMQExecutor` if they fail.

    The function and arguments of a call are pickled with cloudpickle, so
    lambdas, closures and functions of ``__main__`` work; the modules they use
    must be importable by the workers. Local workers get the caller's
    ``sys.path`` in their ``PYTHONPATH``.
    """

    def __init__(self, root: str | os.PathLike, max_workers: int | None = None, *,
                 queue: str = "tasks", lease: float = 60, retries: int = 2,
                 priority: int | None = None, worker_args: Iterable[str] = (),
                 start_timeout: float = 60.0):
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if type(max_workers) is not int or max_workers < 0:
            raise ValueError(f"max_workers must be a whole number >= 0 or None, not {max_workers!r}")
        if not isinstance(lease, (int, float)) or not lease >= 1:
            raise ValueError(f"lease must be at least 1 second, not {lease!r}")
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
        if priority is not None and (type(priority) is not int or priority < 0):
            raise ValueError(f"priority must be a whole number >= 0 or None, not {priority!r}")
        check_queue_name(queue)
        setup = Broker(root, create=True)
        setup.create_queue(queue)
        setup.close()
        # create=False from here on: a deleted queue is an error, never re-made.
        self._broker = Broker(root)
        self.root = self._broker.root
        self.queue = queue
        self.max_workers = max_workers
        self.lease = int(math.ceil(lease))
        self.retries = retries
        self.priority = priority
        self._secret = load_secret(self.root, create=True)
        self._token = secrets.token_hex(4)
        host = re.sub(r"[^A-Za-z0-9_-]", "_", HOST)[:40]
        self.reply_queue = f"reply-{host}-{os.getpid()}-{self._token}"
        self._spills = SpillStore(self.root)
        self._tasks = TaskTable(self._spills)  # the tasks whose futures are unresolved
        self._counter = itertools.count(1)
        self._submit_lock = threading.Lock()  # _shutdown, _broken, publishing
        self._map_lock = threading.Lock()     # _mapping
        self._mapping = 0  # map calls publishing their chunks
        self._collect_now = threading.Event()  # clear while _mapping (see collector.MAP_PAUSE_MAX)
        self._collect_now.set()
        self._shutdown = False
        self._abandon = False
        self._broken: str | None = None
        self._pool = LocalPool(self.root, queue, [str(arg) for arg in worker_args])
        self._collector: Collector | None = None
        try:
            self._broker.create_queue(self.reply_queue)
            self._spills.create(self.reply_queue)
            try:
                self._spills.prune(self._broker.list_queues())
            except (OSError, DdmqError) as err:
                log.debug("cannot prune old spill folders: %s", err)
            self._pool.start(max_workers)
            self._collector = Collector(self)
            self._collector.start()
            if max_workers and start_timeout:
                self._pool.wait_ready(start_timeout, lambda: self._broken)
        except BaseException:
            self._abandon = True
            self.shutdown(wait=True)
            raise
        _executors.add(self)
        log.info("executor on %s: queue %s, reply queue %s, %d local worker(s)",
                 self.root, queue, self.reply_queue, max_workers)

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        return (f"<DDMQExecutor {self.root!r} queue={self.queue!r} max_workers={self.max_workers} "
                f"pending={len(self._tasks)} {state}>")

    # --- submitting --------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` on a worker; return its Future.

        Raises RuntimeError after shutdown, BrokenDDMQExecutor when broken,
        and the broker's errors if the task cannot be published. If ``fn`` or
        an argument cannot be pickled, the returned future has already failed
        with ``pickle.PicklingError``.
        """
        return self._submit(fn, [args], [kwargs] if kwargs else None, single=True)

    def _submit(self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]],
                kwargs: list[dict[str, Any]] | None, single: bool) -> TaskFuture:
        self._check_open()
        task_id = f"{self._token}.{next(self._counter)}"
        future = TaskFuture(task_id, self._withdraw)
        try:
            doc = dump_task(self._secret, task_id, self.reply_queue, fn, arglists, kwargs,
                            self._spills)
        except pickle.PicklingError as err:
            future.set_exception(err)
            return future
        task = TaskRecord(task_id, future, len(arglists), single, callable_name(fn),
                          self._spills.file_of(doc, self.reply_queue))
        with self._submit_lock:
            # In the table before publishing, for the quickest reply to find
            # it; whatever fails, forget() takes it out and releases its spill file.
            self._tasks.add(task)
            try:
                self._check_open()
                msg = self._broker.publish(self.queue, doc, priority=self.priority,
                                           timeout=self.lease, requeue=True,
                                           requeue_limit=self.retries)
            except BaseException:
                self._tasks.forget(task)
                raise
            self._tasks.published(task, msg)
        return future

    def _check_open(self) -> None:
        if self._broken:
            raise BrokenDDMQExecutor(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None) -> Iterator[Any]:
        """Return an iterator of ``fn(*args)`` for the ``args`` of
        ``zip(*iterables)``, in order, yielded as each becomes available.

        All calls are submitted at once, ``chunksize`` calls per message
        (None, the default: about ``len / (4 * workers)`` as
        ``multiprocessing.Pool.map`` does, counting the local workers, else
        the live workers of the queue). The iterator raises the first call's
        exception where its result would be, and ``TimeoutError`` if a result
        is not ready ``timeout`` seconds after this call; calls not yet
        started are then cancelled.
        """
        if chunksize is not None and (type(chunksize) is not int or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        calls = list(zip(*iterables))
        if chunksize is None:
            chunksize = self._auto_chunksize(len(calls))
        futures: list[TaskFuture] = []
        with self._map_lock:
            self._mapping += 1
            self._collect_now.clear()
        try:
            for start in range(0, len(calls), chunksize):
                futures.append(self._submit(fn, calls[start:start + chunksize], None, single=False))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            with self._map_lock:
                self._mapping -= 1
                if not self._mapping:
                    self._collect_now.set()
        del calls
        return _results(futures, end_time)

    def _auto_chunksize(self, n: int) -> int:
        workers = self.max_workers
        if not workers:
            try:
                workers = len(heartbeat.list_workers(self.root, self.queue)[0])
            except (OSError, DdmqError) as err:
                log.debug("cannot count the workers: %s", err)
            workers = workers or DEFAULT_WORKER_GUESS
        chunksize, extra = divmod(n, workers * 4)
        return max(1, chunksize + (1 if extra else 0))

    def workers(self) -> tuple[list[heartbeat.WorkerRecord], list[heartbeat.WorkerRecord]]:
        """(live, lost) workers of this executor's queue, from their heartbeats."""
        return heartbeat.list_workers(self.root, self.queue)

    # --- cancel and shutdown -------------------------------------------------------

    def _withdraw(self, task_id: str) -> bool:
        """Delete the message of a task no worker has claimed; True if done."""
        task = self._tasks.get(task_id)
        if task is None or task.msg is None:
            return False
        try:
            self._broker.delete_message(task.msg)
        except MessageNotFoundError:
            # Claimed by a worker; or requeued since (lost worker, given
            # back), which keeps the message id under a new name.
            if not task.msg.id or not self._delete_requeued(task.msg.id):
                return False
        except DdmqError as err:
            log.warning("cannot cancel task %s: %s", task_id, err)
            return False
        self._tasks.forget(task)
        log.debug("cancelled task %s", task_id)
        return True

    def _delete_requeued(self, msg_id: str) -> bool:
        """Delete the waiting message with id ``msg_id``, whatever its name now."""
        try:
            waiting, _ = self._broker.get_message_list(self.queue)
        except DdmqError:
            return False
        for name in waiting:
            if message_id(name) == msg_id:
                try:
                    return self._broker.delete_message(os.path.join(self.queue, name))
                except DdmqError:
                    return False
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; later ``submit`` raises RuntimeError.

        ``cancel_futures``: cancel the tasks no worker has started. ``wait``:
        return only when every unresolved future is done and the local
        workers have stopped; else this happens in the background. The reply
        queue is deleted at the end. Safe to call more than once.
        """
        with self._submit_lock:
            self._shutdown = True
        if cancel_futures:
            for task in self._tasks.tasks():
                task.future.cancel()
        self._wake_collector()
        collector = self._collector
        if collector is None:
            self._cleanup()
        elif wait and collector is not threading.current_thread():
            collector.join()

    def _wake_collector(self) -> None:
        try:
            self._broker.publish(self.reply_queue, [])  # a reply body without envelopes
        except DdmqError:
            pass  # the collector is gone, and the reply queue with it

    def _at_exit(self) -> None:
        """At interpreter exit: like ``shutdown(wait=True)`` if local workers
        can finish the unresolved tasks; otherwise cancel what is waiting and
        drop the results of what is running elsewhere."""
        if self._collector is None or not self._collector.is_alive():
            return
        if not self.max_workers and len(self._tasks):
            self.shutdown(wait=False, cancel_futures=True)
            running = len(self._tasks)
            if running:
                log.warning("exiting with %d task(s) still running on other workers; "
                            "their results are dropped", running)
                self._abandon = True
        self.shutdown(wait=True)

    # --- the end, called by the collector thread --------------------------------------

    def _break(self, reason: str) -> None:
        """The executor cannot go on: fail every unresolved future."""
        log.error("executor on %s is broken: %s", self.root, reason)
        with self._submit_lock:
            self._broken = reason
            self._shutdown = True
        self._tasks.break_all(reason)

    def _cleanup(self) -> None:
        """Stop the local workers, delete the reply queue and the spill folder."""
        self._pool.stop(1.0 if self._abandon else WORKER_STOP_TIMEOUT)
        for attempt in range(3):
            try:
                self._broker.delete_queue(self.reply_queue)
                break
            except QueueNotFoundError:
                break
            except DdmqError as err:  # a late reply landed while deleting: try again
                if attempt == 2:
                    log.warning("cannot delete the reply queue %s: %s", self.reply_queue, err)
        self._spills.remove(self.reply_queue)
        self._broker.close()
        log.info("executor on %s shut down", self.root)


def _results(futures: list[TaskFuture], end_time: float | None) -> Iterator[Any]:
    """Yield the values of map's chunk futures in order (see DDMQExecutor.map);
    each chunk's result is (values, [(index, exception), ...])."""
    try:
        futures.reverse()  # pop from the end: each future is released once used
        while futures:
            future = futures.pop()
            try:
                if end_time is None:
                    values, errors = future.result()
                else:
                    values, errors = future.result(end_time - time.monotonic())
            except BaseException:
                future.cancel()
                raise
            if errors:
                index, error = errors[0]
                yield from values[:index]
                raise error
            yield from values
            del values
    finally:
        for future in futures:
            future.cancel()


def _python_exit() -> None:
    for executor in list(_executors):
        try:
            executor._at_exit()
        except Exception:  # noqa: BLE001 (exiting anyway)
            log.exception("cannot shut down %r at exit", executor)


atexit.register(_python_exit)
