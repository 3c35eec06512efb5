"""A ddmq worker: runs the tasks that :class:`ddmq.executor.DDMQExecutor` publishes.

Start one per core, on any machine that shares the root's filesystem::

    python -m ddmq.worker ROOT [--queue tasks] [--max-tasks N] [--idle-timeout S]
                               [--heartbeat S] [--grace S] [-v]

The data flow of one task (every arrow is a call of the broker's public API)::

    ROOT/tasks/                  worker (main thread)              ROOT/reply-HOST-PID-X/
    -----------                  --------------------              ----------------------
    PRIO.QNUM.ddmqID --consume-->  check the signature
       (work/EXPIRY.PRIO...)         bad: reject (-> tasks/dead/)  --refusal------------>
                                     good: unpickle, run the calls
                                   publish the outcomes  ------------result------------->
    work file  <--------ack-------  (then ack: the task is done)

    keeper thread: every lease/3 s while a task runs, extend_lease (rename
    the work file to a later expiry), so a task longer than its lease is
    never handed to a second worker; every --heartbeat s, rewrite
    ROOT/.workers/HOST.PID.json (see ddmq.executor.heartbeat).

A worker that dies (SIGKILL, node crash) stops extending its lease; the
housekeeping of any executor or worker on the queue requeues the task once
the lease expires, and another worker runs it. A task that keeps killing its
workers is dead-lettered after its requeue limit (the executor's
``retries``) and its future fails.

SIGTERM or SIGINT: the worker stops taking tasks; a running task may finish
within ``--grace`` seconds, else it is given back to the queue (``nack``) for
another worker. A second signal gives it back at once. Either way the worker
removes its heartbeat record and exits 0.

Tasks run in the worker's own process, in its main thread, one at a time, so
they can use signals and anything else a script's main thread can. Workers
must be able to import what the tasks import: run them in the same
environment (virtualenv, modules, ``PYTHONPATH``) as the code that submits.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
from typing import Any, Sequence

from . import __version__
from .broker import Broker, check_queue_name
from .errors import DdmqError, InvalidNameError, LeaseLostError, QueueNotFoundError
from .executor import heartbeat as heartbeat_mod
from .executor.payload import (Failure, PayloadMissingError, SignatureError, check_task, discard,
                               dump_result, failure, load_secret, load_task, refusal, spill_folder)
from .message import Message
from .watch import FolderWatcher

log = logging.getLogger("ddmq.worker")

#: Longest pause (s) of the keeper thread between two looks at its duties.
KEEPER_TICK = 0.5
#: Pause (s) after a filesystem error before the worker looks at the queue again.
ERROR_PAUSE_MAX = 30.0
#: Most task messages a worker claims at once. It claims more than one only
#: while its tasks are quick (see QUICK_TASK), so that slow tasks stay spread
#: over all workers; quick ones then cost fewer file operations each, as their
#: results share one reply message and their acks one call.
MAX_BATCH = 16
#: Seconds a task may take on average for its worker to keep claiming batches.
QUICK_TASK = 0.005
#: When the tasks of a batch not started yet would take longer than this
#: (s) at the pace of the last one, the worker gives them back for other
#: workers (a requeue each: worth it only for that much work).
HOARD_SECONDS = 1.0


class _Stop(Exception):
    """Raised by the signal handler to leave an idle wait at once."""


class _Running:
    """The task being run: its message, lease and whether the lease was lost."""

    __slots__ = ("msg", "task", "lease", "next_extend", "lease_lost")

    def __init__(self, msg: Message, task: str, lease: float):
        self.msg = msg
        self.task = task
        self.lease = lease
        self.next_extend = time.monotonic() + lease / 3
        self.lease_lost = False


class _Answer:
    """A task that ran: its message, and the result envelope to send back."""

    __slots__ = ("msg", "task", "reply", "result", "spill")

    def __init__(self, msg: Message, task: str, reply: str, result: dict[str, Any], spill: str):
        self.msg, self.task, self.reply, self.result, self.spill = msg, task, reply, result, spill


class Worker:
    """Consumes task messages of ``queue`` under ``root`` and runs them.

    ``max_tasks``: exit after that many task messages (a chunk of ``map`` is
    one). ``idle_timeout``: exit after that many seconds without a task.
    ``heartbeat``: seconds between heartbeat records. ``grace``: seconds a
    running task may go on after SIGTERM/SIGINT before it is given back.
    ``parent``: stop when the process with that pid is no longer this
    worker's parent (the executor that started it died).

    Creates the root (mode 0700), the queue and the root's secret if missing.
    """

    def __init__(self, root: str | os.PathLike, queue: str = "tasks", *,
                 max_tasks: int | None = None, idle_timeout: float | None = None,
                 heartbeat: float = 10.0, grace: float = 30.0, parent: int | None = None):
        check_queue_name(queue)
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
        self.name = f"{heartbeat_mod.HOST}:{os.getpid()}"
        self.tasks_done = 0
        self._heartbeat = heartbeat_mod.Heartbeat(self.root, queue, heartbeat)
        self._watcher = FolderWatcher()
        self._lock = threading.Lock()        # guards _running and the lease of its message
        self._running: _Running | None = None
        self._wake = threading.Event()
        self._finished = False
        # Set by the signal handler, which takes no locks (it may interrupt
        # the thread that holds one); read by the main and keeper threads.
        self._stopping = False
        self._stop_reason = ""
        self._stop_deadline = math.inf
        self._interruptible = False
        self._batch = 1  # task messages to claim at once (see MAX_BATCH)
        self._last_run = 0.0  # seconds the calls of the last task took (see HOARD_SECONDS)
        self._queued: list[Message] = []  # claimed messages of the batch not started yet
        self._pending: list[_Answer] = []  # tasks of the batch that ran, not answered yet

    # --- the main loop ------------------------------------------------------------

    def run(self) -> int:
        """Serve the queue until stopped; returns the exit status (0 when
        stopped by a signal, by ``max_tasks`` or by ``idle_timeout``)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            heartbeat_mod.prune_lost(self.root)
        except (OSError, DdmqError) as err:
            log.debug("cannot prune old heartbeat records: %s", err)
        self._heartbeat.beat("idle", None, 0)
        keeper = threading.Thread(target=self._keep, name="ddmq-worker-keeper", daemon=True)
        keeper.start()
        log.info("worker %s serving queue %s of %s", self.name, self.queue, self.root)
        status = 0
        try:
            status = self._serve()
        finally:
            self._finished = True
            self._wake.set()
            keeper.join(timeout=5)
            self._heartbeat.remove()
            self._watcher.close()
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
                self._stop_reason = f"idle for --idle-timeout {self.idle_timeout} s"
                return 0
            self._process_batch(msgs)

    def _process_batch(self, msgs: list[Message]) -> None:
        """Run claimed task messages one after the other, then send their
        results (one reply message per reply queue) and ack them.

        Messages not yet started are given back when the worker is asked to
        stop, when they turn out slow (so that other workers take them: a
        batch is claimed only after quick tasks, see MAX_BATCH and HOARD_SECONDS),
        or when the batch has taken a third of a lease (only the running
        task's lease is extended). The keeper sends the results gathered so
        far when a task of the batch turns out slow, so they do not wait for it."""
        started = time.monotonic()
        ran = 0
        self._last_run = 0.0
        for index, msg in enumerate(msgs):
            elapsed = time.monotonic() - started
            if index and (self._stopping or self._last_run * (len(msgs) - index) > HOARD_SECONDS
                          or elapsed > self._lease_of(msg) / 3):
                with self._lock:
                    self._queued = []
                for rest in msgs[index:]:
                    self._nack(rest, "(not started)")
                break
            with self._lock:  # the keeper gives these back too if the grace period ends
                self._queued = msgs[index + 1:]
            answer = self._execute(msg)
            ran += 1
            if answer is not None:
                with self._lock:
                    self._pending.append(answer)
        self._send_pending()
        self.tasks_done += ran
        average = (time.monotonic() - started) / max(1, ran)
        self._batch = min(MAX_BATCH, self._batch * 2) if average < QUICK_TASK else 1

    def _lease_of(self, msg: Message) -> float:
        return float(msg.timeout or self.broker.get_settings(self.queue)["message_timeout"])

    def _next_messages(self, n: int) -> list[Message]:
        """Claim up to ``n`` task messages; [] after ``idle_timeout`` s.

        Waits like ``consume(wait=...)`` (inotify where it works, else
        polling with back-off), but so that a signal ends the wait at once:
        the handler raises :class:`_Stop` only inside the wait itself, never
        while a message is being claimed, so no claimed message is dropped.
        """
        folder = os.path.join(self.root, self.queue)
        deadline = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout
        pause = 0.001
        error_pause = 0.1
        while True:
            self._watcher.arm(folder)
            try:
                got = self.broker.consume(self.queue, n=n)
                msgs = got if isinstance(got, list) else [got] if got is not None else []
            except QueueNotFoundError:
                raise
            except DdmqError as err:  # the filesystem is unwell; it may recover
                log.warning("cannot consume from %s: %s; trying again in %.1f s",
                            self.queue, err, error_pause)
                msgs, pause, error_pause = [], error_pause, min(error_pause * 2, ERROR_PAUSE_MAX)
            if msgs:
                return msgs
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            timeout = pause if deadline is None else min(pause, deadline - now)
            self._interruptible = True
            try:
                if self._stopping:
                    raise _Stop
                self._watcher.wait(folder, timeout)
            finally:
                self._interruptible = False
            poll_max = float(self.broker.get_settings(self.queue)["poll_max"])
            pause = min(pause * 2, max(poll_max, 0.001))

    def _execute(self, msg: Message) -> _Answer | None:
        """Verify and run one task message; its answer, or None if it was
        refused or dropped (then it is already dealt with)."""
        doc = msg.message
        try:
            task, reply, payload = check_task(self.secret, doc, self.root)
        except SignatureError as err:
            self._refuse(msg, doc, err)
            return None
        except PayloadMissingError as err:
            self._drop(msg, doc, err)
            return None
        running = _Running(msg, task, self._lease_of(msg))
        with self._lock:
            self._running = running
        if running.lease / 3 < KEEPER_TICK:
            self._wake.set()  # the keeper's next tick would come too late for this lease
        began = time.monotonic()
        try:
            values, failures = self._run(task, payload)
        finally:
            self._last_run = time.monotonic() - began
            with self._lock:  # from here on the keeper no longer touches msg
                self._running = None
        spill = spill_folder(self.root, reply)
        try:
            result = dump_result(self.secret, task, reply, self.name, values, failures, spill)
        except Exception as err:  # noqa: BLE001 (the executor must hear of it, whatever it is)
            error = pickle.PicklingError(f"on worker {self.name}, the outcome of task {task} cannot "
                                         f"be sent back: {type(err).__name__}: {err}")
            result = dump_result(self.secret, task, reply, self.name, None, [(None, error, None)])
        if running.lease_lost:
            log.warning("task %s ran past a lost lease (another worker may run it again); "
                        "sending its result anyway: the executor keeps the first one", task)
        return _Answer(msg, task, reply, result, spill)

    def _send_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._answer(pending)

    def _answer(self, answers: list[_Answer]) -> None:
        """Publish the results (one message per reply queue), then ack their tasks."""
        by_reply: dict[str, list[_Answer]] = {}
        for answer in answers:
            by_reply.setdefault(answer.reply, []).append(answer)
        done: list[_Answer] = []
        for reply, group in by_reply.items():
            results = [a.result for a in group]
            try:
                self.broker.publish(reply, results if len(results) > 1 else results[0])
                done.extend(group)
                continue
            except QueueNotFoundError:
                log.info("reply queue %s is gone (its executor shut down): results of %d "
                         "task(s) dropped", reply, len(group))
                done.extend(group)
            except DdmqError as err:
                log.error("cannot publish results to %s: %s; giving %d task(s) back",
                          reply, err, len(group))
                for answer in group:
                    self._nack(answer.msg, answer.task)
            for answer in group:
                discard(answer.result, answer.spill)
        if not done:
            return
        try:
            self.broker.ack(self.queue, [a.msg.filename for a in done])
        except LeaseLostError as err:
            log.warning("lease already lost at ack (the task was requeued and may run again "
                        "elsewhere; the executor keeps the first result): %s", ", ".join(err.missing))
        except DdmqError as err:
            log.warning("cannot ack %d task(s): %s (they may run again; their duplicate "
                        "results will be ignored)", len(done), err)
        log.debug("done: tasks %s", ", ".join(a.task for a in done))

    def _run(self, task: str, payload: bytes) -> tuple[list[Any] | None, list[Failure]]:
        """Unpickle and run the calls of a verified task: (values, failures),
        as :func:`dump_result` takes them. A task that cannot be unpickled
        failed as a whole (values None)."""
        try:
            fn, arglists, kwargs = load_task(payload)
        except Exception as err:
            return None, [failure(None, err, f"while loading task {task} on worker {self.name} "
                                             "(workers must be able to import what the task needs)")]
        values: list[Any] = []
        failures: list[Failure] = []
        for index, args in enumerate(arglists):
            try:
                values.append(fn(*args) if kwargs is None else fn(*args, **kwargs[index]))
            except BaseException as err:  # noqa: B036 (SystemExit of a task is its outcome)
                values.append(None)
                failures.append(failure(index, err, f"in task {task} on worker {self.name}"))
        return values, failures

    def _refuse(self, msg: Message, doc: Any, err: SignatureError) -> None:
        """Dead-letter a task that failed verification and tell its executor."""
        task = doc.get("task") if isinstance(doc, dict) and isinstance(doc.get("task"), str) else "?"
        log.error("refused task %s (message %s): %s; dead-lettering it without unpickling it",
                  task, msg.id, err)
        try:
            dead = self.broker.reject(msg)
            where = f"{self.queue}/dead/{dead}"
        except DdmqError as reject_err:
            log.warning("cannot dead-letter message %s: %s", msg.id, reject_err)
            where = "(not dead-lettered)"
        reply = doc.get("reply") if isinstance(doc, dict) else None
        if task == "?" or not isinstance(reply, str):
            return
        try:
            check_queue_name(reply)
            self.broker.publish(reply, refusal(task, self.name, f"{err}; message {where}"))
        except (InvalidNameError, QueueNotFoundError):
            pass
        except DdmqError as pub_err:
            log.warning("cannot tell %s that task %s was refused: %s", reply, task, pub_err)

    def _drop(self, msg: Message, doc: dict[str, Any], err: PayloadMissingError) -> None:
        """A task whose payload file is gone is over (its executor has the
        result, or is gone): ack it, and tell the executor in case it waits."""
        log.warning("dropping task %s: %s", doc.get("task"), err)
        try:
            self.broker.ack(msg)
        except DdmqError:
            pass
        try:
            self.broker.publish(doc["reply"], refusal(doc["task"], self.name, str(err)))
        except DdmqError:
            pass

    def _nack(self, msg: Message, task: str) -> None:
        try:
            self.broker.nack(msg, requeue=True, count=False)  # a hand-back is not a failed try
        except DdmqError as err:
            log.warning("cannot give task %s back: %s (it is requeued when its lease ends)", task, err)

    # --- signals -------------------------------------------------------------------

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

    # --- the keeper thread ---------------------------------------------------------

    def _keep(self) -> None:
        """Extend the running task's lease, beat, enforce the grace period,
        and stop the worker when its parent is gone."""
        next_beat = time.monotonic() + self._heartbeat.interval
        told_grace = False
        while not self._finished:
            now = time.monotonic()
            with self._lock:
                running = self._running
                if running is not None and not running.lease_lost and now >= running.next_extend:
                    self._extend(running, now)
                if running is not None and self._stopping and now >= self._stop_deadline:
                    self._give_back_and_exit(running)
            if running is not None and self._pending:
                self._send_pending()  # the running task is slow: do not hold back earlier results
            if self._stopping and running is not None and not told_grace:
                told_grace = True
                log.warning("%s: task %s may run %.0f s more before it is given back",
                            self._stop_reason, running.task, max(0.0, self._stop_deadline - now))
            if now >= next_beat:
                state = "stopping" if self._stopping else ("running" if running else "idle")
                self._heartbeat.beat(state, running.task if running else None, self.tasks_done)
                next_beat = now + self._heartbeat.interval
            if self.parent is not None and not self._stopping and os.getppid() != self.parent:
                log.warning("the process that started this worker (pid %d) is gone: stopping",
                            self.parent)
                os.kill(os.getpid(), signal.SIGTERM)  # the same path as a SIGTERM from outside
            pause = min(KEEPER_TICK, max(0.0, next_beat - now))
            if running is not None and not running.lease_lost:
                pause = min(pause, max(0.0, running.next_extend - now))
            self._wake.wait(pause)
            self._wake.clear()

    def _extend(self, running: _Running, now: float) -> None:
        try:
            self.broker.extend_lease(running.msg, running.lease)
            running.next_extend = now + running.lease / 3
            log.debug("extended the lease of task %s by %.0f s", running.task, running.lease)
        except LeaseLostError as err:
            running.lease_lost = True
            log.warning("lost the lease of task %s while it runs (%s): another worker may "
                        "run it too", running.task, err)
        except DdmqError as err:
            running.next_extend = now + max(0.1, running.lease / 10)
            log.warning("cannot extend the lease of task %s: %s; trying again", running.task, err)

    def _give_back_and_exit(self, running: _Running) -> None:
        """The grace period is over: requeue the running task and exit 0
        (the task's thread cannot be stopped, so the process ends here)."""
        log.warning("%s: giving task %s back to the queue and exiting",
                    self._stop_reason, running.task)
        if not running.lease_lost:
            self._nack(running.msg, running.task)
        pending, self._pending = self._pending, []  # the caller holds self._lock
        self._answer(pending)
        for msg in self._queued:
            self._nack(msg, "(not started)")
        self._heartbeat.remove()
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 (exiting anyway)
                pass
        os._exit(0)


# --- command line ---------------------------------------------------------------------

def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddmq.worker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the tasks of DDMQExecutor that are published to a ddmq root.\n\n"
                    "Start one worker per core on every machine that shares the root's\n"
                    "filesystem, in the same Python environment as the code that submits\n"
                    "the tasks (workers must be able to import what the tasks import).",
        epilog="signals:\n"
               "  SIGTERM/SIGINT  stop taking tasks; the running task may finish within\n"
               "                  --grace seconds, else it goes back to the queue for another\n"
               "                  worker (a second signal: at once). The exit status is 0.\n\n"
               "examples:\n"
               "  python -m ddmq.worker ~/ddmq-root                  # serve queue 'tasks' until stopped\n"
               "  python -m ddmq.worker ~/ddmq-root --idle-timeout 600 -v\n"
               "  srun python -m ddmq.worker $ROOT --grace 60        # one per Slurm task\n\n"
               "The worker creates the root (mode 0700), the queue and the root's secret\n"
               "if they are missing, and keeps a heartbeat record in ROOT/.workers/.")
    parser.add_argument("root", metavar="ROOT", help="the ddmq root folder (shared by executor and workers)")
    parser.add_argument("--queue", "-q", default="tasks",
                        help="task queue to serve (default: %(default)s; must match the executor's queue=)")
    parser.add_argument("--max-tasks", type=_positive(int), metavar="N",
                        help="exit (status 0) after N task messages; a chunk of map() counts as one")
    parser.add_argument("--idle-timeout", type=_positive(float), metavar="S",
                        help="exit (status 0) after S seconds without a task (default: never)")
    parser.add_argument("--heartbeat", type=_positive(float), default=10.0, metavar="S",
                        help="seconds between heartbeat records; a worker silent for 3 of them "
                             "is listed as lost (default: %(default)s)")
    parser.add_argument("--grace", type=float, default=30.0, metavar="S",
                        help="seconds a running task may go on after SIGTERM/SIGINT before it is "
                             "given back to the queue (default: %(default)s)")
    parser.add_argument("--parent", type=int, metavar="PID",
                        help="stop as on SIGTERM when process PID, which started this worker, is "
                             "gone (DDMQExecutor passes this for the workers it starts)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v for each start and stop, -vv for every task")
    parser.add_argument("--version", action="version", version=f"ddmq {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ddmq.worker``; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format=f"%(asctime)s ddmq.worker[{heartbeat_mod.HOST}:{os.getpid()}] %(levelname)s: %(message)s")
    if args.grace < 0:
        log.error("--grace must be 0 or more")
        return 2
    try:
        worker = Worker(args.root, args.queue, max_tasks=args.max_tasks,
                        idle_timeout=args.idle_timeout, heartbeat=args.heartbeat,
                        grace=args.grace, parent=args.parent)
    except (DdmqError, OSError) as err:
        log.error("cannot start a worker on %s: %s", args.root, err)
        return 1
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
