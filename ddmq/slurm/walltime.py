"""A worker's walltime: when its Slurm job ends, and how it is told to drain first.

The drain convention (what :mod:`.script` sets up, and what a worker may rely on):

- ddmq submits its jobs with ``--signal=B:USR1@MARGIN``: about ``MARGIN``
  seconds before the time limit (Slurm checks every minute or so, so it may
  come up to a minute early or late), Slurm sends SIGUSR1 to the batch
  shell, and to nothing else.
- The batch shell forwards :data:`FORWARDED_SIGNAL`, SIGUSR1, to every
  worker it started, which drains: it takes no new task, lets the running
  one finish if it fits before the job's end (less ``--idle-margin``), else
  gives it back to the queue (not counted as a failed attempt: it runs
  again in another job), and exits 0. The worker also drains by its own
  clock at ``END - --drain-margin``, whichever comes first, and before that
  starts only tasks that fit (see :mod:`ddmq.executor.walltime_guard`).
- At the limit itself, and on ``scancel``, Slurm sends SIGTERM, then SIGKILL
  ``KillWait`` seconds later. Who gets the SIGTERM depends on the cluster's
  ``ProctrackType``: with ``proctrack/cgroup`` (most clusters) the batch
  shell alone, which passes it on to its workers; with
  ``proctrack/linuxproc`` every process of the job, workers included, and the
  shell does not pass it on (a second SIGTERM would make the workers give
  their tasks back at once). Either way each worker gets one SIGTERM. The
  script passes ``--grace`` below ``KillWait``, so a worker gives its task
  back before it would be killed.

A worker that wants to plan (not start a task that will not finish in time)
calls :func:`job_end_time` at start (no Slurm call: its job's script asked
once and put the answer in :data:`END_TIME_VARIABLE`), and
``job_end_time(fresh=True)`` after SIGUSR1 (an administrator may have
changed the limit).
"""

from __future__ import annotations

import logging
import os

from .commands import run
from .formats import check_job_id, parse_timestamp

__all__ = ["DRAIN_SIGNAL", "FORWARDED_SIGNAL", "DEFAULT_DRAIN_MARGIN", "END_TIME_VARIABLE",
           "drain_margin", "worker_grace", "job_end_time"]

log = logging.getLogger(__name__)

#: What Slurm sends the batch shell ``MARGIN`` seconds before the time limit.
DRAIN_SIGNAL = "USR1"
#: What the batch shell sends its workers on :data:`DRAIN_SIGNAL` (the worker drains on it).
FORWARDED_SIGNAL = "USR1"
#: Seconds before the time limit at which workers start draining, by default.
DEFAULT_DRAIN_MARGIN = 120
#: Least drain margin: Slurm's own resolution is about a minute, so less means little.
MIN_DRAIN_MARGIN = 10
#: The worker's own default ``--grace`` (seconds a task may go on after SIGTERM).
WORKER_GRACE = 30


def drain_margin(time_limit: float | None, margin: float | None = None) -> int:
    """Seconds before the end at which to drain: ``margin`` if given, else
    :data:`DEFAULT_DRAIN_MARGIN`, but never more than a quarter of a known
    time limit, nor less than :data:`MIN_DRAIN_MARGIN`."""
    if margin is None:
        margin = DEFAULT_DRAIN_MARGIN
        if time_limit is not None:
            margin = min(margin, time_limit / 4)
    return max(MIN_DRAIN_MARGIN, int(margin))


def worker_grace(kill_wait: int) -> int:
    """The workers' ``--grace``: the worker's default, but short enough that a
    task is given back before Slurm's SIGKILL, ``kill_wait`` seconds after SIGTERM."""
    return max(1, min(WORKER_GRACE, kill_wait - 3))


#: Set by the batch script for its workers: the job's end, epoch seconds
#: (asked of Slurm once per job rather than once per worker).
END_TIME_VARIABLE = "DDMQ_JOB_END_TIME"


def _from_environment() -> float | None:
    for name in (END_TIME_VARIABLE, "SLURM_JOB_END_TIME"):  # the second: Slurm 23.02 and later
        value = os.environ.get(name, "")
        if value.isdigit():
            return float(value)
    return None


def job_end_time(job_id: str | None = None, *, fresh: bool = False) -> float | None:
    """Epoch seconds at which a Slurm job reaches its time limit.

    ``job_id``: by default the job this process runs in (``SLURM_JOB_ID``;
    an array task has its own); then the job's own script has asked Slurm
    once for all its workers (:data:`END_TIME_VARIABLE`), so that a thousand
    workers starting do not make a thousand calls. ``fresh=True`` (after
    SIGUSR1, say: an administrator may have moved the limit), or another
    ``job_id``, asks ``squeue -h -j ID -o %e``. Returns None outside a Slurm
    job and for a job without a time limit. Raises SlurmError if Slurm must
    be asked and cannot say."""
    if job_id is None:
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            return None
        known = _from_environment()
        if known is not None and not fresh:
            return known
    out = run(["squeue", "-h", "-j", check_job_id(job_id), "-o", "%e"])
    lines = out.split()
    return parse_timestamp(lines[0]) if lines else None
