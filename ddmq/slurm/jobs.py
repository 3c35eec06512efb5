"""SlurmJobs: the worker jobs of one :class:`~.spec.SlurmWorkers` on one root and queue.

The life of the jobs, and the Slurm command behind each step::

    start(root, queue)   sbatch --array (one array; several only where the
                         cluster's MaxArraySize or max_array_size is smaller)
    poll()               squeue, one call for all the root's jobs, at most every
                         few seconds per process (see .squeue)
    scale(waiting, ...)  adaptive only: sbatch more arrays when tasks wait (see .scaling)
    cause_of(job_id)     scontrol show job (then sacct): why a job ended (see .states)
    stop()               scancel the arrays this object submitted, and no other job

An executor holds one SlurmJobs for its workers; ``ddmq slurm`` uses the
same object to submit, and :func:`find_jobs` / :func:`cancel_jobs` to see
and cancel every ddmq job of a root, whoever submitted them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from ..broker import Broker
from .commands import ClusterConfig, cluster_config, run
from .errors import SlurmCommandError, SlurmError
from .scaling import SCALE_INTERVAL, Scaler
from .script import LOG_DIR, batch_script, sbatch_command
from .spec import SlurmWorkers
from .squeue import MIN_INTERVAL, JobRow, list_jobs
from .states import ENDED_BADLY, JobEnd, array_ends, job_end
from .tag import JobTag
from .walltime import drain_margin, worker_grace

__all__ = ["SlurmJobs", "SubmittedArray", "Submission", "ADAPTIVE_IDLE_TIMEOUT", "find_jobs",
           "cancel_jobs", "explain"]

log = logging.getLogger(__name__)

#: ``--idle-timeout`` (s) of the workers of jobs added by adaptive scaling, by default.
ADAPTIVE_IDLE_TIMEOUT = 120.0
#: Most arrays :func:`explain` asks ``scontrol`` about in one call.
MAX_EXPLAINED_ARRAYS = 10


@dataclass(frozen=True)
class Submission:
    """One sbatch call to make: its command line and the script on its stdin."""

    command: list[str]
    script: str
    size: int


@dataclass(frozen=True)
class SubmittedArray:
    """A job array ddmq submitted: its id, its number of tasks, when
    (``time.monotonic()``) and with what ``--idle-timeout``."""

    array_id: str
    size: int
    submitted: float
    idle_timeout: float | None


def _pythonpath() -> str:
    """The submitting process's PYTHONPATH as local workers get it (its
    ``sys.path`` and ddmq's location)."""
    from ..executor.pool import worker_env  # the executor only when jobs are submitted
    return worker_env()["PYTHONPATH"]


class SlurmJobs:
    """Submits, watches and cancels the worker jobs ``workers`` describes.

    ``max_array_size``: the largest array to submit (default, and never more
    than: the cluster's ``MaxArraySize``); more jobs go in several arrays.
    ``idle_timeout``: the workers' ``--idle-timeout`` in the jobs of a fixed
    number (default: that of ``workers``, else none: they serve until
    cancelled or out of time); in
    adaptive mode, that of the jobs added beyond the minimum (default
    :data:`ADAPTIVE_IDLE_TIMEOUT`; the minimum's never stop for idleness).
    ``drain_margin``: seconds before the time limit at which the workers
    drain (see :mod:`.walltime`; default: that of ``workers``). ``worker_args``: more options for
    ``python -m ddmq.worker``. ``log_dir``: where the jobs write their output
    (default ``ROOT/.slurm``; it must be on a filesystem the nodes share).
    ``poll_interval``: least seconds between two ``squeue`` calls.
    """

    def __init__(self, workers: SlurmWorkers, *, max_array_size: int | None = None,
                 idle_timeout: float | None = None, drain_margin: float | None = None,
                 worker_args: Sequence[str] = (), log_dir: str | os.PathLike | None = None,
                 poll_interval: float = MIN_INTERVAL, scale_interval: float = SCALE_INTERVAL):
        if max_array_size is not None and (type(max_array_size) is not int or max_array_size < 1):
            raise ValueError(f"max_array_size must be a whole number >= 1, not {max_array_size!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be more than 0 seconds, not {idle_timeout!r}")
        if drain_margin is not None and not drain_margin >= 0:
            raise ValueError(f"drain_margin must be 0 or more seconds, not {drain_margin!r}")
        if isinstance(worker_args, str):
            raise ValueError("worker_args must be a list of strings, not a string")
        self.workers = workers
        self.max_array_size = max_array_size
        self.idle_timeout = idle_timeout if idle_timeout is not None else workers.idle_timeout
        self.drain_margin = drain_margin
        self.worker_args = tuple(worker_args)
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.poll_interval = poll_interval
        self.scaler = (Scaler(workers.min_jobs, workers.max_jobs, workers.workers_per_job,
                              interval=scale_interval) if workers.adaptive else None)
        self.tag: JobTag | None = None
        #: The arrays submitted, oldest first.
        self.arrays: list[SubmittedArray] = []
        self._lock = threading.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        where = f" on {self.tag.root} queue {self.tag.queue}" if self.tag else ""
        return f"<SlurmJobs {self.workers!r}{where}: arrays {[a.array_id for a in self.arrays]}>"

    # --- submitting ---------------------------------------------------------------------

    def start(self, root: str | os.PathLike, queue: str = "tasks") -> list[str]:
        """Submit the jobs for ``root`` and ``queue`` (made if missing): all
        of them, or the minimum in adaptive mode; the array ids. Raises
        SlurmError if sbatch is missing or refuses, RuntimeError if started
        already."""
        if self.tag is not None:
            raise RuntimeError(f"{self!r} is started already")
        tag = JobTag(os.fspath(root), queue)
        cluster_config()  # no Slurm here: say so before anything is made
        setup = Broker(tag.root, create=True)
        try:
            setup.create_queue(queue)
        finally:
            setup.close()
        self.tag = tag
        first = self.workers.min_jobs
        return self.submit(first, idle_timeout=None if self.scaler else self.idle_timeout) if first else []

    def _extra_idle_timeout(self) -> float:
        return self.idle_timeout if self.idle_timeout is not None else ADAPTIVE_IDLE_TIMEOUT

    def plan(self, jobs: int, *, idle_timeout: float | None = None,
             config: ClusterConfig | None = None, tag: JobTag | None = None) -> list[Submission]:
        """The sbatch calls that submit ``jobs`` more jobs: one array, or
        several of at most the array size limit; nothing is run. ``config``:
        the cluster's (default: asked of ``scontrol``). ``tag``: the root and
        queue (default: those of :meth:`start`)."""
        tag = tag or self._started()
        if type(jobs) is not int or jobs < 1:
            raise ValueError(f"jobs must be a whole number >= 1, not {jobs!r}")
        config = config or cluster_config()
        limit = config.max_array_size
        if self.max_array_size is not None:
            limit = min(limit, self.max_array_size)
        log_dir = self.log_dir or os.path.join(tag.root, LOG_DIR)
        margin = drain_margin(self.workers.time_seconds, self.drain_margin
                              if self.drain_margin is not None else self.workers.drain_margin)
        script = batch_script(self.workers, tag, grace=worker_grace(config.kill_wait),
                              pythonpath=None if "PYTHONPATH" in self.workers.env else _pythonpath(),
                              forward_term=not config.term_reaches_children,
                              idle_timeout=idle_timeout, worker_args=self.worker_args,
                              drain_margin=margin)
        plans = []
        while jobs > 0:
            size = min(jobs, limit)
            plans.append(Submission(sbatch_command(self.workers, tag, size, margin=margin,
                                                   log_dir=log_dir), script, size))
            jobs -= size
        return plans

    def submit(self, jobs: int, *, idle_timeout: float | None = None) -> list[str]:
        """Submit ``jobs`` more jobs whose workers stop after ``idle_timeout``
        idle seconds (None: never); the ids of the new arrays. Raises
        SlurmError if sbatch is missing or refuses (the arrays submitted
        before that one stay, and are listed in :attr:`arrays`)."""
        plans = self.plan(jobs, idle_timeout=idle_timeout)
        os.makedirs(self.log_dir or os.path.join(self._started().root, LOG_DIR), mode=0o700,
                    exist_ok=True)
        ids = []
        for plan in plans:
            with self._lock:
                if self._stopped:
                    raise RuntimeError("these Slurm jobs were stopped: no more are submitted")
                out = run(plan.command, input=plan.script)
                array_id = out.strip().split(";")[0]
                if not array_id.isdigit():
                    raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
                self.arrays.append(SubmittedArray(array_id, plan.size, time.monotonic(), idle_timeout))
            log.info("submitted Slurm job array %s: %d job(s) of %d worker(s) for queue %s of %s",
                     array_id, plan.size, self.workers.workers_per_job, self._started().queue,
                     self._started().root)
            ids.append(array_id)
        return ids

    def _started(self) -> JobTag:
        if self.tag is None:
            raise RuntimeError("these Slurm jobs are not started: call start(root, queue) first")
        return self.tag

    # --- watching ---------------------------------------------------------------------

    @property
    def array_ids(self) -> list[str]:
        with self._lock:
            return [a.array_id for a in self.arrays]

    def poll(self) -> list[JobRow]:
        """This object's jobs as ``squeue`` last showed them (pending,
        running, and finished in the last ``MinJobAge`` seconds), at most
        :attr:`poll_interval` seconds old. Raises SlurmError if squeue
        fails."""
        tag = self._started()
        rows, _ = list_jobs(tag.name, min_interval=self.poll_interval)
        own = set(self.array_ids)
        return [r for r in rows if r.array_id in own and tag.owns(r.name, r.comment)]

    def counts(self) -> tuple[int, int]:
        """(pending, running) jobs of this object, arrays submitted since
        ``squeue`` last answered counted as pending."""
        tag = self._started()
        rows, taken = list_jobs(tag.name, min_interval=self.poll_interval)
        with self._lock:
            arrays = list(self.arrays)
        seen = {a.array_id for a in arrays if a.submitted <= taken}
        unseen = sum(a.size for a in arrays if a.submitted > taken)
        mine = [r for r in rows if r.array_id in seen and tag.owns(r.name, r.comment)]
        pending = sum(1 for r in mine if r.pending) + unseen
        running = sum(1 for r in mine if r.active and not r.pending)
        return pending, running

    def scale(self, waiting: int, live_workers: int, idle_workers: int = 0) -> int:
        """Adaptive mode: submit the jobs the backlog calls for (see
        :mod:`.scaling`); the number submitted. ``waiting``: task messages
        in the queue; ``live_workers``, ``idle_workers``: from the heartbeat
        records of the queue's workers. A failing squeue or sbatch is logged,
        not raised (the next call tries again). Does nothing in fixed mode."""
        if self.scaler is None or self._stopped:
            return 0
        try:
            pending, running = self.counts()
            decision = self.scaler.decide(waiting, live_workers, pending, running, idle_workers)
            if decision.keep:
                self.submit(decision.keep, idle_timeout=None)
            if decision.extra:
                self.submit(decision.extra, idle_timeout=self._extra_idle_timeout())
        except SlurmError as err:
            log.warning("cannot scale the Slurm workers of queue %s: %s", self._started().queue, err)
            return 0
        if decision.total:
            log.info("scaling up: %d waiting task(s), %d live worker(s), %d pending and %d running "
                     "job(s): %d more job(s)", waiting, live_workers, pending, running, decision.total)
        return decision.total

    def cause_of(self, job_id: str) -> JobEnd | None:
        """How job ``job_id`` (``123_4``) ended, or where it stands (see
        :func:`.states.job_end`); None when Slurm no longer knows it."""
        return job_end(job_id)

    # --- stopping -----------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Cancel every array this object submitted (no other job), and
        submit no more; the array ids cancelled. Their workers get SIGTERM
        and give back their tasks (see :mod:`.walltime`). Raises SlurmError
        if scancel is missing or fails."""
        with self._lock:
            self._stopped = True
            ids = [a.array_id for a in self.arrays]
        scancel(ids)
        return ids


def scancel(job_ids: Sequence[str]) -> None:
    """``scancel`` these jobs (or whole arrays), one call; jobs that ended
    already are no error."""
    if not job_ids:
        return
    try:
        run(["scancel", *job_ids])
    except SlurmCommandError as err:
        # scancel says so, and fails, for a job that is over or forgotten: that is the goal
        lines = [line for line in err.stderr.splitlines() if line.strip()]
        benign = ("already completing or completed", "invalid job id")
        if not lines or any(not any(b in line.lower() for b in benign) for line in lines):
            raise
        log.debug("scancel: %s", " ".join(lines))
    log.info("cancelled Slurm job(s) %s", ", ".join(job_ids))


def find_jobs(root: str | os.PathLike, queue: str | None = None, *,
              min_interval: float = MIN_INTERVAL) -> list[JobRow]:
    """Every ddmq worker job of this user on ``root`` (of ``queue`` only, if
    given): pending, running, and finished in the last ``MinJobAge`` seconds.
    One squeue call (see :mod:`.squeue`). Raises SlurmError if it fails."""
    tag = JobTag(os.fspath(root), queue)
    rows, _ = list_jobs(tag.name, min_interval=min_interval)
    return [r for r in rows if tag.owns(r.name, r.comment)]


def cancel_jobs(root: str | os.PathLike, queue: str | None = None) -> list[str]:
    """Cancel every pending or running ddmq worker job of this user on
    ``root`` (of ``queue`` only, if given), and nothing else; the ids
    cancelled (arrays as a whole where all their tasks go). Raises
    SlurmError if squeue or scancel fails."""
    rows = [r for r in find_jobs(root, queue) if r.active]
    ids = sorted({r.array_id if r.index is not None else r.id for r in rows}, key=int)
    scancel(ids)
    return ids


def explain(rows: Sequence[JobRow]) -> dict[str, JobEnd]:
    """{job id: JobEnd} for the jobs of ``rows`` that ended badly (see
    :data:`.states.ENDED_BADLY`): from one ``scontrol`` call per array (for
    the exit status and the memory limit), for :data:`MAX_EXPLAINED_ARRAYS`
    arrays at most; the others, and jobs Slurm no longer details, from what
    ``squeue`` showed."""
    bad = [r for r in rows if r.state in ENDED_BADLY]
    found: dict[str, JobEnd] = {}
    for array_id in list(dict.fromkeys(r.array_id for r in bad))[:MAX_EXPLAINED_ARRAYS]:
        try:
            found.update(array_ends(array_id))
        except SlurmError as err:
            log.debug("scontrol cannot say how the jobs of array %s ended: %s", array_id, err)
    return {r.id: found.get(r.id) or JobEnd(id=r.id, state=r.state, reason=r.reason, node=r.node,
                                            time_limit=r.time_limit, run_time=r.elapsed,
                                            source="squeue")
            for r in bad}
