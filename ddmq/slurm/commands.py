"""Running Slurm's client commands, and what ``scontrol show config`` says.

Every call of ``sbatch``, ``squeue``, ``scontrol``, ``scancel`` and
``sacct`` in ddmq goes through :func:`run`: a real subprocess, with a
timeout, logged at debug level with its duration. A missing command raises
:class:`~.errors.SlurmNotFoundError`; a failed one
:class:`~.errors.SlurmCommandError`, with the command and its stderr.

:func:`cluster_config` reads the limits ddmq must respect (``MaxArraySize``)
and what it plans with (``KillWait``, ``MinJobAge``, ``ProctrackType``),
once per process and ``SLURM_CONF``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from .errors import SlurmCommandError, SlurmNotFoundError

__all__ = ["COMMAND_TIMEOUT", "run", "ClusterConfig", "cluster_config"]

log = logging.getLogger(__name__)

#: Seconds a Slurm command may take before it counts as failed (a busy
#: controller answers in well under this; a dead one makes clients hang).
COMMAND_TIMEOUT = 60.0


def run(command: Sequence[str], *, input: str | None = None,
        timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a Slurm client command; its standard output.

    Raises SlurmNotFoundError if the command is not installed, and
    SlurmCommandError if it exits with a non-zero status or takes longer
    than ``timeout`` seconds."""
    command = list(command)
    started = time.monotonic()
    try:
        done = subprocess.run(command, input=input, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise SlurmNotFoundError(f"{command[0]}: command not found; is this a Slurm submit "
                                 "host (Slurm's client commands on PATH)?") from None
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
        raise SlurmCommandError(command, None, stderr or f"no answer within {timeout:.0f} s") from None
    except OSError as err:  # not executable, and the like
        raise SlurmCommandError(command, None, str(err)) from None
    log.debug("%s: exit status %d in %.2f s", " ".join(command), done.returncode,
              time.monotonic() - started)
    if done.returncode != 0:
        raise SlurmCommandError(command, done.returncode, done.stderr)
    return done.stdout


@dataclass(frozen=True)
class ClusterConfig:
    """The settings of the Slurm cluster that ddmq plans with.

    ``max_array_size``: an array's indices must stay below it (so an array
    holds at most that many tasks). ``kill_wait``: seconds between the
    SIGTERM of ``scancel`` or of the time limit and the SIGKILL.
    ``min_job_age``: seconds a finished job stays visible to ``squeue`` and
    ``scontrol`` (without accounting, how long ddmq can learn why it ended).
    ``proctrack``: how slurmd tracks a job's processes, which decides who
    gets the SIGTERM of ``scancel`` and of the time limit (see
    :attr:`term_reaches_children`).
    """

    max_array_size: int = 1001
    kill_wait: int = 30
    min_job_age: int = 300
    proctrack: str = "proctrack/cgroup"

    @property
    def term_reaches_children(self) -> bool:
        """True if the SIGTERM that ends a batch job reaches every process of
        it, False if only the batch shell gets it (and the shell must pass it
        on). Seen on Slurm 22.05: ``proctrack/linuxproc`` signals the whole
        process tree (``pgid``, the process group); ``proctrack/cgroup``
        signals the batch shell alone, then SIGKILLs the cgroup."""
        return self.proctrack in ("proctrack/linuxproc", "proctrack/pgid")

    @classmethod
    def parse(cls, text: str) -> ClusterConfig:
        """The config from the output of ``scontrol show config`` (Slurm's
        defaults for what it does not say)."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()

        def number(key: str, default: int) -> int:
            found = re.match(r"\d+", values.get(key, ""))
            return int(found.group()) if found else default

        return cls(max_array_size=number("MaxArraySize", cls.max_array_size),
                   kill_wait=number("KillWait", cls.kill_wait),
                   min_job_age=number("MinJobAge", cls.min_job_age),
                   proctrack=values.get("ProctrackType") or cls.proctrack)


_configs: dict[str, ClusterConfig] = {}
_configs_lock = threading.Lock()


def cluster_config() -> ClusterConfig:
    """The cluster's :class:`ClusterConfig`, asked of ``scontrol show config``
    once per process (and per ``SLURM_CONF``). Raises SlurmError if
    ``scontrol`` is missing or fails."""
    key = os.environ.get("SLURM_CONF", "")
    with _configs_lock:
        if key not in _configs:
            _configs[key] = ClusterConfig.parse(run(["scontrol", "show", "config"]))
        return _configs[key]
