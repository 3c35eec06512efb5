"""A worker's walltime: which tasks still fit before its Slurm job ends, and when to give back what it holds.

A worker in a Slurm job knows when the job's time limit falls
(:func:`ddmq.slurm.job_end_time`: its job's script asked Slurm once, in
``DDMQ_JOB_END_TIME``). It plans its last minutes with two margins, both
worker options (``--drain-margin``, ``--idle-margin``) and
:class:`ddmq.slurm.SlurmWorkers` fields::

    job start ....... drain point ............ give-back point ..... END (time limit)
                      END - drain_margin       END - idle_margin
    claims tasks      claims nothing more;      what it still runs goes back to
    that fit          the batch's tasks not     the queue (nack, count=False: no
                      started go back; the      retry used up); the worker exits 0,
                      running one finishes      and the job ends COMPLETED
                      if it fits

- A task *fits* if its expected duration ends before the give-back point.
  The expected duration of a call is the caller's hint (``DDMQExecutor(...,
  task_duration=S)``, sent in the task envelope) or else the longest of the
  last :data:`DURATIONS_KEPT` calls of the same function on this worker
  (:class:`Durations`), times the calls of the task (a ``map`` chunk holds
  several). A task of a function this worker never ran fits while the drain
  point is ahead.
- A task that does not fit is given back before it starts, and the worker
  drains at once: time left only shrinks, and the message would otherwise
  come straight back to it. Another job, with time left, takes it.
- ``drain_margin`` defaults to :func:`ddmq.slurm.walltime.drain_margin` of
  the time the worker had when it started (120 s, at most a quarter of it,
  at least 10 s); Slurm's ``--signal=B:USR1@MARGIN`` asks the same moment,
  and the batch shell forwards that SIGUSR1 to the workers: a worker that
  gets it drains then, whichever comes first, and asks Slurm afresh when the
  job ends (an administrator may have moved the limit). Without a known end
  (a SIGUSR1 sent by hand), the running task gets ``--grace`` seconds.
- ``idle_margin`` (default :data:`DEFAULT_IDLE_MARGIN`, at most half the
  drain margin) is the end of the job kept free of tasks: enough for a
  nack before Slurm's SIGTERM at the limit (which Slurm's once-a-minute
  check never sends early).

A task cut anyway (the node's clock was wrong, the task ran far longer than
its record) is given back by the SIGTERM of the limit like any other: not
counted as a failed attempt. Outside a Slurm job (no end), nothing here
changes what the worker does.

Everything here is plain arithmetic on times given to it (:class:`Walltime`),
so that the decisions are tested without a Slurm.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from typing import Any, Deque

__all__ = ["DEFAULT_IDLE_MARGIN", "DURATIONS_KEPT", "Durations", "Walltime", "WorkerWalltime",
           "task_cost", "job_end"]

log = logging.getLogger(__name__)

#: Seconds before the job's end at which a worker gives back what it holds, by default.
DEFAULT_IDLE_MARGIN = 10.0
#: Calls of each function whose durations a worker keeps.
DURATIONS_KEPT = 5
#: Functions whose durations a worker keeps (the oldest is forgotten beyond).
FUNCTIONS_KEPT = 256


class Durations:
    """The seconds the last few calls of each function took on this worker."""

    def __init__(self, kept: int = DURATIONS_KEPT):
        self._kept = kept
        self._by_fn: collections.OrderedDict[str, Deque[float]] = collections.OrderedDict()

    def add(self, fn: str, seconds_per_call: float) -> None:
        record = self._by_fn.get(fn)
        if record is None:
            record = self._by_fn[fn] = collections.deque(maxlen=self._kept)
            if len(self._by_fn) > FUNCTIONS_KEPT:
                self._by_fn.popitem(last=False)
        else:
            self._by_fn.move_to_end(fn)
        record.append(max(0.0, seconds_per_call))

    def per_call(self, fn: str) -> float | None:
        """The longest recent call of ``fn``; None if it never ran here."""
        record = self._by_fn.get(fn)
        return max(record) if record else None


def task_cost(doc: Any) -> tuple[str | None, int, float | None]:
    """(function name, number of calls, hinted seconds per call) of a task
    envelope, from its advisory fields (``fn``, ``calls``, ``duration``);
    what it does not say is None (calls: 1)."""
    if not isinstance(doc, dict):
        return None, 1, None
    fn = doc.get("fn")
    calls = doc.get("calls")
    hint = doc.get("duration")
    return (fn if isinstance(fn, str) and fn else None,
            calls if type(calls) is int and calls >= 1 else 1,
            float(hint) if isinstance(hint, (int, float)) and not isinstance(hint, bool)
            and math.isfinite(hint) and hint >= 0 else None)


class Walltime:
    """The end of a worker's job and its two margins (see the module docstring).

    ``end``: epoch seconds of the time limit (None: no limit known, and then
    every task fits and nothing drains by the clock). ``drain_margin``:
    None for the default, from the time left at ``now``. Times are epoch
    seconds (``time.time()``) throughout: the end comes from Slurm as such.
    """

    def __init__(self, end: float | None, *, drain_margin: float | None = None,
                 idle_margin: float | None = None, now: float | None = None):
        from ..slurm.walltime import drain_margin as default_drain_margin

        now = time.time() if now is None else now
        for name, value in (("drain_margin", drain_margin), ("idle_margin", idle_margin)):
            if value is not None and not (isinstance(value, (int, float)) and value >= 0
                                          and math.isfinite(value)):
                raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")
        self.end = end
        self.durations = Durations()
        self._drain_given = drain_margin
        self._idle_given = idle_margin
        left = None if end is None else max(0.0, end - now)
        self.drain_margin = float(drain_margin if drain_margin is not None
                                  else default_drain_margin(left))
        self.idle_margin = float(idle_margin if idle_margin is not None
                                 else min(DEFAULT_IDLE_MARGIN, self.drain_margin / 2))

    def __repr__(self) -> str:
        end = "none" if self.end is None else time.strftime("%H:%M:%S", time.localtime(self.end))
        return f"<Walltime end={end} drain_margin={self.drain_margin:g} idle_margin={self.idle_margin:g}>"

    # --- the two points ---------------------------------------------------------------

    @property
    def drain_at(self) -> float | None:
        """When the worker stops claiming tasks (epoch seconds); None without an end."""
        return None if self.end is None else self.end - self.drain_margin

    @property
    def give_back_at(self) -> float | None:
        """When the worker gives back what it still runs; None without an end."""
        return None if self.end is None else self.end - self.idle_margin

    def draining(self, now: float | None = None) -> bool:
        """True once the drain point has passed."""
        at = self.drain_at
        return at is not None and (time.time() if now is None else now) >= at

    def seconds_to_drain(self, now: float | None = None) -> float | None:
        """Seconds until the drain point (0 once passed); None without an end."""
        at = self.drain_at
        return None if at is None else max(0.0, at - (time.time() if now is None else now))

    # --- tasks ----------------------------------------------------------------------

    def expected(self, doc: Any) -> float | None:
        """Seconds the task of envelope ``doc`` is expected to take: the
        hint, else this worker's record of its function; None if unknown."""
        fn, calls, hint = task_cost(doc)
        per_call = hint if hint is not None else self.durations.per_call(fn) if fn else None
        return None if per_call is None else per_call * calls

    def fits(self, doc: Any, now: float | None = None) -> bool:
        """True if the task of envelope ``doc`` may start now: no end is
        known, or its expected duration ends before the give-back point, or
        (unknown duration) the drain point is still ahead."""
        if self.end is None:
            return True
        now = time.time() if now is None else now
        expected = self.expected(doc)
        if expected is None:
            return not self.draining(now)
        give_back_at = self.give_back_at
        return give_back_at is not None and now + expected <= give_back_at

    def ran(self, doc: Any, seconds: float) -> None:
        """Note that the task of envelope ``doc`` took ``seconds``."""
        fn, calls, _ = task_cost(doc)
        if fn:
            self.durations.add(fn, seconds / calls)

    def stop_deadline(self, now: float, started: float | None, expected: float | None,
                      grace: float) -> float:
        """When (epoch seconds) a worker that starts draining at ``now`` gives
        back the task it runs (``started`` then, ``expected`` to take so
        long; None if unknown): at the give-back point, or at once if it is
        expected to run past it; ``grace`` seconds from now without an end."""
        give_back_at = self.give_back_at
        if give_back_at is None:
            return now + grace
        if started is not None and expected is not None and started + expected > give_back_at:
            return now
        return max(now, give_back_at)

    def refreshed(self, end: float | None) -> None:
        """The job's end as Slurm says it now (after SIGUSR1); a default drain
        margin stays what it was."""
        if end is not None:
            self.end = end


# --- a worker's walltime duties ------------------------------------------------------------

def _monotonic(epoch: float) -> float:
    """``time.monotonic()`` at epoch second ``epoch`` (a worker's deadlines are monotonic)."""
    return time.monotonic() + (epoch - time.time())


def job_end() -> float | None:
    """The end of this process's Slurm job (None outside one, or if Slurm
    cannot say: the worker then runs as if it had no limit)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    from ..slurm import SlurmError, job_end_time
    try:
        return job_end_time()
    except SlurmError as err:
        log.warning("cannot learn when this Slurm job ends (%s): running as if it had no "
                    "time limit (SIGUSR1 still drains)", err)
        return None


class WorkerWalltime:
    """The walltime duties of one worker (see the module docstring), called
    from its main thread (:meth:`wait_limit`, :meth:`admits`,
    :meth:`starting`, :meth:`ran`), its keeper thread (:meth:`tick`) and its
    SIGUSR1 handler (:meth:`on_signal`, which takes no lock and logs nothing).

    It acts on the worker's stop state (``_stopping``, ``_stop_reason``,
    ``_stop_deadline``) as a signal does, so the worker's one way of
    stopping (give back the batch, let the running task finish until the
    deadline, then give it back and exit 0) serves the drain too.
    """

    def __init__(self, worker: Any, walltime: Walltime):
        self.worker = worker
        self.walltime = walltime
        self._signalled = False  # SIGUSR1 came: ask Slurm afresh when the job ends
        self._current: tuple[float, float | None] | None = None  # (started, expected) of the running task

    # main thread ---------------------------------------------------------------------

    def wait_limit(self, idle_timeout: float | None) -> float | None:
        """How long an idle worker may wait for a task: ``idle_timeout``,
        but no later than the drain point."""
        left = self.walltime.seconds_to_drain()
        if left is None:
            return idle_timeout
        return left if idle_timeout is None else min(idle_timeout, left)

    def stop_reason(self) -> str | None:
        """Why an idle worker stops, if its job's time is up (else None)."""
        if self.walltime.draining():
            return (f"its Slurm job ends in {max(0.0, self.walltime.end - time.time()):.0f} s "  # type: ignore[operator]
                    f"(--drain-margin {self.walltime.drain_margin:g}): drained")
        return None

    def admits(self, doc: Any) -> bool:
        """True if the task of envelope ``doc`` may start; if not, the worker
        drains (the caller gives the task back, not counted)."""
        walltime = self.walltime
        if walltime.fits(doc):
            return True
        expected = walltime.expected(doc)
        left = (walltime.end or 0) - time.time()
        fn, _, _ = task_cost(doc)
        reason = (f"task {doc.get('task') if isinstance(doc, dict) else '?'} ({fn or '?'}) would not "
                  f"finish before its Slurm job ends in {left:.0f} s"
                  + (f" (it takes about {expected:.0f} s here)" if expected is not None else "")
                  + ": given back, and the worker drains")
        self._drain(reason, time.time())  # logs the reason
        return False

    def starting(self, doc: Any) -> None:
        self._current = (time.time(), self.walltime.expected(doc))

    def ran(self, doc: Any, seconds: float) -> None:
        self._current = None
        self.walltime.ran(doc, seconds)

    # signal handler --------------------------------------------------------------------

    def on_signal(self) -> None:
        """SIGUSR1: drain now. No lock, no logging (see Worker._on_signal)."""
        self._signalled = True
        worker = self.worker
        if not worker._stopping:
            now = time.time()
            started, expected = self._current or (None, None)
            worker._stop_reason = "SIGUSR1 received (the Slurm job's time limit is near): draining"
            worker._stop_deadline = _monotonic(
                self.walltime.stop_deadline(now, started, expected, worker.grace))
            worker._stopping = True

    # keeper thread ---------------------------------------------------------------------

    def tick(self) -> float | None:
        """The keeper's look: drain at the drain point, ask Slurm afresh
        after SIGUSR1, and never let a task run past the give-back point.
        Returns seconds until the next thing to do here (None: nothing)."""
        walltime = self.walltime
        if self._signalled:
            self._signalled = False
            self._refresh()
        if walltime.end is None:
            return None
        worker = self.worker
        now = time.time()
        if not worker._stopping and walltime.draining(now):
            self._drain(f"its Slurm job ends in {walltime.end - now:.0f} s "
                        f"(--drain-margin {walltime.drain_margin:g}): draining", now)
        if worker._stopping:
            give_back = _monotonic(walltime.give_back_at)  # type: ignore[arg-type]
            if give_back < worker._stop_deadline:
                worker._stop_deadline = give_back
            return None
        return walltime.seconds_to_drain(now)

    def _drain(self, reason: str, now: float) -> None:
        worker = self.worker
        with worker._lock:
            if worker._stopping:
                return
            started, expected = self._current or (None, None)
            worker._stop_reason = reason
            worker._stop_deadline = _monotonic(
                self.walltime.stop_deadline(now, started, expected, worker.grace))
            worker._stopping = True
        if self._current is not None:
            log.warning("%s; the running task may go on %.0f s", reason,
                        max(0.0, worker._stop_deadline - time.monotonic()))
        else:
            log.info("%s", reason)

    def _refresh(self) -> None:
        """Ask Slurm when the job ends now, and move the deadline if it moved."""
        if not os.environ.get("SLURM_JOB_ID"):
            return
        from ..slurm import SlurmError, job_end_time
        try:
            end = job_end_time(fresh=True)
        except SlurmError as err:
            log.warning("cannot ask Slurm when this job ends (%s): keeping %s", err,
                        self.walltime)
            return
        if end is not None and end != self.walltime.end:
            log.info("the Slurm job now ends at %s (was %s)", time.strftime("%H:%M:%S", time.localtime(end)),
                     "unknown" if self.walltime.end is None
                     else time.strftime("%H:%M:%S", time.localtime(self.walltime.end)))
            self.walltime.refreshed(end)
            worker = self.worker
            if worker._stopping:
                started, expected = self._current or (None, None)
                worker._stop_deadline = _monotonic(
                    self.walltime.stop_deadline(time.time(), started, expected, worker.grace))
