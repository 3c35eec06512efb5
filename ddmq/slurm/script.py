"""The batch script of a worker job array, and the sbatch command that submits it.

:func:`sbatch_command` is the whole submission: ddmq's options on the
command line (exact arguments, no quoting: name and comment of :mod:`.tag`,
``--array``, resources of :class:`~.spec.SlurmWorkers`, ``--signal`` and
``--output``), then the user's ``sbatch_args`` (the command line's last
word wins), and the script of :func:`batch_script` on standard input. Each
array task runs that script::

    batch shell (bash)
      ├── asks squeue once when the job ends: DDMQ_JOB_END_TIME for the workers
      ├── python -m ddmq.worker ROOT --queue Q --grace G -v [...]    x workers_per_job
      │     (interpreter and PYTHONPATH of the submitting process)
      ├── on SIGUSR1 (--signal=B:USR1@MARGIN): SIGUSR1 to its workers, which drain (see .walltime)
      ├── on SIGTERM (scancel, time limit): SIGTERM to its workers, unless Slurm
      │     signals them itself (proctrack/linuxproc: a second SIGTERM would cut
      │     their grace; proctrack/cgroup signals the batch shell alone)
      └── waits for every worker; exits with the last non-zero status, else 0

so that a job's state says how its workers ended: COMPLETED when they
stopped cleanly (signal, ``--idle-timeout``), FAILED with their exit status
when one could not start (a wrong interpreter: 127) or failed.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from .spec import SlurmWorkers
from .tag import JobTag
from .walltime import DRAIN_SIGNAL, END_TIME_VARIABLE, FORWARDED_SIGNAL

__all__ = ["LOG_DIR", "log_pattern", "sbatch_command", "batch_script"]

#: Folder of the jobs' output files, in the root (hidden: not a queue).
LOG_DIR = ".slurm"


def log_pattern(log_dir: str) -> str:
    """``--output`` of the jobs: one file per array task in ``log_dir``
    (``%`` in the folder's own name doubled, as sbatch wants)."""
    return f"{log_dir.replace('%', '%%')}/job-%A_%a.out"


def sbatch_command(workers: SlurmWorkers, tag: JobTag, size: int, *, margin: int,
                   log_dir: str) -> list[str]:
    """The sbatch command that submits ``size`` array tasks of ``workers``
    for ``tag``'s root and queue (the script comes on its standard input)."""
    return ["sbatch", "--parsable", f"--job-name={tag.name}", f"--comment={tag.comment}",
            f"--array=0-{size - 1}", *workers.resource_options(),
            f"--signal=B:{DRAIN_SIGNAL}@{margin}", f"--output={log_pattern(log_dir)}",
            *workers.sbatch_args]


def batch_script(workers: SlurmWorkers, tag: JobTag, *, grace: int, pythonpath: str | None,
                 forward_term: bool = True, idle_timeout: float | None = None,
                 worker_args: Sequence[str] = (), drain_margin: int | None = None) -> str:
    """The script each array task runs: starts ``workers.workers_per_job``
    workers on ``tag``'s root and queue and waits for them.

    ``forward_term``: pass the SIGTERM of ``scancel`` and of the time limit
    on to the workers (see :attr:`.commands.ClusterConfig.term_reaches_children`).
    ``pythonpath``: the workers' ``PYTHONPATH`` (None: as the job has it),
    unless ``workers.env`` sets it. ``idle_timeout``: the workers'
    ``--idle-timeout`` (None: they never stop for lack of work).
    ``worker_args``: more ``python -m ddmq.worker`` options, after ddmq's.
    ``drain_margin``: the workers' ``--drain-margin`` (that of ``--signal``),
    with ``workers.idle_margin`` as their ``--idle-margin`` if set."""
    q = shlex.quote
    env: dict[str, str | None] = {}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    env.update(workers.env)
    exports = [f"export {key}={q(value)}" if value is not None else f"unset {key}"
               for key, value in env.items()]
    command = [workers.python, "-m", "ddmq.worker", tag.root, "--queue", str(tag.queue),
               "--grace", str(grace), "-v"]
    if idle_timeout is not None:
        command += ["--idle-timeout", f"{idle_timeout:g}"]
    command += list(worker_args)
    if drain_margin is not None:
        command += ["--drain-margin", str(drain_margin)]
    if workers.idle_margin is not None:
        command += ["--idle-margin", f"{workers.idle_margin:g}"]
    lines = [
        "#!/bin/bash",
        f"# ddmq workers for queue {tag.queue} of {tag.root} (written by ddmq.slurm)",
        *exports,
        'where="job ${SLURM_JOB_ID:-?} (array task ${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID:-?})'
        ' on ${SLURMD_NODENAME:-$(hostname)}"',
        "# when the time limit falls, asked once for all the workers (ddmq.slurm.job_end_time)",
        'end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) && end=$(date -d "$end" +%s 2>/dev/null)'
        f' && export {END_TIME_VARIABLE}="$end"',
        "pids=()",
        "# the traps first: a signal must never find the shell without them",
        f'drain() {{ echo "ddmq: $where: SIG{DRAIN_SIGNAL}, the time limit is near:'
        f' workers drain"; kill -{FORWARDED_SIGNAL} "${{pids[@]}}" 2>/dev/null; }}',
        f"trap drain {DRAIN_SIGNAL}",
        'trap \'echo "ddmq: $where: SIGTERM (scancel or time limit): workers stop"'
        + ('; kill -TERM "${pids[@]}" 2>/dev/null' if forward_term else "") + "' TERM",
        f'echo "ddmq: $where: starting {workers.workers_per_job} worker(s)"',
        f"for _ in $(seq {workers.workers_per_job}); do",
        f"    {' '.join(q(word) for word in command)} &",
        "    pids+=($!)",
        "done",
        "status=0",
        'for pid in "${pids[@]}"; do',
        "    # wait returns early when a trapped signal arrives: wait again while the worker lives",
        '    while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done',
        '    [ "$rc" -eq 0 ] || status=$rc',
        "done",
        'echo "ddmq: $where: workers ended, exit status $status"',
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"
