"""SlurmPool: an executor's workers as Slurm jobs, started, scaled, explained and cancelled with it.

``DDMQExecutor(root, max_workers=0, workers=SlurmWorkers(...))`` holds one;
it is to Slurm jobs what :class:`~ddmq.executor.pool.LocalPool` is to local
processes, and does its work through :class:`ddmq.slurm.SlurmJobs`::

    DDMQExecutor.__init__      start()   sbatch: one job array (SlurmJobs.start); the workers
                                         run this interpreter with this PYTHONPATH unless the
                                         SlurmWorkers say otherwise. A SlurmError (no sbatch,
                                         sbatch refused) shuts the executor down and is raised
    housekeeping round         mind()    every POLL_SECONDS: squeue (one call, shared by the
    (collector thread)                   process); jobs that ended badly are explained
                                         (scontrol) and logged once; adaptive: every
                                         SCALE_CHECK_SECONDS, SlurmJobs.scale(waiting, live, idle)
    a worker found dead        worker_death(record): how its Slurm job ended, for the
    (deaths.DeathWatch)                  error of a task it ran (OUT_OF_MEMORY with the limit...),
                                         and whether its tasks' requeue uses up a retry (not
                                         for TIMEOUT, NODE_FAIL, PREEMPTED, CANCELLED)
    DDMQExecutor._cleanup      stop()    scancel the arrays it submitted, and nothing else

Nothing here raises into the collector thread: Slurm failing to answer is
logged, and tried again at the next round.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import DdmqError

if TYPE_CHECKING:
    from ..broker import Broker
    from ..slurm import JobEnd, SlurmWorkers

__all__ = ["POLL_SECONDS", "FINAL_WAIT", "NOT_THE_TASKS_FAULT", "SlurmPool", "worker_death",
           "explain_lost"]

log = logging.getLogger(__name__)

#: Least seconds between two looks of an executor at its jobs (squeue).
POLL_SECONDS = 10.0
#: Seconds between two counts of waiting tasks and idle workers in adaptive mode (the
#: scaler itself submits at most every ``scale_interval``; squeue answers are shared).
SCALE_CHECK_SECONDS = 5.0
#: Longest wait (s) for Slurm to settle how the job of a worker just found
#: dead ended (the batch shell exits, the controller records the state).
FINAL_WAIT = 3.0


class SlurmPool:
    """The Slurm worker jobs of one executor (see the module docstring).

    ``worker_args``: more ``python -m ddmq.worker`` options (the executor's
    ``worker_args``). Used by the executor's thread (:meth:`start`) and then
    by its collector thread (:meth:`mind`, :meth:`stop`)."""

    def __init__(self, workers: SlurmWorkers, root: str, queue: str, *,
                 worker_args: Sequence[str] = ()):
        from ..slurm import SlurmJobs

        self.workers = workers
        self.root = root
        self.queue = queue
        self.jobs: SlurmJobs = SlurmJobs(workers, worker_args=list(worker_args))
        #: {job id (123_4): JobEnd} of the jobs seen to end badly.
        self.ends: dict[str, JobEnd] = {}
        self._next_poll = 0.0
        self._next_scale = 0.0
        self._stopped = False

    def __repr__(self) -> str:
        return f"<SlurmPool {self.jobs!r}>"

    @property
    def expected_workers(self) -> int:
        """Workers the jobs will run (the minimum in adaptive mode), to size map's chunks."""
        return max(self.workers.min_jobs, 1) * self.workers.workers_per_job

    def start(self) -> list[str]:
        """Submit the jobs; the array ids. Raises SlurmError if Slurm is not
        here or sbatch refuses."""
        ids = self.jobs.start(self.root, self.queue)
        log.info("submitted %s for queue %s: array(s) %s", self.workers, self.queue, ", ".join(ids))
        return ids

    def mind(self, broker: Broker) -> None:
        """The housekeeping round's look at the jobs (see the module docstring)."""
        if self._stopped:
            return
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + POLL_SECONDS
            self._learn_ends()
        if self.jobs.scaler is not None and now >= self._next_scale:
            self._next_scale = now + SCALE_CHECK_SECONDS
            self._scale(broker)

    def _learn_ends(self) -> None:
        from ..slurm import SlurmError, describe
        from ..slurm.jobs import explain

        try:
            rows = self.jobs.poll()
            fresh = [r for r in rows if r.id not in self.ends]
            ends = explain(fresh) if fresh else {}
        except SlurmError as err:
            log.warning("cannot look at the Slurm jobs of queue %s: %s", self.queue, err)
            return
        for job_id, end in ends.items():
            if end.final or end.state in ("NODE_FAIL", "PREEMPTED"):
                self.ends[job_id] = end
                log.warning("%s; the tasks its workers held run again in other jobs", describe(end))

    def _scale(self, broker: Broker) -> None:
        from .heartbeat import list_workers

        try:
            waiting = len(broker.get_message_list(self.queue)[0])
            live, _ = list_workers(self.root, self.queue)
        except (OSError, DdmqError) as err:
            log.warning("cannot count the tasks and workers of queue %s: %s", self.queue, err)
            return
        idle = sum(1 for w in live if w.state == "idle")
        self.jobs.scale(waiting, len(live), idle)

    def stop(self) -> None:
        """Cancel the jobs this pool submitted (errors are logged)."""
        from ..slurm import SlurmError

        if self._stopped:
            return
        self._stopped = True
        try:
            ids = self.jobs.stop()
        except (SlurmError, RuntimeError) as err:
            log.warning("cannot cancel the Slurm jobs %s: %s (cancel them with 'ddmq slurm "
                        "cancel %s')", ", ".join(self.jobs.array_ids) or "-", err, self.root)
            return
        if ids:
            log.info("cancelled the Slurm worker job array(s) %s", ", ".join(ids))


def _settled(job_id: str, wait: float) -> tuple[JobEnd | None, bool]:
    """(how job ``job_id`` ended, whether Slurm answered), waiting up to
    ``wait`` s for the job to reach a final state (its worker just died: the
    job may be ending). The end is None when Slurm no longer knows the job."""
    from ..slurm import SlurmError, job_end

    deadline = time.monotonic() + wait
    end = None
    while True:
        try:
            end = job_end(job_id)
        except (SlurmError, ValueError) as err:
            log.debug("cannot ask Slurm how job %s ended: %s", job_id, err)
            return end, end is not None
        if end is None or end.final or time.monotonic() >= deadline:
            return end, True
        time.sleep(0.3)


#: Job ends that are not the fault of the tasks its workers ran: their tasks are
#: given back without using up a retry (a task cut by the walltime runs again elsewhere).
NOT_THE_TASKS_FAULT = frozenset({"TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
                                 "CANCELLED", "REQUEUED", "PENDING"})


def worker_death(record: Any, known: dict[str, JobEnd] | None = None,
                 wait: float = FINAL_WAIT) -> tuple[str | None, bool]:
    """For a worker found dead: (how its Slurm job ended, in one line, or
    None outside Slurm; whether the requeue of the tasks it held counts as
    a failed attempt). The line says Slurm's state and what explains it,
    e.g. "its Slurm job 123_4 on n2 ran out of memory (limit --mem=100M):
    OUT_OF_MEMORY". A job cut by its time limit, its node failing, a
    preemption or a cancellation does not count (see
    :data:`NOT_THE_TASKS_FAULT`). ``known``: job ends learnt already (a
    pool's :attr:`SlurmPool.ends`); else ``scontrol`` is asked, waiting up
    to ``wait`` s for the job to end."""
    job_id = getattr(record, "slurm_job", "")
    if not job_id:
        return None, True
    from ..slurm import describe

    node = getattr(record, "node", "")
    end = (known or {}).get(job_id)
    answered = True
    if end is None:
        end, answered = _settled(job_id, wait)
    where = f"its Slurm job {job_id}" + (f" on {node}" if node else "")
    if end is None:
        return where + (" (Slurm no longer knows the job)" if answered else ""), True
    counts = end.state not in NOT_THE_TASKS_FAULT
    if end.ended_badly:
        return f"its {describe(end)}", counts
    return f"{where} (job state {end.state})", counts


#: Most Slurm jobs :func:`explain_lost` asks about in one call.
MAX_EXPLAINED_JOBS = 20


def explain_lost(records: Sequence[Any]) -> None:
    """Add to the ``cause`` of each lost worker record of a Slurm job how its
    job ended (``ddmq workers``), asking Slurm about :data:`MAX_EXPLAINED_JOBS`
    jobs at most and waiting for none."""
    asked: dict[str, str | None] = {}
    for record in records:
        job = getattr(record, "slurm_job", "")
        if not job or not record.lost:
            continue
        if job not in asked:
            if len(asked) >= MAX_EXPLAINED_JOBS:
                continue
            asked[job], _ = worker_death(record, wait=0)
        more = asked[job]
        if more and more not in (record.cause or ""):
            record.cause = f"{record.cause}; {more}" if record.cause else more
