"""Dead workers, noticed in seconds: their tasks run again at once, and a task given up says how each worker died.

A worker that dies holding tasks would otherwise keep them until their
leases end (60 s by default). The executor finds it dead sooner, in its
collector's housekeeping round (every couple of seconds), one of two ways::

    local worker (its child)                    worker elsewhere (or not its child)
    LocalPool.mind: waitpid gives its           DeathWatch.scan: its record in ROOT/.workers/
    exit status (killed by SIGKILL,             was not refreshed for LOST_AFTER intervals
    exit status 3, ...)                         (15 s by default), or its pid is gone (same host)
            |                                              |
            v                                              v
    DeathWatch.local_exit(pid, status)  ---->  _bury(record, cause)
                                                 Broker.requeue_claims(queue, record.claimer):
                                                   every message whose work name ends with the
                                                   dead worker's claimer tag is requeued now
                                                 each one's message id -> our TaskRecord:
                                                   task.deaths += "worker HOST:PID <cause>"
                                                 local: mark_ended(record, cause), so that
                                                   ``ddmq workers`` says it too

A requeue by ``requeue_claims`` counts as an attempt: past the task's
requeue limit (the executor's ``retries``) the message is dead-lettered
instead, and the collector's dead-letter scan, which comes next in the same
round, fails the future with :func:`lost_error`: a WorkerLostError with one
line per attempt, each saying how that worker ended as far as it is known
(a signal by name with what usually sends it, an exit status, or when and
where it stopped sending heartbeats).

What a scan costs the file server: one listing of ``ROOT/.workers/`` and a
``stat`` per record per round, made only while the executor has unresolved
tasks; a record is read again only when it was rewritten (a new inode: its
worker's state changed) or, once lost, refreshed.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import time
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ..errors import DdmqError
from ..layout import HOST, message_id
from .errors import WorkerLostError
from .heartbeat import (LOST_AFTER, WorkerRecord, heartbeat_dir, judge, mark_ended, read_record,
                        record_path)

if TYPE_CHECKING:
    from ..broker import Broker
    from .tasks import TaskRecord, TaskTable

__all__ = ["exit_cause", "heartbeat_cause", "record_cause", "lost_error", "DeathWatch"]

log = logging.getLogger(__name__)

#: What usually sends a signal that kills a worker, for the error a user reads.
SIGNAL_HINTS = {
    signal.SIGKILL: "the kernel's out-of-memory killer and batch systems' memory limits send "
                    "SIGKILL: check the task's memory use",
    signal.SIGSEGV: "a segmentation fault: a crash in compiled code, e.g. an extension module "
                    "or ctypes",
    signal.SIGBUS: "a bus error: e.g. a memory-mapped file that was truncated, or /dev/shm full",
    signal.SIGABRT: "abort(): a fatal error or failed assertion in compiled code",
    signal.SIGFPE: "an arithmetic error in compiled code (e.g. an integer division by zero)",
    signal.SIGILL: "an illegal instruction: compiled code built for another CPU",
    signal.SIGXCPU: "its CPU time limit (ulimit -t, or a batch system's) was reached",
}


def exit_cause(status: int) -> str:
    """How a process ended, from its exit status as ``Popen.returncode``
    gives it (-N: killed by signal N): "was killed by SIGKILL (...)",
    "ended with exit status 3"."""
    if status >= 0:
        return f"ended with exit status {status}"
    try:
        sig = signal.Signals(-status)
    except ValueError:
        return f"was killed by signal {-status}"
    hint = SIGNAL_HINTS.get(sig)
    return f"was killed by {sig.name}" + (f" ({hint})" if hint else "")


def heartbeat_cause(record: WorkerRecord) -> str:
    """How a lost worker with no known end was found lost, from its record."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.last_seen))
    # Lost although it beat lately: its pid is gone (see heartbeat.judge).
    gone = ": its process is gone" if record.age <= LOST_AFTER * record.interval else ""
    return f"stopped sending heartbeats at {when} on {record.host}{gone}"


def record_cause(record: WorkerRecord) -> str | None:
    """How the worker of ``record`` ended, as far as it is known; None while it is live."""
    if record.cause:
        return record.cause
    return heartbeat_cause(record) if record.lost else None


def lost_error(task: TaskRecord, attempts: int, lease: float, retries: int,
               where: str) -> WorkerLostError:
    """The error of a task dead-lettered after ``attempts`` attempts whose
    workers all died: one line per attempt, saying how each worker ended."""
    known = list(task.deaths)
    lines = [f"  attempt {n}: {cause}" for n, cause in enumerate(known, 1)]
    lines += [f"  attempt {n}: the worker was lost; its lease of {lease:g} s expired (how it "
              "ended is not known)" for n in range(len(known) + 1, attempts + 1)]
    return WorkerLostError(
        f"task {task.id} ({task.fn_name}) failed after {attempts} attempt(s): the worker running "
        f"it was lost each time, and retries={retries} were used up:\n" + "\n".join(lines)
        + f"\nits message is in {where}")


class DeathWatch:
    """Finds the dead workers of the executor's task ``queue`` and requeues
    the tasks they held at once (see the module docstring). Used by the
    collector thread only."""

    def __init__(self, broker: Broker, queue: str, tasks: TaskTable):
        self._broker = broker
        self._queue = queue
        self._tasks = tasks
        self._folder = heartbeat_dir(broker.root)
        self._records: dict[str, tuple[int, WorkerRecord]] = {}  # file name: (inode, record)
        self._buried: set[str] = set()  # claimer tags whose claims were requeued
        #: (live workers of the queue, task ids they run) at the last scan; None before it.
        self.seen: tuple[int, frozenset[str]] | None = None
        #: More about a death, e.g. how the worker's Slurm job ended: (a line to add to
        #: its cause or None, whether the requeue counts as a failed attempt). None: nothing.
        self.explain: Optional[Callable[[WorkerRecord], Tuple[Optional[str], bool]]] = None

    def local_exit(self, pid: int, status: int) -> None:
        """A local worker exited with ``status`` (not 0): requeue what it held."""
        path = record_path(self._broker.root, HOST, pid)
        record = read_record(path, self._broker.clock.now())
        if record is None:  # it died before it wrote its record: it had claimed nothing
            return
        cause = exit_cause(status)
        mark_ended(path, cause)
        self._bury(record, cause)

    def scan(self) -> None:
        """Look at the heartbeat records of the queue's workers: requeue the
        tasks of those found lost, and count the live ones (:attr:`seen`)."""
        now = self._broker.clock.now()
        live = 0
        running: set[str] = set()
        records: dict[str, tuple[int, WorkerRecord]] = {}
        try:
            entries = list(os.scandir(self._folder))
        except FileNotFoundError:
            entries = []
        except OSError as err:
            log.warning("cannot list the heartbeat records in %s: %s", self._folder, err)
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            known = self._records.get(entry.name)
            if known is not None and known[0] == st.st_ino and not (
                    known[1].lost and st.st_mtime != known[1].last_seen):
                record = known[1]
                judge(record, st.st_mtime, now)
            else:  # new, rewritten (its state changed), or lost and refreshed since
                fresh = read_record(entry.path, now)
                if fresh is None:
                    continue
                record = fresh
            records[entry.name] = (st.st_ino, record)
            if record.queue != self._queue:
                continue
            if not record.lost:
                live += 1
                if record.task:
                    running.add(record.task)
                self._buried.discard(record.claimer)  # back (or its pid reused): watch it again
            elif record.claimer and record.claimer not in self._buried:
                self._bury(record, record_cause(record) or "was lost")
        self._records = records
        self.seen = (live, frozenset(running))

    def _bury(self, record: WorkerRecord, cause: str) -> None:
        """Requeue now the messages the dead worker of ``record`` held, and
        note ``cause`` on our tasks among them."""
        if not record.claimer:
            return
        more, counts = self.explain(record) if self.explain is not None else (None, True)
        if more:
            cause = f"{cause}; {more}"
        try:
            names = self._broker.requeue_claims(self._queue, record.claimer, count=counts)
        except (DdmqError, ValueError) as err:
            log.warning("cannot requeue the tasks of lost worker %s:%d: %s", record.host,
                        record.pid, err)
            return  # tried again next round
        self._buried.add(record.claimer)
        who = f"worker {record.host}:{record.pid}"
        for name in names:
            msg_id = message_id(name)
            for task in self._tasks.of_message(msg_id) if msg_id and counts else ():
                task.deaths.append(f"{who} {cause}")  # an uncounted requeue is not an attempt
        if names:
            log.warning("%s %s; the %d task(s) it held are requeued now%s", who, cause, len(names),
                        "" if counts else " (no retry used up)")
