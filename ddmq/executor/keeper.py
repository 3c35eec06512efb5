"""The worker's keeper thread: what must go on while a task runs in the main thread.

Tasks run in the worker's main thread, which cannot look up while they do,
so a second thread, the keeper, ticks at most every :data:`KEEPER_TICK`
seconds and:

- extends the running task's lease every lease/3 s (``Broker.extend_lease``
  renames the work file to a later expiry), so a task longer than its lease
  is never handed to a second worker; a lease found lost is logged, and the
  task's result is still sent (the executor keeps the first one);
- sends the answers of the batch's earlier tasks when the running task is
  slow, so that they do not wait for it, and gives back the messages claimed
  with it and not started once they would wait longer than
  :data:`~ddmq.executor.bundle.HOARD_SECONDS` at its pace so far (a worker
  that just ran quick tasks claims a batch; without this, the slow tasks
  among them would wait for the first to end, their leases not extended,
  while other workers sit idle);
- keeps the heartbeat record current (:meth:`Heartbeat.keep
  <ddmq.executor.heartbeat.Heartbeat.keep>`): rewritten when the worker's
  state or task changed (coalesced, at most one rewrite a second), its time
  refreshed every ``--heartbeat`` s;
- when the worker was told to stop and its grace period is over, gives the
  running task (and the batch's tasks not started) back to the queue and
  ends the process (:meth:`Worker._give_back_and_exit`);
- stops the worker as a SIGTERM would when the process that started it
  (``--parent``) is gone;
- in a Slurm job, starts the drain at the job's drain point and never lets
  a task run past its give-back point (:mod:`ddmq.executor.walltime_guard`);
- drops the running task when its executor went away (shut down, Ctrl-C,
  dead): acks it and stops its call (:class:`ddmq.executor.reaper.OrphanTasks`).

It shares the worker's lock, which guards the running task and its lease.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from ..errors import DdmqError, LeaseLostError
from ..message import Message
from .bundle import HOARD_SECONDS, Bundle
from .heartbeat import STATE_SPACING

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

#: Longest pause (s) of the keeper thread between two looks at its duties.
KEEPER_TICK = 0.5
#: ... while the worker is idle and its record says so (it looks then only to keep
#: the record fresh, and for its parent): an idle worker costs less CPU. The main
#: thread wakes the keeper when a task starts.
KEEPER_IDLE_TICK = 5.0
#: A running task is not judged slow before it has run this long (s), however
#: many tasks wait behind it: a pause of the whole process (a busy machine, a
#: garbage collection) would otherwise give back a batch of bundles of quick
#: tasks (thousands of them) for nothing.
SLOW_AFTER = 0.1


class RunningTask:
    """The task the worker's main thread runs: its message, its lease, and
    whether the lease was lost. Changed under the worker's lock."""

    __slots__ = ("msg", "task", "lease", "began", "next_extend", "lease_lost")

    def __init__(self, msg: Message, task: str, lease: float):
        self.msg = msg
        self.task = task
        self.lease = lease
        self.began = time.monotonic()
        self.next_extend = self.began + lease / 3
        self.lease_lost = False


class Keeper(threading.Thread):
    """The keeper thread of ``worker`` (see the module docstring)."""

    def __init__(self, worker: Worker):
        super().__init__(name="ddmq-worker-keeper", daemon=True)
        self._worker = worker
        self._wake = threading.Event()
        self.dozing = False  # in a long idle pause (see KEEPER_IDLE_TICK)
        self._next_nudge = 0.0  # see task_started
        self._finished = False
        self._told_grace = False  # the grace period was announced

    def wake(self) -> None:
        """Look at the duties now (a new task's lease may need extending sooner than the next tick)."""
        self._wake.set()

    def task_started(self) -> None:
        """The main thread started a task: if the keeper dozes, wake it so the
        record says "running" soon, but at most once per STATE_SPACING (the
        record is not rewritten more often anyway). Waking the keeper for
        every quick task made each task wait on a thread switch. A woken
        keeper does not doze again within that STATE_SPACING (see _tick), so
        a task started meanwhile is still looked at within KEEPER_TICK."""
        now = time.monotonic()
        if self.dozing and now >= self._next_nudge:
            self._next_nudge = now + STATE_SPACING
            self._wake.set()

    def finish(self) -> None:
        """End the thread (the worker is exiting) and wait a moment for it."""
        self._finished = True
        self._wake.set()
        self.join(timeout=5)

    def run(self) -> None:
        # Signals for the worker go to its main thread: one the kernel hands to
        # this thread sets Python's flag, but does not wake a main thread asleep
        # in a task (time.sleep), so its handler would wait for the task to end.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM,
                                                  signal.SIGUSR1, signal.SIGURG})
        while not self._finished:
            try:
                pause = self._tick()
            except Exception:  # noqa: BLE001 (a keeper that dies leaves leases to expire)
                log.exception("the keeper thread of worker %s failed a round of its duties; "
                              "going on", self._worker.name)
                pause = KEEPER_TICK
            self._wake.wait(pause)
            self._wake.clear()

    def _tick(self) -> float:
        """One round of the keeper's duties; the seconds to pause before the next."""
        worker = self._worker
        beat = worker._heartbeat
        to_drain = worker._walltime.tick()  # in a Slurm job: drain in time (see walltime_guard)
        worker._orphans.tick()  # the running task's executor went away: drop it (see reaper)
        now = time.monotonic()
        with worker._lock:
            running = worker._running
            if running is not None and not running.lease_lost and now >= running.next_extend:
                self._extend(running, now)
            if running is not None and worker._stopping and now >= worker._stop_deadline:
                worker._give_back_and_exit(running)
            held = self._release_held(running, now) if running and not worker._stopping else []
        for bundle in held:  # outside the lock: the running task may end meanwhile
            worker._nack(bundle.msg, "(not started)")
        if running is not None and worker._answers.any_unsent():
            worker._answers.send_unsent()  # the running task is slow: do not hold back earlier results
        if worker._stopping and running is not None and not self._told_grace:
            self._told_grace = True
            log.warning("%s: task %s may run %.0f s more before it is given back",
                        worker._stop_reason, running.task,
                        max(0.0, worker._stop_deadline - now))
        # Every tick: a change of state or task is written within a second or so.
        state = "stopping" if worker._stopping else ("running" if running else "idle")
        next_beat = now + beat.keep(state, running.task if running else None, worker.tasks_done)
        if (worker.parent is not None and not worker._stopping
                and os.getppid() != worker.parent):
            log.warning("the process that started this worker (pid %d) is gone: stopping",
                        worker.parent)
            os.kill(os.getpid(), signal.SIGTERM)  # the same path as a SIGTERM from outside
        tick = KEEPER_TICK
        written = beat._written
        # Idle, and the record says so: doze (the main thread wakes the keeper
        # when a task starts, at most once per STATE_SPACING: not within that of a wake-up).
        self.dozing = (running is None and not worker._stopping and written is not None
                       and written[:2] == (state, None) and now >= self._next_nudge)
        if self.dozing and worker._running is not None:
            # A task started since the look above, and its thread may have seen
            # dozing still False (it sets _running, then reads dozing): stay awake.
            self.dozing = False
        if self.dozing:
            tick = KEEPER_IDLE_TICK if to_drain is None else min(KEEPER_IDLE_TICK, to_drain)
        pause = min(tick, max(0.0, next_beat - now))
        if running is not None and not running.lease_lost:
            pause = min(pause, max(0.0, running.next_extend - now))
        return pause

    def _release_held(self, running: RunningTask, now: float) -> list[Bundle]:
        """Called holding the worker's lock while ``running`` runs: once the
        messages claimed with it and not started would wait longer than
        HOARD_SECONDS at its pace so far, they are marked given back and
        returned, for the caller to nack (the main thread skips them).

        The rest of the running task's own bundle stays (see :mod:`.bundle`):
        it could only go back as a new message while the bundle, claimed for
        the running task, holds it too, and a crash of this worker would then
        run it twice. A bundle holds only tasks expected to be quick."""
        worker = self._worker
        waiting = sum(len(queued) for queued in worker._queued)
        elapsed = now - running.began
        if not waiting or elapsed < SLOW_AFTER or elapsed * waiting <= HOARD_SECONDS:
            return []
        held, worker._queued = worker._queued, []
        log.info("task %s is slow: giving back the %d message(s) claimed with it",
                 running.task, len(held))
        for queued in held:
            queued.given_back = True
        return held

    def _extend(self, running: RunningTask, now: float) -> None:
        try:
            self._worker.broker.extend_lease(running.msg, running.lease)
            running.next_extend = now + running.lease / 3
            log.debug("extended the lease of task %s by %.0f s", running.task, running.lease)
        except LeaseLostError as err:
            running.lease_lost = True
            log.warning("lost the lease of task %s while it runs (%s): another worker may "
                        "run it too", running.task, err)
        except DdmqError as err:
            running.next_extend = now + max(0.1, running.lease / 10)
            log.warning("cannot extend the lease of task %s: %s; trying again", running.task, err)
