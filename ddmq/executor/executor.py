"""DDMQExecutor: a ``concurrent.futures.Executor`` whose workers share only a filesystem.

The data flow, and the module that owns each step::

  |========== the caller's process ==========|== shared folder ROOT/ ==|== any node ==|

  +-----------+         +--------------+         +-------------------+         +----------+
  |           | submit  | TaskTable    |         | tasks/            | consume | worker   |
  |           | map  => | {task id:    |         |  PRIO.QNUM.ddmqID | ======> | process  |
  |   DDMQ    |    |    |  TaskRecord} |         |  work/EXPIRY.P... |         | #1 .. #n |
  | Executor  |    |    +--------------+ publish |  dead/REASON.P... |         |          |
  |           |    +--> | Publisher    | ======> |  (one task, or a  |         |  runs    |
  |           |         | (bundles)    |         |   bundle of them) |         |  calls   |
  |           |         +--------------+         +-------------------+         |          |
  |           |               | settle                                         |          |
  |           |         +--------------+ receive +-------------------+ publish |          |
  |           |         | Collector    | <====== | reply-HOST-PID-X/ | <====== |          |
  |           |         | thread       |         |  PRIO.QNUM.ddmqID |         |          |
  +-----------+         +--------------+         +-------------------+         +----------+
                          every 2 s: clean(tasks) requeues expired leases; LocalPool replaces
                          dead workers and DeathWatch requeues their tasks at once, and those
                          of workers elsewhere whose heartbeat stopped; list_dead(tasks) fails
                          poison tasks, saying how each worker died

``submit()`` / ``map()`` (this module):
- pickle the function and a batch of calls and sign them with the root's
  secret (:mod:`.envelope`, :mod:`.pickling`, :mod:`.secret`), add a
  :class:`~.tasks.TaskRecord` to the :class:`~.tasks.TaskTable`, then hand
  the task to the publisher (:mod:`.publisher`), which publishes it to the
  task queue, alone or with the tasks of a burst as one bundle
  (:mod:`.bundle`). The message's lease is ``lease`` seconds
  and its requeue limit is ``retries``. Payloads over 64 KiB (of tasks and
  of results) travel as spill files in ``ROOT/.payloads/REPLY_QUEUE/``
  (:mod:`.spill`).

Worker (``python -m ddmq.worker ROOT``, :mod:`.worker`):
- claims a task message, verifies it, runs its calls, publishes their
  outcomes to the task's reply queue, then acks the task; while a call runs
  its keeper thread (:mod:`.keeper`) extends the lease.

Collector thread (:mod:`.collector`, one per executor):
- receives the replies (``consume(auto_ack=True)``: only this executor
  reads them), verifies each result and settles its future; every
  :data:`~.collector.HOUSEKEEPING_INTERVAL` seconds requeues
  the expired leases of the task queue, has the local worker pool
  (:mod:`.pool`) replace workers that died, requeues at once the tasks of
  dead workers, local or elsewhere (:mod:`.deaths`), fails the futures of
  dead-lettered tasks (:class:`WorkerLostError`, saying how each worker
  died), and warns when nobody serves the queue (:mod:`.watchdog`).

With ``run="NAME"`` (:mod:`.attach`, :mod:`.runs`): ``submit``/``map`` first
look the calls up in ``ROOT/.runs/NAME/``; the reply queue is ``run-NAME``;
the collector writes each batch's outcomes to the run before it acks them.

``Future.cancel()`` deletes the task's message if no worker has claimed it.
``shutdown()`` waits for the unresolved futures, stops the local workers and
deletes the reply queue and the spill folder. Ctrl-C in a ``with`` block
does not wait (:mod:`.interrupt`). The executor's record in
``ROOT/.executors/`` (:mod:`.drivers`), written before the reply queue and
removed after it, tells the others that it is alive; what a dead executor
leaves is removed by :mod:`.reaper`.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import math
import os
import secrets
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal

from ..broker import Broker
from ..errors import DdmqError
from ..layout import check_queue_name
from ..root import check_root_path
from . import heartbeat, watchdog
from .attach import AttachedRun
from .collector import Collector
from .drivers import reply_queue_name
from .interrupt import exit_after_interrupt, stop_on_interrupt
from .errors import BrokenDDMQExecutor, TaskRejectedError, WorkerLostError
from .environment import EnvironmentCheck, versions
from .pickling import PickledOnce
from .pool import WORKER_STOP_TIMEOUT, LocalPool
from .publisher import Publisher
from .reaper import DriverUpkeep
from .callkeys import TaskKeys
from .options import check_options
from .secret import load_secret
from .spill import SpillStore
from .tasks import TaskFuture, TaskRecord, TaskTable, new_task
from .withdraw import withdraw_task

if TYPE_CHECKING:
    from ..slurm import SlurmWorkers
    from .slurm_pool import SlurmPool

__all__ = ["DDMQExecutor", "BrokenDDMQExecutor", "TaskRejectedError", "WorkerLostError"]

log = logging.getLogger(__name__)

#: ``map`` hands its chunks over to the publisher this many at a time (the
#: first ones need not wait for the last to be pickled), each group spread
#: over the workers as one bundle per worker where the tasks are quick.
MAP_HAND_OVER = 64


_executors: weakref.WeakSet[DDMQExecutor] = weakref.WeakSet()


class DDMQExecutor(Executor):
    """An Executor that runs calls in ddmq workers, local or on other nodes.

    ``root``: the ddmq root folder, on a filesystem the workers share (made,
    mode 0700, if missing); an empty path, None or a file raises
    :class:`~ddmq.errors.InvalidRootError` (a ``ValueError``) before anything
    on disk changes. ``max_workers``: local workers to start
    (``python -m ddmq.worker`` processes); None starts ``os.cpu_count()``;
    0 starts none and relies on workers started elsewhere on the same root
    and queue. ``queue``: the task queue. ``lease``: seconds a worker holds a
    task before it counts as lost; workers extend it while the task runs, so
    it bounds how long a dead worker's task waits, not how long a task may
    run. None (the default): the task queue's ``message_timeout`` setting
    (its ``ddmq.yaml``, else the root's; 60 s unless set), read when the
    executor starts; a number given here wins. A worker that dies is found
    sooner than its lease ends: a local one when it exits, one elsewhere when
    its heartbeat stops (15 s by default), and the tasks it held are run
    again then (:mod:`.deaths`). ``retries``: how many times a task is run
    again after its worker was lost, before its future fails with
    :class:`WorkerLostError`, which says how each of those workers died.
    ``priority``: of the task messages (lower first; None: the queue's
    setting). ``worker_args``: extra command-line arguments for the local
    workers. ``start_timeout``: seconds to wait for the local workers to be
    ready (0: do not wait); raises :class:`BrokenDDMQExecutor` if they fail.

    The function and arguments of a call are pickled with cloudpickle, so
    lambdas, closures and functions of ``__main__`` work; the modules they use
    must be importable by the workers. Local workers get the caller's
    ``sys.path`` in their ``PYTHONPATH``.

    **Workers on Slurm.** ``workers=SlurmWorkers(...)`` (usually with
    ``max_workers=0``) submits the workers as one Slurm job array when the
    executor starts, with this interpreter and ``PYTHONPATH`` unless the
    SlurmWorkers say otherwise; with ``jobs=(min, max)`` it adds jobs while
    tasks wait (their workers end when idle); ``shutdown`` cancels them (see
    :mod:`.slurm_pool`). If Slurm is not there or sbatch refuses, the
    executor shuts down and the constructor raises that
    :class:`~ddmq.slurm.SlurmError`. A worker whose job ends badly is
    explained in the error of a task it ran (e.g. ``OUT_OF_MEMORY`` with the
    memory limit). ``task_duration``: seconds one call is expected to take
    at most, a hint for workers in Slurm jobs, which start a task only if it
    fits before their job ends (without it they judge by the function's last
    calls; see :mod:`.walltime_guard`). Tasks also carry this process's
    Python and cloudpickle versions: a worker that cannot unpickle a task
    says which differ, and a live worker on another version gets a
    :class:`~.environment.EnvironmentWarning` once.

    **Nobody serving the queue.** With ``max_workers=0``, when tasks have
    waited :data:`~.watchdog.NO_WORKER_WARN_AFTER` (30) seconds and no live
    worker serves the queue, a :class:`~.watchdog.NoWorkerWarning` says so
    once (with the command that starts a worker), and again when workers
    appear. A ``result(timeout)`` or ``map(timeout=)`` that times out raises
    :class:`~.errors.ResultTimeoutError`, a ``concurrent.futures.TimeoutError``
    that says how many tasks wait, run and are done, and how many workers
    are live.

    **Ctrl-C.** A KeyboardInterrupt that leaves a ``with`` block (or ends
    the program) stops this executor's work in a few seconds instead of
    waiting for it: one line on stderr says so, waiting tasks are cancelled
    (their messages deleted), local workers give their running tasks back and
    exit, tasks running on other workers are dropped by those workers once
    they see this executor gone, and the reply queue and spill folder are
    deleted; then the KeyboardInterrupt propagates as usual (see
    :mod:`.interrupt`). If the driver dies instead (SIGKILL, a second Ctrl-C,
    its node crashes), what it leaves is removed by the next housekeeping of
    another executor, a worker or ``ddmq clean``, and its queued tasks are
    dropped instead of run (see :mod:`.reaper`).

    **Named runs.** ``run="NAME"`` keeps the outcome of every call (its
    value or exception) in ``ROOT/.runs/NAME/``, so that the script started
    again (after SIGKILL, a reboot, Ctrl-C) picks up where it stopped:
    ``map`` and ``submit`` return the outcomes the run holds without running
    those calls (a failure raises again, unless ``retry_failed=True``), wait
    for the calls a dead driver of the run left waiting or running rather
    than publish them again, and publish only the rest. A call is known by
    its function (module, name, code) and its arguments; ``map(...,
    key=fn)`` and :meth:`submit_with_key` name it instead. One driver at a
    time: a second raises :class:`~.errors.RunInUseError` naming the first.
    Replies go to the run's queue ``run-NAME``, which stays after shutdown
    while tasks of the run may still be out (see :mod:`.attach`); ``ddmq
    runs`` lists and removes runs.
    """

    def __init__(self, root: str | os.PathLike, max_workers: int | None = None, *,
                 queue: str = "tasks", lease: float | None = None, retries: int = 2,
                 priority: int | None = None, worker_args: Iterable[str] = (),
                 start_timeout: float = 60.0, workers: SlurmWorkers | None = None,
                 task_duration: float | None = None, run: str | None = None,
                 retry_failed: bool = False):
        max_workers = check_options(max_workers, lease, retries, priority, task_duration, workers,
                                    run, retry_failed)
        check_queue_name(queue)
        root = check_root_path(root)  # before anything on disk: "" is not the current folder
        setup = Broker(root, create=True)
        setup.create_queue(queue)
        setup.close()
        # create=False from here on: a deleted queue is an error, never re-made.
        self._broker = Broker(root)
        self.root = self._broker.root
        self.queue = queue
        self.max_workers = max_workers
        if lease is None:  # the queue's setting (its ddmq.yaml, else the root's, else 60 s)
            lease = float(self._broker.get_settings(queue)["message_timeout"])
        self.lease = int(math.ceil(lease))
        self.retries = retries
        self.priority = priority
        self._secret = load_secret(self.root, create=True)
        self._token = secrets.token_hex(4)
        self.reply_queue = reply_queue_name(self._token)  # reply-HOST-PID-TOKEN
        # A named run: outcomes kept in the root, replies in run-NAME (see .attach).
        self._run = None if run is None else AttachedRun(self.root, run, self._secret, retry_failed)
        if self._run is not None:
            self.reply_queue = self._run.reply_queue
        self._spills = SpillStore(self.root)
        self._tasks = TaskTable(self._spills)  # the tasks whose futures are unresolved
        self._counter = itertools.count(1)
        self._submit_lock = threading.Lock()  # _shutdown, _broken, publishing
        # What result(timeout) raises when the time is up (see .watchdog).
        self._timed_out = functools.partial(watchdog.timeout_error, self)
        self._map_lock = threading.Lock()     # _mapping
        self._mapping = 0  # map calls publishing their chunks
        self._collect_now = threading.Event()  # clear while _mapping (see collector.MAP_PAUSE_MAX)
        self._collect_now.set()
        self._shutdown = False
        self._abandon = False
        self._broken: str | None = None
        self._pool = LocalPool(self.root, queue, [str(arg) for arg in worker_args])
        self._slurm: SlurmPool | None = None  # the worker jobs of workers=SlurmWorkers(...)
        if workers is not None:
            from . import slurm_pool  # Slurm only when asked for
            self._slurm = slurm_pool.SlurmPool(workers, self.root, queue, worker_args=list(self._pool.worker_args))
        self._environment = EnvironmentCheck(self.root)  # warns of workers on other versions
        # Advisory fields of every task envelope (unsigned; see walltime_guard, environment).
        self._task_advice: dict[str, Any] = {"env": versions()}
        if task_duration is not None:
            self._task_advice["duration"] = float(task_duration)
        self._collector: Collector | None = None
        # Publishes the tasks, those of a burst together (see .publisher).
        self._publisher = Publisher(self._token, self._broker, queue, self._tasks, dict(
            priority=priority, timeout=self.lease, requeue=True, requeue_limit=retries),
            lambda: watchdog.serving_workers(self))
        # Its record, beaten by the collector, tells others it is alive (see reaper).
        self._upkeep = DriverUpkeep(self._broker, self._spills, self.reply_queue, queue)
        try:
            if self._run is not None:
                self._run.open(self._broker, queue)  # RunInUseError if another driver has it
            self._upkeep.start()  # before the reply queue: never a queue without a record
            self._broker.create_queue(self.reply_queue)
            self._spills.create(self.reply_queue)
            try:
                self._spills.prune(self._broker.list_queues())
            except (OSError, DdmqError) as err:
                log.debug("cannot prune old spill folders: %s", err)
            self._publisher.start()
            self._pool.start(max_workers)
            if self._slurm is not None:
                self._slurm.start()  # a SlurmError ends the executor here, and is raised
            self._collector = Collector(self)
            if self._run is not None:
                self._run.resume(self, self._collector)  # what a dead driver of the run left
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

        Raises RuntimeError after shutdown, BrokenDDMQExecutor when broken.
        If ``fn`` or an argument cannot be pickled, the returned future has
        already failed with ``pickle.PicklingError``. A lone task is published
        before this returns; in a burst, the executor's publisher thread
        publishes it together with the others submitted meanwhile in one
        message (see :mod:`.publisher`); if that fails, the future fails with
        the broker's error. In a run, a call whose outcome the run
        holds is not run: its future is already done (see ``run=``).
        """
        return self._submit_call(fn, args, kwargs, None)

    def submit_with_key(self, key: Any, fn: Callable[..., Any], /, *args: Any,
                        **kwargs: Any) -> Future:
        """``submit(fn, *args, **kwargs)``, the call known in the run by
        ``key`` (a str, bytes, int, float, bool, None or a tuple of them)
        instead of by its pickled arguments: for arguments whose pickle is not
        stable. Without a run, the key is not used."""
        return self._submit_call(fn, args, kwargs, None if self._run is None else [key])

    def _submit_call(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any], explicit: list[Any] | None) -> Future:
        keys = None
        if self._run is not None:
            self._check_open()
            plan = self._run.plan(fn, [args], [kwargs] if kwargs else None, explicit)
            if plan.sources is not None:  # in the run, or in a task of its last driver
                return plan.future()
            keys = plan.task_keys(0, 1)
        item = self._prepare(fn, [args], [kwargs] if kwargs else None, True, keys)
        if isinstance(item, tuple):
            self._hand_over([item])
            return item[0].future
        return item

    def _prepare(self, fn: Callable[..., Any], arglists: list[tuple[Any, ...]],
                 kwargs: list[dict[str, Any]] | None, single: bool,
                 keys: TaskKeys | None = None, sent: Any = None
                 ) -> tuple[TaskRecord, dict[str, Any]] | TaskFuture:
        """A new task of this executor (see :func:`.tasks.new_task`), for :meth:`_hand_over`."""
        self._check_open()
        task_id = f"{self._token}.{next(self._counter)}"
        return new_task(TaskFuture(task_id, self._withdraw, self._timed_out), fn, arglists,
                        kwargs, single, keys, sent, self._secret, self.reply_queue,
                        self._spills, self._task_advice)

    def _hand_over(self, items: list[tuple[TaskRecord, dict[str, Any]]]) -> None:
        """Put prepared tasks in the task table and have them published."""
        with self._submit_lock:
            # In the table before they are published, for the quickest reply to find them.
            for task, _ in items:
                self._tasks.add(task)
            try:
                self._check_open()
            except BaseException:
                for task, _ in items:
                    self._tasks.forget(task)  # and their spill files
                raise
            mine = self._publisher.put(items)
        if mine:
            self._publisher.publish_here(items)

    def _check_open(self) -> None:
        if self._broken:
            raise BrokenDDMQExecutor(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, key: Callable[..., Any] | None = None) -> Iterator[Any]:
        """Return an iterator of ``fn(*args)`` for the ``args`` of
        ``zip(*iterables)``, in order, yielded as each becomes available.

        All calls are submitted at once, ``chunksize`` calls per message
        (None, the default: about ``len / (4 * workers)`` as
        ``multiprocessing.Pool.map`` does, counting the local workers, else
        the live workers of the queue). The iterator raises the first call's
        exception where its result would be, and ``TimeoutError`` if a result
        is not ready ``timeout`` seconds after this call; calls not yet
        started are then cancelled.

        In a run (``run=``), only the calls whose outcome the run does not
        hold are published (and counted for ``chunksize``); ``key``: a
        function of the same arguments as ``fn`` returning each call's key
        in the run (see :meth:`submit_with_key`), for arguments whose pickle
        is not stable.
        """
        if chunksize is not None and (type(chunksize) is not int or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        calls = list(zip(*iterables))
        plan = None
        if self._run is not None:
            self._check_open()
            plan = self._run.plan(fn, calls, None, None if key is None else
                                  [key(*args) for args in calls], iterables)
            calls = plan.arglists  # those to publish (see .attach)
        if chunksize is None:
            chunksize = watchdog.map_chunksize(self, len(calls))
        futures: list[TaskFuture] = []
        with self._map_lock:
            self._mapping += 1
            self._collect_now.clear()
        sent = PickledOnce.of(fn) if len(calls) > chunksize else None  # once for all chunks
        items: list[tuple[TaskRecord, dict[str, Any]]] = []
        try:
            for start in range(0, len(calls), chunksize):
                item = self._prepare(fn, calls[start:start + chunksize], None, single=False,
                                     keys=None if plan is None else
                                     plan.task_keys(start, start + chunksize), sent=sent)
                if isinstance(item, tuple):
                    items.append(item)
                    item = item[0].future
                futures.append(item)
                if len(items) == MAP_HAND_OVER:
                    batch, items = items, []  # _hand_over releases their spill files if it fails
                    self._hand_over(batch)
            if items:
                batch, items = items, []
                self._hand_over(batch)
        except BaseException:
            for _, doc in items:  # prepared, never handed over
                self._spills.discard(doc, self.reply_queue)
            for future in futures:
                future.cancel()
            raise
        finally:
            with self._map_lock:
                self._mapping -= 1
                if not self._mapping:
                    self._collect_now.set()
        del calls
        if plan is not None and plan.sources is not None:
            return plan.results(futures, chunksize, end_time)
        return _results(futures, end_time)

    def workers(self) -> tuple[list[heartbeat.WorkerRecord], list[heartbeat.WorkerRecord]]:
        """(live, lost) workers of this executor's queue, from their heartbeats."""
        return heartbeat.list_workers(self.root, self.queue)

    # --- cancel and shutdown -------------------------------------------------------

    def _withdraw(self, task_id: str) -> bool:
        """Delete the message of a task no worker has claimed; True if done."""
        return withdraw_task(self._broker, self.queue, self._tasks, self._publisher, task_id)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; later ``submit`` raises RuntimeError.

        ``cancel_futures``: cancel the tasks no worker has started. ``wait``:
        return only when every unresolved future is done and the local
        workers have stopped; else this happens in the background. The reply
        queue is deleted at the end. Safe to call more than once.
        """
        with self._submit_lock:
            self._shutdown = True
        if self._run is not None:
            self._run.release(self._tasks)  # a dead driver's tasks nobody asked for run on
        if cancel_futures:
            for task in self._tasks.tasks():
                task.future.cancel()
        collector = self._collector
        if collector is None:
            self._cleanup()
            return
        collector.wake()
        if wait and collector is not threading.current_thread():
            collector.join()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        """Leaving a ``with`` block: ``shutdown(wait=True)``; after Ctrl-C (a
        KeyboardInterrupt), the work is stopped first, without waiting for the
        running tasks (see :mod:`.interrupt`). Exceptions propagate."""
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            stop_on_interrupt(self)
        self.shutdown(wait=True)
        return False

    def _at_exit(self) -> None:
        """At interpreter exit: like ``shutdown(wait=True)`` if local workers
        can finish the unresolved tasks; otherwise cancel what is waiting and
        drop the results of what is running elsewhere. After an uncaught
        Ctrl-C, stop the work at once (see :mod:`.interrupt`)."""
        if self._collector is None or not self._collector.is_alive():
            return
        if exit_after_interrupt(self):
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
        self._publisher.stop()
        self._pool.stop(1.0 if self._abandon else WORKER_STOP_TIMEOUT)
        if self._slurm is not None:
            self._slurm.stop()  # scancel: the workers give back what they run
        # A run's reply queue stays while tasks of the run may be out (see .attach).
        keep = self._run is not None and self._run.close(
            bool(len(self._tasks)) or self._abandon or self._broken is not None)
        self._upkeep.end(keep_queue=keep)
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
