"""A ddmq worker: runs the tasks that :class:`ddmq.executor.DDMQExecutor` publishes.

Start one per core, on any machine that shares the root's filesystem::

    python -m ddmq.worker ROOT [--queue tasks] [--max-tasks N] [--idle-timeout S]
                               [--heartbeat S] [--grace S] [-v]

The data flow of one task (every arrow is a call of the broker's public API)::

    ROOT/tasks/                  worker (main thread)              ROOT/reply-HOST-PID-X/
    -----------                  --------------------              ----------------------
    PRIO.QNUM.ddmqID --consume-->  check the signature (envelope)
       (work/EXPIRY.PRIO...)         bad: reject (-> tasks/dead/)  --[refusal]---------->
                                     good: unpickle, call
                                   publish the outcomes  ----------[result, ...]-------->
    work file  <--------ack-------  (then ack: the task is done)

    keeper thread (ddmq.executor.keeper): extends the running task's lease,
    rewrites ROOT/.workers/HOST.PID.json, gives back what waits behind a
    slow task, ends the grace period.

A worker claims one task message at a time, or a batch of them while its
tasks are quick (:data:`MAX_BATCH`, :data:`QUICK_TASK`); the results of a
batch share one reply message per reply queue (a reply body is a list of
envelopes) and their acks one call. The tasks of a batch that would wait
behind a slow one are given back for other workers
(:data:`~ddmq.executor.bundle.HOARD_SECONDS`). Large results go to the
executor's spill folder (:mod:`ddmq.executor.spill`).

A worker that dies (SIGKILL, node crash) is noticed by the executor in
seconds (:mod:`ddmq.executor.deaths`): a local one when it exits, one
elsewhere when its heartbeat stops; the tasks it held (their work names end
with its claimer tag, which its heartbeat record gives) are requeued then,
and other workers run them. Failing that, the housekeeping of any executor
or worker on the queue requeues them when their leases expire. A task that
keeps killing its workers is dead-lettered after its requeue limit (the
executor's ``retries``) and its future fails, saying how each worker died.

SIGTERM or SIGINT: the worker stops taking tasks; a running task may finish
within ``--grace`` seconds, else it is given back to the queue (``nack``) for
another worker. A second signal gives it back at once. Either way the worker
removes its heartbeat record and exits 0.

In a Slurm job the worker knows when the job ends (``DDMQ_JOB_END_TIME``),
starts only the tasks that fit before then, drains (takes no new task) at
``--drain-margin`` seconds before the end or on SIGUSR1, and gives back what
it still runs ``--idle-margin`` seconds before the end, uncounted: see
:mod:`ddmq.executor.walltime_guard`. Idle, it looks at its queue every
``poll_max`` seconds, or every :data:`LOCAL_POLL_MAX` on a local filesystem
where a folder watch sees every message arrive.

A task whose executor is gone (its reply queue deleted: shut down, Ctrl-C;
or the executor dead) is acked without running it, and one that runs when
its executor goes is stopped (:mod:`ddmq.executor.reaper`, which uses
``SIGURG``). On a full filesystem, results that cannot be published, and
tasks that cannot be given back, are tried again as space returns, for up
to ``retry_timeout``.

Tasks run in the worker's own process, in its main thread, one at a time, so
they can use signals and anything else a script's main thread can. Workers
must be able to import what the tasks import: run them in the same
environment (virtualenv, modules, ``PYTHONPATH``) as the code that submits.

The command line, ``python -m ddmq.worker``, is :mod:`ddmq.executor.worker_cli`.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
import threading
import time
from typing import Any

from ..backoff import Backoff, wait_until
from ..broker import Broker
from ..errors import DdmqError, QueueNotFoundError
from ..layout import HOST, check_queue_name
from ..root import check_root_path
from ..message import Message
from ..reuse import filesystem_type
from . import heartbeat as heartbeat_records
from .envelope import (Failure, Task, check_task, dump_result, echo_keys, failure,
                       load_task)
from .errors import PayloadMissingError, SignatureError
from .environment import unpickling_note
from .keeper import KEEPER_TICK, Keeper, RunningTask
from .reaper import OrphanTasks, TaskDropped
from .secret import load_secret
from .spill import SpillStore
from .walltime_guard import Walltime, WorkerWalltime, job_end
from .answers import Answer, Answers
from .bundle import HOARD_SECONDS, Bundle

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: Pause (s) after a filesystem error before the worker looks at the queue again.
ERROR_PAUSE_MAX = 30.0
#: Most task messages a worker claims at once. It claims more than one only
#: while its tasks are quick (see QUICK_TASK), so that slow tasks stay spread
#: over all workers; quick ones then cost fewer file operations each, as their
#: results share one reply message and their acks one call.
MAX_BATCH = 16
#: Filesystems whose every change goes through this node's kernel, so that a
#: folder watch (inotify) sees each message arrive: there an idle worker looks
#: at its queue only every LOCAL_POLL_MAX seconds (a look costs CPU; 64 idle
#: workers looking every second would use 2 % of a core), elsewhere (NFS,
#: Lustre, GlusterFS: messages from other nodes are not seen) every
#: ``poll_max`` (the queue's setting, 1 s by default).
LOCAL_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs",
                               "zfs", "overlay"})
LOCAL_POLL_MAX = 10.0
#: Seconds a task may take on average for its worker to keep claiming batches.
QUICK_TASK = 0.005


def _reply_of(envelopes: list[Any]) -> str:
    """The reply queue of a bundle's tasks (the first envelope's)."""
    reply = envelopes[0].get("reply") if envelopes and isinstance(envelopes[0], dict) else None
    return reply if isinstance(reply, str) else ""


class _Stop(Exception):
    """Raised by the signal handler to leave an idle wait at once."""


class Worker:
    """Consumes task messages of ``queue`` under ``root`` and runs them.

    ``max_tasks``: exit after that many task messages (a chunk of ``map`` is
    one). ``idle_timeout``: exit after that many seconds without a task.
    ``heartbeat``: seconds between heartbeat records. ``grace``: seconds a
    running task may go on after SIGTERM/SIGINT before it is given back.
    ``parent``: stop when the process with that pid is no longer this
    worker's parent (the executor that started it died). ``drain_margin``,
    ``idle_margin``: in a Slurm job, seconds before the job's end at which
    the worker stops claiming tasks, and gives back what it still runs (see
    :mod:`ddmq.executor.walltime_guard`; None: the defaults there).

    Creates the root (mode 0700), the queue and the root's secret if missing.
    """

    def __init__(self, root: str | os.PathLike, queue: str = "tasks", *,
                 max_tasks: int | None = None, idle_timeout: float | None = None,
                 heartbeat: float = heartbeat_records.DEFAULT_INTERVAL, grace: float = 30.0,
                 parent: int | None = None, drain_margin: float | None = None,
                 idle_margin: float | None = None):
        check_queue_name(queue)
        root = check_root_path(root)  # "" is not the current folder
        setup = Broker(root, create=True)
        setup.create_queue(queue)
        setup.close()
        self.broker = Broker(root)  # create=False: never re-creates a deleted reply queue
        self.root = self.broker.root
        self.queue = queue
        self.secret = load_secret(self.root, create=True)
        self.max_tasks = max_tasks
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.parent = parent
        self.name = f"{HOST}:{os.getpid()}"
        self.tasks_done = 0
        self._heartbeat = heartbeat_records.Heartbeat(self.root, queue, heartbeat)
        self._spills = SpillStore(self.root)
        self._keeper = Keeper(self)
        self._orphans = OrphanTasks(self)  # tasks whose executor is gone are dropped
        # Shared with the keeper thread, under _lock: the running task (and
        # the lease of its message), the batch's tasks not started, and the
        # answers of those that ran, not sent yet.
        self._lock = threading.Lock()
        self._running: RunningTask | None = None
        self._queued: list[Bundle] = []  # the batch's messages after the running task's
        self._bundle: Bundle | None = None  # the message of the running task (see .bundle)
        self._answers = Answers(self)
        # Set by the signal handler, which takes no locks (it may interrupt
        # the thread that holds one); read by the main and keeper threads.
        self._stopping = False
        self._stop_reason = ""
        self._stop_deadline = math.inf
        self._interruptible = False
        self._batch = 1  # task messages to claim at once (see MAX_BATCH)
        self._last_run = 0.0  # seconds the calls of the last task took (see HOARD_SECONDS)
        # In a Slurm job: when it ends, which tasks still fit, the drain (SIGUSR1).
        self._walltime = WorkerWalltime(self, Walltime(job_end(), drain_margin=drain_margin,
                                                       idle_margin=idle_margin))
        self._sees_all: bool | None = None  # inotify sees every change of the queue (see _poll_max)

    # --- the main loop ------------------------------------------------------------

    def run(self) -> int:
        """Serve the queue until stopped; returns the exit status (0 when
        stopped by a signal, by ``max_tasks`` or by ``idle_timeout``)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGUSR1, self._on_drain)
        try:
            heartbeat_records.prune_lost(self.root)
        except (OSError, DdmqError) as err:
            log.debug("cannot prune old heartbeat records: %s", err)
        self._heartbeat.beat("idle", None, 0)
        self._keeper.start()
        log.info("worker %s serving queue %s of %s", self.name, self.queue, self.root)
        status = 0
        try:
            status = self._serve()
        finally:
            self._keeper.finish()
            self._heartbeat.remove()
            self.broker.close()
        log.info("worker %s exits after %d task(s)%s", self.name, self.tasks_done,
                 f" ({self._stop_reason})" if self._stop_reason else "")
        return status

    def _serve(self) -> int:
        while True:
            if self._stopping:
                return 0
            if self.max_tasks is not None and self.tasks_done >= self.max_tasks:
                self._stop_reason = f"--max-tasks {self.max_tasks} reached"
                return 0
            batch = self._batch
            if self.max_tasks is not None:
                batch = min(batch, self.max_tasks - self.tasks_done)
            try:
                msgs = self._next_messages(batch)
            except _Stop:
                return 0
            except QueueNotFoundError:
                log.error("queue %s was deleted from %s: stopping", self.queue, self.root)
                return 1
            if not msgs:
                self._stop_reason = (self._walltime.stop_reason()
                                     or f"idle for --idle-timeout {self.idle_timeout} s")
                return 0
            self._run_batch(msgs)

    def _next_messages(self, n: int) -> list[Message]:
        """Claim up to ``n`` task messages; [] after ``idle_timeout`` s (or
        at the drain point of the worker's Slurm job, see :mod:`.walltime_guard`).

        Waits like ``consume(wait=...)`` (inotify where it works, else
        polling with back-off up to the queue's ``poll_max``), but so that a
        signal ends the wait at once: the handler raises :class:`_Stop` only
        inside the wait itself (``sleep``), never while a message is being
        claimed, so no claimed message is dropped. After a filesystem error
        the next look comes after a longer pause (up to :data:`ERROR_PAUSE_MAX`).
        """
        timeout = self._walltime.wait_limit(self.idle_timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        errors = Backoff(0.1, ERROR_PAUSE_MAX)

        def sleep(pause: float) -> None:
            self._interruptible = True
            try:
                if self._stopping:
                    raise _Stop
                self.broker.wait_for_messages(self.queue, pause)
            finally:
                self._interruptible = False

        def attempt() -> list[Message]:
            # The broker's watch, whose events name the new files: a claim
            # then needs no listing (see ddmq.listing).
            self.broker.watch(self.queue)
            try:
                got = self.broker.consume(self.queue, n=n)
            except QueueNotFoundError:
                raise
            except DdmqError as err:  # the filesystem is unwell; it may recover
                pause = errors.next()
                log.warning("cannot consume from %s: %s; trying again in %.1f s",
                            self.queue, err, pause)
                sleep(pause if deadline is None else min(pause, deadline - time.monotonic()))
                return []
            return got if isinstance(got, list) else [got] if got is not None else []

        # Where the watch sees every new file, a pause ends at the first one:
        # short pauses would only be wake-ups for nothing.
        first = self._poll_max() if self._sees_all else 0.001
        return wait_until(attempt, timeout, first=first, most=self._poll_max, sleep=sleep)

    def _poll_max(self) -> float:
        most = float(self.broker.get_settings(self.queue)["poll_max"])
        if self._sees_all is None:  # asked once: the root does not move
            self._sees_all = (filesystem_type(self.root) in LOCAL_FILESYSTEMS
                              and self.broker.watch(self.queue))
        return max(most, LOCAL_POLL_MAX) if self._sees_all else most

    def _run_batch(self, msgs: list[Message]) -> None:
        """Run claimed task messages one after the other (each task of a
        bundle, see :mod:`.bundle`), then send their results (one reply
        message per reply queue) and ack them.

        Tasks not yet started are given back when the worker is asked to
        stop, when they would wait too long behind a slow one (so that other
        workers take them: a batch is claimed only after quick tasks, see
        MAX_BATCH and HOARD_SECONDS; the keeper gives the whole messages
        back while the slow one runs), when the batch has taken a third of a
        lease (only the running task's lease is extended), or at
        ``max_tasks``: whole messages by a nack, the rest of a bundle as a
        new message (:meth:`_hand_back`). The keeper sends the results gathered so far
        when a task of the batch turns out slow, so they do not wait for it."""
        started = time.monotonic()
        ran = 0
        self._last_run = 0.0
        bundles = [Bundle(msg) for msg in msgs]
        left = sum(len(bundle) for bundle in bundles)  # tasks not started
        for index, bundle in enumerate(bundles):
            if bundle.given_back:  # by the keeper, behind a slow task (so are all after it)
                continue
            checked = self._check_bundle(bundle)
            if checked is None:  # refused, or its executor is gone
                left -= len(bundle)
                continue
            while not bundle.done():
                doc = bundle.envelopes[bundle.next]
                elapsed = time.monotonic() - started
                if ((ran or bundle.started)
                        and (self._stopping or self._last_run * left > HOARD_SECONDS
                             or elapsed > self._lease_of(bundle.msg) / 3
                             or (self.max_tasks is not None
                                 and self.tasks_done + ran >= self.max_tasks))
                        or not self._walltime.admits(doc)):  # would outlast the Slurm job
                    with self._lock:
                        self._queued = []
                        self._bundle = None
                    self._give_back(bundle, "(not started)")
                    for rest in bundles[index + 1:]:
                        if not rest.given_back:
                            self._nack(rest.msg, "(not started)")
                    self._finish_batch(started, ran, index + 1)
                    return
                with self._lock:  # the keeper gives these back too if the grace period ends
                    self._queued = [rest for rest in bundles[index + 1:] if not rest.given_back]
                    self._bundle = bundle
                    bundle.take()
                left -= 1
                answer = self._run_task(bundle.msg, doc, checked[bundle.next - 1],
                                        last=bundle.done())
                ran += 1
                if answer is not None:
                    self._answers.add(answer)
                    if answer.result is not None and "file" in answer.result:
                        # A large result: its executor may read it while the
                        # next task runs (one more reply file costs little beside it).
                        self._answers.send_unsent()
        with self._lock:
            self._bundle = None
        self._finish_batch(started, ran, len(bundles))

    def _finish_batch(self, started: float, ran: int, messages: int) -> None:
        self._answers.send_unsent()
        self.tasks_done += ran
        # Per message, not per task: a bundle of quick tasks is one slow message.
        average = (time.monotonic() - started) / max(1, messages)
        self._batch = min(MAX_BATCH, self._batch * 2) if average < QUICK_TASK else 1

    def _check_bundle(self, bundle: Bundle) -> list[Task | PayloadMissingError] | None:
        """The checked tasks of ``bundle`` (a PayloadMissingError for a task
        whose spill file is gone); None if the message is dealt with already:
        its executor is gone (acked, see :mod:`.reaper`), or a task of it
        failed verification (the message is dead-lettered and each task
        refused, none run: whoever wrote it is not to be trusted)."""
        if self._orphans.drop_if_orphan(bundle.msg):
            return None
        checked: list[Task | PayloadMissingError] = []
        for doc in bundle.envelopes:
            try:
                if len(bundle) > 1 and isinstance(doc, dict) and "file" in doc:
                    raise SignatureError("a task of a bundle has its payload in a file "
                                         "(bundles carry theirs inline)")
                checked.append(check_task(self.secret, doc, self.root))
            except SignatureError as err:
                self._answers.refuse(bundle.msg, bundle.envelopes, err)
                return None
            except PayloadMissingError as err:
                checked.append(err)
        return checked

    def _give_back(self, bundle: Bundle, why: str) -> None:
        """Give back the tasks of ``bundle`` not started: the message (a
        nack) if none ran, else the rest of the bundle as a new message."""
        if bundle.started:
            self._hand_back(bundle, bundle.next)
        else:
            self._nack(bundle.msg, why)

    def _hand_back(self, bundle: Bundle, start: int) -> None:
        """Publish the tasks of ``bundle`` from ``start`` on as a new message
        under its id, then have the bundle acked with the answers of those
        that ran (see :mod:`.bundle`). If that message cannot be published,
        the whole bundle is given back (those that ran may run again)."""
        msg = bundle.msg
        rest = bundle.rest(start)
        bundle.next = len(bundle)
        if rest:
            try:
                self.broker.publish(self.queue, rest[0] if len(rest) == 1 else rest,
                                    priority=msg.priority, timeout=msg.timeout,
                                    requeue=msg.requeue, requeue_limit=msg.requeue_limit,
                                    requeue_prio=msg.requeue_prio, msg_id=msg.id)
            except DdmqError as err:
                log.warning("cannot give back %d task(s) of message %s: %s; giving the whole "
                            "message back", len(rest), msg.id, err)
                self._nack(msg, "(not started)")
                return
        self._answers.add(Answer(msg, "(handed back)", _reply_of(bundle.envelopes), None))

    def _lease_of(self, msg: Message) -> float:
        return float(msg.timeout or self.broker.get_settings(self.queue)["message_timeout"])

    def _run_task(self, msg: Message, doc: Any, task: Task | PayloadMissingError,
                  last: bool = True) -> Answer | None:
        """Run one verified task of message ``msg`` (envelope ``doc``); its
        answer (``last``: the message is acked once it is sent), or None if
        it was dropped (then it is already dealt with)."""
        if isinstance(task, PayloadMissingError):
            self._answers.drop(doc, task)
            return Answer(msg, str(doc.get("task")), str(doc.get("reply")), None, last)
        running = RunningTask(msg, task.id, self._lease_of(msg))
        with self._lock:
            self._running = running
        if running.lease / 3 < KEEPER_TICK:
            self._keeper.wake()  # its next tick would come too late for this lease
        else:
            self._keeper.task_started()  # the record should say "running" soon
        began = time.monotonic()
        self._walltime.starting(doc)
        try:  # None: the keeper dropped it while it ran, its executor being gone
            outcome = self._orphans.run(msg, task.id, task.reply, lambda: call_task(
                task.id, task.payload, self.name, doc.get("env")))
        finally:
            self._last_run = time.monotonic() - began
            self._walltime.ran(doc, self._last_run)
            with self._lock:  # from here on the keeper no longer touches msg
                self._running = None
        if outcome is None:
            return None
        values, failures = outcome
        try:
            result = dump_result(self.secret, task.id, task.reply, self.name, values, failures,
                                 self._spills)
        except Exception as err:  # noqa: BLE001 (the executor must hear of it, whatever it is)
            error = pickle.PicklingError(f"on worker {self.name}, the outcome of task {task.id} "
                                         f"cannot be sent back: {type(err).__name__}: {err}")
            result = dump_result(self.secret, task.id, task.reply, self.name, None,
                                 [(None, error, None)])
        echo_keys(doc, result)  # a named run's call keys, for whichever driver reads it
        result["took"] = round(self._last_run, 6)  # a hint for the executor's publisher, unsigned
        if running.lease_lost:
            log.warning("task %s ran past a lost lease (another worker may run it again); "
                        "sending its result anyway: the executor keeps the first one", task.id)
        return Answer(msg, task.id, task.reply, result, last)

    def _nack(self, msg: Message, task: str) -> None:
        try:  # a hand-back is not a failed try; on a full disk, tried again as space returns
            self._answers.when_room(lambda: self.broker.nack(msg, requeue=True, count=False),
                            f"give task {task} back", [msg])
        except DdmqError as err:
            log.warning("cannot give task %s back: %s (it is requeued when its lease ends)", task, err)

    # --- stopping -------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        # No locks and no logging here: this may run while the main thread
        # holds one of their locks.
        if self._stopping:
            self._stop_deadline = 0.0  # second signal: give the running task back now
        else:
            self._stopping = True
            self._stop_reason = f"{signal.Signals(signum).name} received"
            self._stop_deadline = time.monotonic() + self.grace
        if self._interruptible:
            raise _Stop

    def _on_drain(self, signum: int, frame: Any) -> None:
        # SIGUSR1, forwarded by a Slurm job's batch shell before its time
        # limit: take no new task, finish the running one if it fits (see
        # walltime_guard). No locks, no logging, as in _on_signal.
        self._walltime.on_signal()
        if self._interruptible:
            raise _Stop

    def _give_back_and_exit(self, running: RunningTask) -> None:
        """Called by the keeper, holding ``_lock``, when the grace period is
        over: requeue the running task, answer those that ran, give back
        those not started, and exit 0 (the task's thread cannot be stopped,
        so the process ends here)."""
        log.warning("%s: giving task %s back to the queue and exiting",
                    self._stop_reason, running.task)
        bundle = self._bundle
        if running.lease_lost:
            pass
        elif bundle is not None and bundle.msg is running.msg and bundle.next > 1:
            self._hand_back(bundle, bundle.next - 1)  # the running task and those after it
        else:
            self._nack(running.msg, running.task)
        self._answers.send_unsent()
        for queued in self._queued:
            self._nack(queued.msg, "(not started)")
        self._heartbeat.remove()
        _flush_logs()
        os._exit(0)


def call_task(task: str, payload: bytes, worker: str, env: Any
              ) -> tuple[list[Any] | None, list[Failure]]:
    """Unpickle and make the calls of verified task ``task`` on ``worker``:
    (values, failures), as :func:`dump_result` takes them. A task that cannot
    be unpickled failed as a whole (values None); ``env``, its envelope's
    "env", names the versions that differ from the executor's, if it can."""
    try:
        fn, arglists, kwargs = load_task(payload)
    except Exception as err:
        note = unpickling_note(env)
        return None, [failure(None, err, f"while loading task {task} on worker {worker} "
                                         "(workers must be able to import what the task needs)"
                                         + (f"; {note}" if note else ""))]
    values: list[Any] = []
    failures: list[Failure] = []
    for index, args in enumerate(arglists):
        try:
            values.append(fn(*args) if kwargs is None else fn(*args, **kwargs[index]))
        except TaskDropped:  # the executor is gone: the rest of the calls are not made
            raise
        except BaseException as err:  # noqa: B036 (SystemExit of a task is its outcome)
            values.append(None)
            failures.append(failure(index, err, f"in task {task} on worker {worker}"))
    return values, failures


def _flush_logs() -> None:
    """Flush the root logger's handlers: os._exit skips what would."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 (exiting anyway)
            pass
