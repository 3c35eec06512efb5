"""ddmq on Slurm: worker jobs submitted, watched, scaled and cancelled without a server.

Workers of :class:`ddmq.executor.DDMQExecutor` are ``python -m ddmq.worker
ROOT`` processes on any node that sees the root. This package puts them in
Slurm jobs and keeps track of them, with Slurm's own client commands::

    SlurmWorkers(jobs, ...)           what to ask for                          (.spec)
        │
    SlurmJobs(workers).start(root, queue)
        ├─ sbatch --array ─────────>  N array tasks, each: batch shell         (.script)
        │   name ddmq-<digest>           └─ K x python -m ddmq.worker ROOT --queue Q
        │   comment ddmq:<queue>:<root>     (heartbeats in ROOT/.workers/,
        │   (.tag)                           output in ROOT/.slurm/job-A_I.out)
        ├─ poll() / counts()   squeue: one call for a root, at most every 5 s   (.squeue)
        ├─ scale(waiting, live) sbatch more arrays while tasks wait;          (.scaling)
        │                       idle workers end their jobs (--idle-timeout)
        ├─ cause_of(job id)    scontrol show job (sacct): why a job ended    (.states)
        └─ stop()              scancel the arrays it submitted, no other job

    find_jobs(root) / cancel_jobs(root): every ddmq job of a root      (``ddmq slurm``)
    job_end_time(): in a job, when its time limit falls; the drain     (.walltime)
        convention: --signal=B:USR1@MARGIN, forwarded to the workers

The modules, each named for what it owns:

- :mod:`.spec`      SlurmWorkers: jobs, workers per job, resources, interpreter, environment
- :mod:`.script`    the batch script of an array task, and the sbatch command
- :mod:`.tag`       the job name and comment by which ddmq knows its jobs
- :mod:`.jobs`      SlurmJobs (one set of arrays), find_jobs, cancel_jobs
- :mod:`.squeue`    one rate-limited squeue call, parsed into JobRow
- :mod:`.states`    why a job ended (scontrol, sacct), in one line
- :mod:`.scaling`   the adaptive Scaler
- :mod:`.walltime`  job_end_time() and the drain signal convention
- :mod:`.commands`  running Slurm's commands; the cluster's MaxArraySize and KillWait
- :mod:`.formats`   Slurm's durations, timestamps and job ids
- :mod:`.errors`    SlurmError and its kinds

The core never imports this package; it uses the core's public API
(:class:`ddmq.Broker`) and, to give its workers the caller's ``PYTHONPATH``,
:func:`ddmq.executor.pool.worker_env`.
"""

from .commands import ClusterConfig, cluster_config
from .errors import SlurmCommandError, SlurmError, SlurmNotFoundError
from .formats import check_job_id
from .jobs import SlurmJobs, SubmittedArray, cancel_jobs, find_jobs
from .scaling import Decision, Scaler
from .spec import SlurmWorkers
from .squeue import JobRow
from .states import ENDED_BADLY, JobEnd, describe, job_end
from .tag import JobTag
from .walltime import DRAIN_SIGNAL, job_end_time

__all__ = [
    "SlurmWorkers", "SlurmJobs", "SubmittedArray", "find_jobs", "cancel_jobs", "JobRow", "JobTag",
    "JobEnd", "ENDED_BADLY", "job_end", "describe", "Scaler", "Decision", "job_end_time",
    "DRAIN_SIGNAL", "ClusterConfig", "cluster_config", "check_job_id",
    "SlurmError", "SlurmNotFoundError", "SlurmCommandError",
]
