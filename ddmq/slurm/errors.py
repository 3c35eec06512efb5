"""The exceptions of :mod:`ddmq.slurm`, one type for each thing that can go wrong.

All derive from :class:`SlurmError`, itself a :class:`ddmq.DdmqError`, so the
command line reports them as one ``ddmq: error:`` line and a caller can catch
every ddmq error at once.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import DdmqError

__all__ = ["SlurmError", "SlurmNotFoundError", "SlurmCommandError"]


class SlurmError(DdmqError):
    """A Slurm command could not be run, or did not do what was asked."""


class SlurmNotFoundError(SlurmError):
    """A Slurm client command (``sbatch``, ``squeue``, ``scontrol``,
    ``scancel``) is not installed or not on ``PATH``: this machine is not a
    Slurm submit host."""


class SlurmCommandError(SlurmError):
    """A Slurm client command failed (non-zero exit status, or no answer in
    time). ``command`` is the argument list, ``status`` the exit status
    (None on a timeout) and ``stderr`` what it printed on standard error."""

    def __init__(self, command: Sequence[str], status: int | None, stderr: str):
        self.command = list(command)
        self.status = status
        self.stderr = stderr.strip()
        how = "timed out" if status is None else f"failed (exit status {status})"
        said = " ".join(self.stderr.split())
        super().__init__(f"{' '.join(self.command)} {how}" + (f": {said}" if said else ""))
