"""DDMQExecutor: a ``concurrent.futures.Executor`` whose workers share only a filesystem.

The following diagram and text describe the data flow through the system::

  |========== the caller's process ==========|== shared folder ROOT/ ==|== any node ==|

  +-----------+         +--------------+         +-------------------+         +----------+
  |           | submit  | pending      | publish | tasks/            | consume | worker   |
  |           | map  => | {task id:    | ======> |  PRIO.QNUM.ddmqID | ======> | process  |
  |   DDMQ    |         |  _Task}      |         |  work/EXPIRY.P... |         | #1 .. #n |
  | Executor  |         +--------------+         |  dead/REASON.P... |         |          |
  |           |               ^ resolve          +-------------------+         |  runs    |
  |           |               |                                                |  calls   |
  |           |         +--------------+ consume +-------------------+ publish |          |
  |           |         | collector    | <====== | reply-HOST-PID-X/ | <====== |          |
  |           |         | thread       |   ack   |  PRIO.QNUM.ddmqID |         |          |
  +-----------+         +--------------+         +-------------------+         +----------+
                          every 2 s: clean(tasks) requeues expired leases;
                          list_dead(tasks) fails poison tasks; restarts local workers

``submit()`` / ``map()``:
- pickle the function and a batch of calls with cloudpickle, sign them with
  the root's secret (see :mod:`ddmq.executor.payload`), add a ``_Task`` to the
  pending dict, then publish one message to the task queue. The message's
  lease is ``lease`` seconds and its requeue limit is ``retries``. Payloads
  over 64 KiB (of tasks and of results) travel as files in the executor's
  spill folder ``ROOT/.payloads/REPLY_QUEUE/``, named by the message.

Worker (``python -m ddmq.worker ROOT``, see :mod:`ddmq.worker`):
- claims a task message, verifies it, runs its calls, publishes their
  outcomes to the task's reply queue, then acks the task; while a call runs
  it keeps extending the lease.

Collector thread (one per executor):
- consumes the reply queue (woken by inotify on a local filesystem, else by
  polling with back-off), verifies each result, resolves its future and acks
  it. The first result of a task wins; a late duplicate (from a worker that
  lost its lease and came back) is logged and dropped.
- every :data:`HOUSEKEEPING_INTERVAL` seconds runs ``clean`` on the task queue,
  so the lease of a killed worker's task is requeued within seconds of its
  expiry; looks in the task queue's dead letters for its own messages, so a
  task whose workers kept dying fails its future (:class:`WorkerLostError`)
  instead of waiting for ever; and replaces local workers that died.

``Future.cancel()`` deletes the task's message if no worker has claimed it.
``shutdown()`` waits for the pending futures, stops the local workers and
deletes the reply queue and the spill folder.

Local workers are ``python -m ddmq.worker ROOT --parent PID`` processes in
their own session (a Ctrl-C in the terminal reaches only the caller); they
stop by themselves if the caller dies. One that dies is replaced.
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
import signal
import site
import subprocess
import sys
import sysconfig
import threading
import time
import weakref
from concurrent.futures import BrokenExecutor, Executor, Future, InvalidStateError
from typing import Any, Callable, Iterable, Iterator

from ..broker import Broker, check_queue_name
from ..errors import DdmqError, LeaseLostError, MessageNotFoundError, QueueNotFoundError
from ..message import Message
from . import heartbeat
from .payload import (SignatureError, discard, dump_task, load_result, load_secret,
                      make_spill_folder, prune_spill_folders, rebuild, release, remove_spill_folder,
                      spill_folder, spill_path)

log = logging.getLogger(__name__)

#: Seconds between two housekeeping rounds of the collector thread.
HOUSEKEEPING_INTERVAL = 2.0
#: Most reply messages the collector claims at once.
REPLY_BATCH = 256
#: Longest pause (s) of the collector while ``map`` publishes its chunks.
#: Both threads need the GIL: the pause lets ``map`` publish at full speed,
#: and the collector then takes the replies that came meanwhile in one batch.
MAP_PAUSE_MAX = 0.05
#: Worker count assumed for choosing a chunk size when none can be seen.
DEFAULT_WORKER_GUESS = 16
#: Local workers that die before they ever started, in a row, that break the executor.
MAX_START_FAILURES = 3
#: Seconds local workers get to exit after SIGTERM at shutdown, before SIGKILL.
WORKER_STOP_TIMEOUT = 35.0

#: The folder that holds the ddmq package: local workers must import it from there.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_executors: weakref.WeakSet[DDMQExecutor] = weakref.WeakSet()


class WorkerLostError(DdmqError):
    """A task was given up: the workers that ran it were lost (killed,
    crashed, out of lease) every time, up to the executor's ``retries``."""


class TaskRejectedError(DdmqError):
    """A worker refused to run a task (its signature did not match the
    root's secret, or its message could not be read)."""


class BrokenDDMQExecutor(BrokenExecutor, DdmqError):
    """The executor cannot run tasks any more: its local workers cannot start,
    or its collector thread failed. Pending futures fail with this error."""


class _TaskFuture(Future):
    """A Future whose ``cancel()`` withdraws its task message from the queue.

    ``cancel()`` returns True if the task was waiting (its message is
    deleted and no worker will run it), False if a worker has it or it is
    done. A task a lost worker gave back is waiting again, and can be
    cancelled again. ``running()`` stays False: the executor is not told
    when a worker starts a task.
    """

    def __init__(self, executor: DDMQExecutor, task_id: str):
        super().__init__()
        self._executor = executor
        self._task_id = task_id

    def cancel(self) -> bool:
        if self.cancelled():
            return True
        if self.done() or self.running():
            return False
        if not self._executor._withdraw(self._task_id):
            return False
        return super().cancel()


class _Task:
    """One task message: the calls it carries and the future they resolve."""

    __slots__ = ("id", "future", "ncalls", "single", "fn_name", "msg", "spill")

    def __init__(self, task_id: str, future: _TaskFuture, ncalls: int, single: bool, fn_name: str,
                 spill: str | None):
        self.id = task_id
        self.future = future
        self.ncalls = ncalls
        self.single = single  # submit(): the future's result is the value; map(): (values, errors)
        self.fn_name = fn_name
        self.spill = spill    # the file of a large payload, removed when the task is over
        self.msg: Message | None = None

    def over(self) -> None:
        """The task is done, failed or cancelled: remove its payload file."""
        if self.spill is not None:
            release(self.spill)


class _LocalWorker:
    """A worker process this executor started."""

    __slots__ = ("proc", "ready", "reported")

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.ready = False
        self.reported = False


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
        self._worker_args = [str(arg) for arg in worker_args]
        self._secret = load_secret(self.root, create=True)
        self._token = secrets.token_hex(4)
        host = re.sub(r"[^A-Za-z0-9_-]", "_", heartbeat.HOST)[:40]
        self.reply_queue = f"reply-{host}-{os.getpid()}-{self._token}"
        self._spill = spill_folder(self.root, self.reply_queue)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()         # _pending, _by_msg_id
        self._submit_lock = threading.Lock()  # _shutdown, _broken, publishing
        self._pending: dict[str, _Task] = {}
        self._by_msg_id: dict[str, str] = {}
        self._mapping = 0  # map calls publishing their chunks (guarded by _lock)
        self._collect_now = threading.Event()  # clear while _mapping (see MAP_PAUSE_MAX)
        self._collect_now.set()
        self._shutdown = False
        self._abandon = False
        self._broken: str | None = None
        self._workers: list[_LocalWorker] = []
        self._stopping_workers = False
        self._start_failures = 0
        self._collector: threading.Thread | None = None
        try:
            self._broker.create_queue(self.reply_queue)
            make_spill_folder(self.root, self.reply_queue)
            try:
                prune_spill_folders(self.root, self._broker.list_queues())
            except (OSError, DdmqError) as err:
                log.debug("cannot prune old spill folders: %s", err)
            for _ in range(max_workers):
                self._workers.append(_LocalWorker(self._spawn()))
            self._collector = threading.Thread(target=self._collect, daemon=True,
                                               name=f"ddmq-collector-{self._token}")
            self._collector.start()
            if max_workers and start_timeout:
                self._wait_ready(start_timeout)
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
                f"pending={len(self._pending)} {state}>")

    # --- submitting --------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` on a worker; return its Future.

        Raises RuntimeError after shutdown, BrokenDDMQExecutor when broken,
        and the broker's errors if the task cannot be published. If ``fn`` or
        an argument cannot be pickled, the returned future has already failed
        with ``pickle.PicklingError``.
        """
        return self._submit(fn, [args], [kwargs] if kwargs else None, single=True)

    def _submit(self, fn: Callable[..., Any], arglists: list[tuple], kwargs: list[dict] | None,
                single: bool) -> _TaskFuture:
        self._check_open()
        task_id = f"{self._token}.{next(self._counter)}"
        future = _TaskFuture(self, task_id)
        try:
            doc = dump_task(self._secret, task_id, self.reply_queue, fn, arglists, kwargs, self._spill)
        except pickle.PicklingError as err:
            future.set_exception(err)
            return future
        task = _Task(task_id, future, len(arglists), single, _name(fn), spill_path(doc, self._spill))
        with self._submit_lock:
            try:
                self._check_open()
                with self._lock:
                    self._pending[task_id] = task
                task.msg = self._broker.publish(self.queue, doc, priority=self.priority,
                                                timeout=self.lease, requeue=True,
                                                requeue_limit=self.retries)
            except BaseException:
                with self._lock:
                    self._pending.pop(task_id, None)
                task.over()
                raise
            with self._lock:
                if task_id in self._pending:
                    self._by_msg_id[task.msg.id] = task_id
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
        futures: list[_TaskFuture] = []
        with self._lock:
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
            with self._lock:
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
        with self._lock:
            task = self._pending.get(task_id)
        if task is None or task.msg is None:
            return False
        try:
            self._broker.delete_message(task.msg)
        except MessageNotFoundError:
            # Claimed by a worker; or requeued since (lost worker, given
            # back), which keeps the message id under a new name.
            if not self._delete_requeued(task.msg.id):
                return False
        except DdmqError as err:
            log.warning("cannot cancel task %s: %s", task_id, err)
            return False
        with self._lock:
            self._pending.pop(task_id, None)
            self._by_msg_id.pop(task.msg.id, None)
        task.over()
        log.debug("cancelled task %s", task_id)
        return True

    def _delete_requeued(self, msg_id: str) -> bool:
        """Delete the waiting message with id ``msg_id``, whatever its name now."""
        try:
            waiting, _ = self._broker.get_message_list(self.queue)
        except DdmqError:
            return False
        suffix = f".ddmq{msg_id}"
        for name in waiting:
            if name.endswith(suffix):
                try:
                    return self._broker.delete_message(os.path.join(self.queue, name))
                except DdmqError:
                    return False
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; later ``submit`` raises RuntimeError.

        ``cancel_futures``: cancel the tasks no worker has started. ``wait``:
        return only when every pending future is done and the local workers
        have stopped; else this happens in the background. The reply queue is
        deleted at the end. Safe to call more than once.
        """
        with self._submit_lock:
            self._shutdown = True
        if cancel_futures:
            with self._lock:
                tasks = list(self._pending.values())
            for task in tasks:
                task.future.cancel()
        self._wake_collector()
        collector = self._collector
        if collector is None:
            self._cleanup()
        elif wait and collector is not threading.current_thread():
            collector.join()

    def _wake_collector(self) -> None:
        try:
            self._broker.publish(self.reply_queue, {"wake": True})
        except DdmqError:
            pass  # the collector is gone, and the reply queue with it

    def _at_exit(self) -> None:
        """At interpreter exit: like ``shutdown(wait=True)`` if local workers
        can finish the pending tasks; otherwise cancel what is waiting and
        drop the results of what is running elsewhere."""
        if self._collector is None or not self._collector.is_alive():
            return
        if not self.max_workers:
            with self._lock:
                running = len(self._pending)
            if running:
                self.shutdown(wait=False, cancel_futures=True)
                with self._lock:
                    running = len(self._pending)
                if running:
                    log.warning("exiting with %d task(s) still running on other workers; "
                                "their results are dropped", running)
                    self._abandon = True
        self.shutdown(wait=True)

    # --- the collector thread ---------------------------------------------------------

    def _collect(self) -> None:
        """Resolve futures from the reply queue; housekeeping; clean up at the end."""
        next_housekeeping = 0.0
        error_pause = 0.1
        try:
            while True:
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
                with self._lock:
                    if self._shutdown and (not self._pending or self._abandon):
                        break
                self._collect_now.wait(MAP_PAUSE_MAX)
                try:
                    msgs = self._broker.consume(self.reply_queue, n=REPLY_BATCH,
                                                wait=max(0.0, next_housekeeping - time.monotonic()))
                    error_pause = 0.1
                except QueueNotFoundError:
                    self._break(f"the reply queue {self.reply_queue} was deleted")
                    break
                except DdmqError as err:
                    log.warning("cannot read the reply queue %s: %s", self.reply_queue, err)
                    time.sleep(error_pause)  # back-off while the filesystem recovers
                    error_pause = min(error_pause * 2, 5.0)
                    continue
                if msgs:
                    self._handle(msgs)
        except BaseException as err:  # a bug: say so on every pending future
            log.exception("the collector thread of %r failed", self)
            self._break(f"the collector thread failed: {type(err).__name__}: {err}")
        finally:
            self._cleanup()

    def _handle(self, msgs: list[Message]) -> None:
        for msg in msgs:
            # A worker that ran several quick tasks sends their results together.
            docs = msg.message if isinstance(msg.message, list) else [msg.message]
            for doc in docs:
                try:
                    self._handle_one(doc)
                except Exception:  # noqa: BLE001 (one bad reply must not stop the others)
                    log.exception("cannot handle a reply in message %s", msg.id)
        try:
            self._broker.ack(self.reply_queue, [msg.filename for msg in msgs])
        except LeaseLostError:
            pass
        except DdmqError as err:
            log.warning("cannot ack replies: %s", err)

    def _handle_one(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            log.warning("ignoring a reply that is not a JSON object: %.80r", doc)
            return
        if doc.get("wake"):
            return
        task_id = doc.get("task")
        with self._lock:
            task = self._pending.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            discard(doc, self._spill)
            log.info("dropping a reply for task %s from worker %s: not pending (a duplicate "
                     "from a worker that lost its lease, or the task was cancelled)",
                     task_id, doc.get("worker"))
            return
        if "rejected" in doc:
            self._fail(task, TaskRejectedError(
                f"task {task.id} ({task.fn_name}) was refused by worker {doc.get('worker')}: "
                f"{doc.get('rejected')}"))
            return
        try:
            _, values, failures = load_result(self._secret, self.reply_queue, doc, self._spill)
        except SignatureError as err:
            log.error("refused a result for task %s without unpickling it: %s", task.id, err)
            self._fail(task, SignatureError(
                f"the result of task {task.id} ({task.fn_name}) was refused: {err}; something "
                f"other than a worker of this root wrote into {self.reply_queue}"))
            return
        except Exception as err:  # noqa: BLE001 (unpickling can raise anything)
            error = pickle.UnpicklingError(
                f"the result of task {task.id} ({task.fn_name}) cannot be unpickled in this "
                f"process: {type(err).__name__}: {err}")
            error.__cause__ = err
            self._fail(task, error)
            return
        errors = [(index, rebuild(exc, tb)) for index, exc, tb in failures]
        if values is None:  # the task failed as a whole (e.g. it could not be loaded)
            self._fail(task, errors[0][1] if errors else DdmqError(f"task {task.id} failed"))
            return
        if len(values) != task.ncalls:
            self._fail(task, DdmqError(f"task {task.id}: {len(values)} outcomes for "
                                       f"{task.ncalls} calls"))
            return
        if not self._forget(task):
            return
        if not task.single:
            _settle(task.future, (values, errors), None)
        elif errors:
            _settle(task.future, None, errors[0][1])
        else:
            _settle(task.future, values[0], None)

    def _forget(self, task: _Task) -> bool:
        """Take ``task`` off the pending dict; False if someone else did first."""
        with self._lock:
            if self._pending.pop(task.id, None) is None:
                return False
            if task.msg is not None:
                self._by_msg_id.pop(task.msg.id, None)
        task.over()
        return True

    def _fail(self, task: _Task, error: BaseException) -> None:
        if self._forget(task):
            _settle(task.future, None, error)

    def _housekeeping(self) -> None:
        """Requeue expired leases, fail dead-lettered tasks, mind local workers."""
        try:
            self._broker.clean(self.queue, force=True)
        except DdmqError as err:
            log.warning("housekeeping of queue %s failed: %s", self.queue, err)
        with self._lock:
            watching = bool(self._by_msg_id)
        if watching:
            try:
                dead = self._broker.list_dead(self.queue)
            except DdmqError as err:
                log.warning("cannot list the dead letters of %s: %s", self.queue, err)
                dead = []
            for name in dead:
                reason, _, rest = name.partition(".")
                msg_id = rest.rpartition(".ddmq")[2]
                with self._lock:
                    task_id = self._by_msg_id.get(msg_id)
                    task = self._pending.get(task_id) if task_id else None
                if task is not None:
                    self._fail(task, self._dead_error(task, reason, name))
        if self._workers and not self._stopping_workers:
            try:
                self._mind_workers()
            except OSError as err:  # e.g. no more processes: try again next round
                log.warning("cannot start a local worker: %s", err)

    def _dead_error(self, task: _Task, reason: str, name: str) -> DdmqError:
        where = os.path.join(self.root, self.queue, "dead", name)
        if reason == "requeue_limit":
            attempts = self.retries + 1
            log.error("task %s (%s) dead-lettered after %d attempt(s): its worker was lost each time",
                      task.id, task.fn_name, attempts)
            return WorkerLostError(
                f"task {task.id} ({task.fn_name}) failed after {attempts} attempt(s): the worker "
                f"running it was lost each time (killed, crashed, or its lease of {self.lease} s "
                f"expired) and retries={self.retries} were used up; its message is in {where}")
        if reason == "expired":
            return WorkerLostError(
                f"task {task.id} ({task.fn_name}) failed: the worker running it was lost and its "
                f"message was dead-lettered instead of requeued ({where})")
        return TaskRejectedError(f"task {task.id} ({task.fn_name}) was dead-lettered by a worker "
                                 f"({reason}): {where}")

    def _break(self, reason: str) -> None:
        """The executor cannot go on: fail every pending future."""
        log.error("executor on %s is broken: %s", self.root, reason)
        with self._submit_lock:
            self._broken = reason
            self._shutdown = True
        with self._lock:
            tasks = list(self._pending.values())
            self._pending.clear()
            self._by_msg_id.clear()
        for task in tasks:
            _settle(task.future, None, BrokenDDMQExecutor(reason))

    def _cleanup(self) -> None:
        self._stop_workers()
        for attempt in range(3):
            try:
                self._broker.delete_queue(self.reply_queue)
                break
            except QueueNotFoundError:
                break
            except DdmqError as err:  # a late reply landed while deleting: try again
                if attempt == 2:
                    log.warning("cannot delete the reply queue %s: %s", self.reply_queue, err)
        remove_spill_folder(self.root, self.reply_queue)
        self._broker.close()
        log.info("executor on %s shut down", self.root)

    # --- local workers ----------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "ddmq.worker", self.root, "--queue", self.queue,
                   "--parent", str(os.getpid()), *self._worker_args]
        return subprocess.Popen(command, env=_worker_env(), stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def _wait_ready(self, timeout: float) -> None:
        """Wait until every local worker wrote its heartbeat; raise
        BrokenDDMQExecutor if one exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            if self._broken:
                raise BrokenDDMQExecutor(self._broken)
            waiting = [w for w in self._workers if not w.ready]
            for worker in waiting:
                if os.path.exists(heartbeat.record_path(self.root, heartbeat.HOST, worker.proc.pid)):
                    worker.ready = True
                elif worker.proc.poll() is not None:
                    raise BrokenDDMQExecutor(f"a local worker (pid {worker.proc.pid}) "
                                             f"{_exit_text(worker.proc.returncode)} while starting; "
                                             "see its messages above")
            if all(w.ready for w in self._workers):
                return
            if time.monotonic() >= deadline:
                raise BrokenDDMQExecutor(f"local workers were not ready after {timeout} s")
            time.sleep(pause)  # polling with back-off
            pause = min(pause * 2, 0.1)

    def _mind_workers(self) -> None:
        """Replace local workers that died; break after repeated start failures."""
        with self._lock:
            busy = bool(self._pending)
        for slot, worker in enumerate(self._workers):
            code = worker.proc.poll()
            if code is None:
                if not worker.ready and os.path.exists(
                        heartbeat.record_path(self.root, heartbeat.HOST, worker.proc.pid)):
                    worker.ready = True
                    self._start_failures = 0
                continue
            if not worker.reported:
                worker.reported = True
                level = logging.INFO if code == 0 else logging.WARNING
                log.log(level, "local worker pid %d %s", worker.proc.pid, _exit_text(code))
                if not worker.ready:
                    self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._break(f"local workers keep dying before they start (last one "
                            f"{_exit_text(code)}); see their messages above")
                return
            if code != 0 or busy:  # a worker that chose to exit is replaced when there is work
                self._workers[slot] = _LocalWorker(self._spawn())
                log.info("started local worker pid %d in place of pid %d",
                         self._workers[slot].proc.pid, worker.proc.pid)

    def _stop_workers(self) -> None:
        """SIGTERM the local workers, then SIGKILL those still there after
        :data:`WORKER_STOP_TIMEOUT` s (1 s when abandoning)."""
        self._stopping_workers = True
        procs = [w.proc for w in self._workers if w.proc.poll() is None]
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + (1.0 if self._abandon else WORKER_STOP_TIMEOUT)
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("local worker pid %d did not stop: killing it", proc.pid)
                _signal(proc, signal.SIGKILL)
                proc.wait()


def _results(futures: list[_TaskFuture], end_time: float | None) -> Iterator[Any]:
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


def _settle(future: Future, value: Any, error: BaseException | None) -> None:
    """Resolve ``future`` unless it was cancelled meanwhile."""
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except InvalidStateError:  # cancelled, or resolved already
        pass


def _worker_env() -> dict[str, str]:
    """The environment of local workers: the caller's, with its ``sys.path``
    (minus the interpreter's own folders, which a worker has anyway) and
    ddmq's location in PYTHONPATH."""
    layout = sysconfig.get_paths()
    own = {os.path.realpath(p) for p in layout.values()}
    own.update(os.path.realpath(p) for p in site.getsitepackages())
    own.add(os.path.realpath(site.getusersitepackages()))
    libs = tuple({os.path.realpath(os.path.dirname(layout[key])) + os.sep
                  for key in ("stdlib", "platstdlib")})
    paths = [_PACKAGE_PARENT]
    for entry in sys.path:
        entry = os.path.abspath(entry or os.getcwd())
        real = os.path.realpath(entry)
        if real not in own and not real.startswith(libs):
            paths.append(entry)
    paths.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass


def _exit_text(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _python_exit() -> None:
    for executor in list(_executors):
        try:
            executor._at_exit()
        except Exception:  # noqa: BLE001 (exiting anyway)
            log.exception("cannot shut down %r at exit", executor)


atexit.register(_python_exit)
