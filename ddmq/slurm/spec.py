"""SlurmWorkers: what worker jobs to ask Slurm for (a description; nothing runs here).

One *job* is one task of a Slurm job array: one node's share (``--nodes=1
--ntasks=1``) with ``workers_per_job * cpus_per_worker`` CPUs, on which the
batch script (:mod:`.script`) starts ``workers_per_job`` processes
``python -m ddmq.worker ROOT --queue Q``. ``jobs`` is how many such jobs to
keep: a number, or ``(min, max)`` for adaptive scaling (:mod:`.scaling`).
:class:`~.jobs.SlurmJobs` submits and watches them.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from typing import Mapping, Sequence

from .formats import slurm_time

__all__ = ["SlurmWorkers", "RESERVED_OPTIONS"]

#: sbatch options ddmq sets itself: given in ``sbatch_args`` they would break
#: how ddmq finds its jobs (:mod:`.tag`) or reads sbatch's answer.
RESERVED_OPTIONS = ("--job-name", "-J", "--comment", "--array", "-a", "--parsable", "--wrap")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _whole(name: str, value: object, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return value


def _reserved(arg: str) -> str | None:
    """The reserved option ``arg`` sets, if any (``--job-name=x``, ``-Jx``...)."""
    for option in RESERVED_OPTIONS:
        if arg == option or (option.startswith("--") and arg.startswith(option + "=")):
            return option
        if not option.startswith("--") and arg.startswith(option):
            return option
    return None


class SlurmWorkers:
    """Worker jobs for Slurm: how many, and what each asks for.

    ``jobs``: the number of array tasks, or ``(min, max)`` to scale between
    them with the backlog. ``workers_per_job``: worker processes in each job,
    each with ``cpus_per_worker`` CPUs. ``time``: the time limit, a Slurm
    time string (``"30"`` minutes, ``"2:00:00"``), seconds, or a timedelta
    (None: the partition's default). ``partition``, ``account``: as sbatch's.
    ``mem``: memory of each job, as ``sbatch --mem`` takes it (``"4G"``; a
    number is megabytes). ``gpus``: GPUs of each job (``2``, or ``"a100:2"``),
    as ``--gres=gpu:...``. ``sbatch_args``: more sbatch options, which win
    over ddmq's (except those of :data:`RESERVED_OPTIONS`, refused).
    ``python``: the workers' interpreter (default: this one,
    ``sys.executable``). ``env``: variables to set in the job (a value None
    unsets one); by default the job gets the submitting process's
    ``PYTHONPATH`` and ``sys.path``, as local workers do. ``drain_margin``:
    seconds before the time limit at which the workers drain (take no new
    task; Slurm's SIGUSR1 is asked for then; default 120, at most a quarter
    of the limit, at least 10). ``idle_margin``: seconds before the limit at
    which a worker gives back the task it still runs and exits (default 10,
    at most half the drain margin). Before the drain, a worker starts only
    tasks that fit (see :mod:`ddmq.executor.walltime_guard`).
    ``idle_timeout``: seconds after which a worker with nothing to do ends
    (and its job with it): in adaptive mode, those of the jobs added beyond
    the minimum (default 120); else every worker (default: never).

    Raises ValueError for a value sbatch would not take.
    """

    def __init__(self, jobs: int | tuple[int, int], *, workers_per_job: int = 1,
                 time: str | float | datetime.timedelta | None = None, partition: str | None = None,
                 mem: str | int | None = None, cpus_per_worker: int = 1, gpus: int | str | None = None,
                 account: str | None = None, sbatch_args: Sequence[str] = (),
                 python: str | None = None, env: Mapping[str, str | None] | None = None,
                 drain_margin: float | None = None, idle_margin: float | None = None,
                 idle_timeout: float | None = None):
        if isinstance(jobs, tuple):
            if len(jobs) != 2:
                raise ValueError(f"jobs must be a number or a (min, max) pair, not {jobs!r}")
            low, high = _whole("jobs' minimum", jobs[0], 0), _whole("jobs' maximum", jobs[1], 1)
            if low > high:
                raise ValueError(f"jobs' minimum must not exceed its maximum: {jobs!r}")
            self.jobs: int | tuple[int, int] = (low, high)
        else:
            self.jobs = _whole("jobs", jobs, 1)
        self.workers_per_job = _whole("workers_per_job", workers_per_job, 1)
        self.cpus_per_worker = _whole("cpus_per_worker", cpus_per_worker, 1)
        self.time = time
        self.time_limit: str | None = None
        #: The time limit in seconds (None: none given, or unlimited).
        self.time_seconds: float | None = None
        if time is not None:
            self.time_limit, self.time_seconds = slurm_time(time)
        for name, value in (("partition", partition), ("account", account)):
            if value is not None and (not isinstance(value, str) or not value.strip()
                                      or any(c.isspace() for c in value)):
                raise ValueError(f"{name} must be a name without spaces, not {value!r}")
        self.partition = partition
        self.account = account
        if mem is not None and not (type(mem) is int and mem > 0
                                    or isinstance(mem, str) and re.match(r"^\d+[KMGT]?$", mem.strip(), re.I)):
            raise ValueError(f"mem must be as sbatch --mem takes it ('4G', '500M', or megabytes), not {mem!r}")
        self.mem = mem.strip() if isinstance(mem, str) else mem
        if gpus is not None and not (type(gpus) is int and gpus > 0
                                     or isinstance(gpus, str) and re.match(r"^[\w.-]+(:\d+)?$", gpus)):
            raise ValueError(f"gpus must be a count or 'type:count', not {gpus!r}")
        self.gpus = gpus
        if isinstance(sbatch_args, str) or not all(isinstance(a, str) for a in sbatch_args):
            raise ValueError(f"sbatch_args must be a list of strings, not {sbatch_args!r}")
        for arg in sbatch_args:
            reserved = _reserved(arg)
            if reserved:
                raise ValueError(f"sbatch option {arg!r} is set by ddmq itself ({reserved} marks "
                                 "or shapes its jobs) and cannot be given in sbatch_args")
        self.sbatch_args = tuple(sbatch_args)
        self.python = os.fspath(python) if python is not None else sys.executable
        if not self.python:
            raise ValueError("python must name an interpreter")
        env = dict(env or {})
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ValueError(f"not an environment variable name: {key!r}")
            if value is not None and (not isinstance(value, str) or "\0" in value):
                raise ValueError(f"the value of {key} must be a string or None, not {value!r}")
        self.env: dict[str, str | None] = env
        for label, margin in (("drain_margin", drain_margin), ("idle_margin", idle_margin)):
            if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                       or not 0 <= margin < float("inf")):
                raise ValueError(f"{label} must be 0 or more seconds, not {margin!r}")
        self.drain_margin = drain_margin
        self.idle_margin = idle_margin
        if idle_timeout is not None and (isinstance(idle_timeout, bool) or not isinstance(
                idle_timeout, (int, float)) or not 0 < idle_timeout < float("inf")):
            raise ValueError(f"idle_timeout must be more than 0 seconds, not {idle_timeout!r}")
        self.idle_timeout = idle_timeout

    # --- what it means -------------------------------------------------------------

    @property
    def adaptive(self) -> bool:
        """True if ``jobs`` is a (min, max) range."""
        return isinstance(self.jobs, tuple)

    @property
    def min_jobs(self) -> int:
        return self.jobs[0] if isinstance(self.jobs, tuple) else self.jobs

    @property
    def max_jobs(self) -> int:
        return self.jobs[1] if isinstance(self.jobs, tuple) else self.jobs

    @property
    def cpus_per_job(self) -> int:
        return self.workers_per_job * self.cpus_per_worker

    def resource_options(self) -> list[str]:
        """The sbatch options for what one job asks for (ddmq's own, before
        ``sbatch_args``)."""
        options = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={self.cpus_per_job}"]
        if self.time_limit is not None:
            options.append(f"--time={self.time_limit}")
        if self.partition is not None:
            options.append(f"--partition={self.partition}")
        if self.account is not None:
            options.append(f"--account={self.account}")
        if self.mem is not None:
            options.append(f"--mem={self.mem}")
        if self.gpus is not None:
            options.append(f"--gres=gpu:{self.gpus}")
        return options

    def __repr__(self) -> str:
        given = [repr(self.jobs)]
        defaults: dict[str, object] = {"workers_per_job": 1, "time": None, "partition": None, "mem": None,
                    "cpus_per_worker": 1, "gpus": None, "account": None, "sbatch_args": (),
                    "env": {}, "drain_margin": None, "idle_margin": None, "idle_timeout": None}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                given.append(f"{name}={value!r}")
        if self.python != sys.executable:
            given.append(f"python={self.python!r}")
        return f"SlurmWorkers({', '.join(given)})"
