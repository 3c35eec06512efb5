"""No silent hang: the executor says so when nobody serves its queue, and its time-outs say where things stand.

An executor with ``max_workers=0`` relies on workers started elsewhere; a
typo in ROOT or the queue name, or workers still pending in a batch queue,
would leave its tasks waiting with nothing said. So:

- :class:`Watchdog`, checked in each housekeeping round of the collector:
  when tasks have waited :data:`NO_WORKER_WARN_AFTER` seconds with no live
  worker on the queue (from the heartbeat records that
  :class:`~ddmq.executor.deaths.DeathWatch` scans), it warns once with
  :class:`NoWorkerWarning` (a ``warnings.warn``: printed on stderr with no
  logging set up), naming the root, the queue and the command that starts
  a worker; and again when workers appear.
- :func:`serving_workers`: how many workers share the executor's tasks,
  for ``map``'s chunk size and the publisher's bundles.
- :func:`timeout_error`: what ``Future.result(timeout)``, ``exception`` and
  ``map`` raise when the time is up, a
  :class:`~ddmq.executor.errors.ResultTimeoutError` (a
  ``concurrent.futures.TimeoutError``) that says how many of the executor's
  tasks wait, run and are done, and how many workers are live.
  (``concurrent.futures.as_completed`` raises its own TimeoutError, whose
  text this cannot change.)
"""

from __future__ import annotations

import logging
import shlex
import time
import warnings
from typing import TYPE_CHECKING

from ..errors import DdmqError
from . import heartbeat
from .errors import ResultTimeoutError

if TYPE_CHECKING:
    from .executor import DDMQExecutor

__all__ = ["NO_WORKER_WARN_AFTER", "NoWorkerWarning", "Watchdog", "serving_workers",
           "timeout_error"]

log = logging.getLogger(__name__)

#: Workers assumed to share the tasks when none can be seen (see serving_workers).
DEFAULT_WORKER_GUESS = 16

#: Seconds tasks may wait with no live worker on the queue before the user
#: is told (tests lower it).
NO_WORKER_WARN_AFTER = 30.0


class NoWorkerWarning(UserWarning):
    """Tasks wait, and no live worker serves the executor's queue (or,
    after that, workers appeared)."""


def worker_command(root: str, queue: str) -> str:
    """The command that starts a worker for ``queue`` of ``root``."""
    return f"python -m ddmq.worker {shlex.quote(root)} --queue {shlex.quote(queue)}"


class Watchdog:
    """Tells the user when tasks wait and nobody serves the queue (see the
    module docstring). Used by the collector thread only."""

    def __init__(self, root: str, queue: str):
        self.root = root
        self.queue = queue
        self._since: float | None = None  # time.monotonic() since tasks wait with no live worker
        self._warned = False

    def check(self, waiting: int, live: int) -> None:
        """``waiting`` unresolved tasks, ``live`` workers on the queue now."""
        now = time.monotonic()
        if not waiting:
            self._since = None
            return
        if live:
            self._since = None
            if self._warned:
                self._warned = False
                _warn(f"{live} worker(s) now serve queue {self.queue!r} of {self.root}; "
                      f"the {waiting} waiting task(s) can run")
            return
        if self._since is None:
            self._since = now
        elif not self._warned and now - self._since >= NO_WORKER_WARN_AFTER:
            self._warned = True
            _warn(f"{waiting} task(s) have waited {now - self._since:.0f} s and no worker "
                  f"serves queue {self.queue!r} of {self.root}. Start one (on any node that "
                  f"sees the root, in this Python environment) with: "
                  f"{worker_command(self.root, self.queue)}")


def _warn(text: str) -> None:
    # Shown as "ddmq:0: NoWorkerWarning: TEXT": the warning is about the
    # executor (whose collector thread runs no line of the caller's), and
    # not a line of ddmq's source either. Filters by category or module apply.
    warnings.warn_explicit(text, NoWorkerWarning, "ddmq", 0, module=__name__)


def serving_workers(executor: DDMQExecutor) -> int:
    """The workers that share ``executor``'s tasks (for map's chunk size and
    the publisher's bundles): its local workers, else the live workers of
    its queue (their heartbeats), else the Slurm workers it asked for, else
    :data:`DEFAULT_WORKER_GUESS`."""
    workers = executor.max_workers
    if not workers:
        try:
            workers = len(heartbeat.list_workers(executor.root, executor.queue)[0])
        except (OSError, DdmqError) as err:
            log.debug("cannot count the workers: %s", err)
        slurm = executor._slurm
        workers = workers or (slurm.expected_workers if slurm else 0) or DEFAULT_WORKER_GUESS
    return workers


def map_chunksize(executor: DDMQExecutor, n: int) -> int:
    """``map``'s default chunk size for ``n`` calls: about ``n / (4 *
    workers)``, as ``multiprocessing.Pool.map`` does (see :func:`serving_workers`)."""
    chunksize, extra = divmod(n, serving_workers(executor) * 4)
    return max(1, chunksize + (1 if extra else 0))


def timeout_error(executor: DDMQExecutor, timeout: float | None) -> ResultTimeoutError:
    """The error of a result not ready after ``timeout`` s: where the tasks of ``executor`` stand."""
    unresolved = len(executor._tasks)
    done = executor._tasks.settled
    seen = executor._collector.deaths.seen if executor._collector is not None else None
    if seen is None:  # no scan yet: read the records now
        try:
            live_records = heartbeat.list_workers(executor.root, executor.queue)[0]
        except (OSError, DdmqError):
            live_records = []
        seen = (len(live_records), frozenset(r.task for r in live_records if r.task))
    live, running_ids = seen
    running = sum(1 for task in executor._tasks.tasks() if task.id in running_ids)
    after = f" after {round(timeout, 1):g} s" if timeout is not None else ""
    text = (f"no result{after}: of this executor's tasks, {unresolved - running} wait in queue "
            f"{executor.queue!r}, {running} run and {done} are done; {live} worker(s) are live "
            f"on that queue of {executor.root}")
    if not live:
        text += f" (start one with: {worker_command(executor.root, executor.queue)})"
    return ResultTimeoutError(text)
