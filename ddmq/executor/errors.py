"""The exceptions of the executor and its workers, each named for what went wrong.

All derive from :class:`ddmq.errors.DdmqError` (``BrokenDDMQExecutor`` also
from ``concurrent.futures.BrokenExecutor``, ``ResultTimeoutError`` also from
``concurrent.futures.TimeoutError`` and the builtin ``TimeoutError``, one
class since Python 3.11), except :class:`RemoteTraceback`,
which is not raised but attached: it carries a worker's traceback text as the
``__cause__`` of the exception a future re-raises.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError  # builtin TimeoutError since 3.11

from ..errors import DdmqError

# Before Python 3.11 concurrent.futures had a TimeoutError of its own; code
# written for 3.11 and later catches the builtin one. A time-out of ours is both.
_TIMEOUT_BASES: tuple[type, ...] = ((FuturesTimeoutError,) if FuturesTimeoutError is TimeoutError
                                    else (FuturesTimeoutError, TimeoutError))


class WorkerLostError(DdmqError):
    """A task was given up: the workers that ran it were lost (killed,
    crashed, out of lease) every time, up to the executor's ``retries``.
    Its message says how each of them ended, as far as it is known (one line
    per attempt; see :mod:`ddmq.executor.deaths`)."""


class ResultTimeoutError(*_TIMEOUT_BASES, DdmqError):  # type: ignore[misc]
    """A result was not ready in time (``result``/``exception`` of a future,
    ``map``). A ``concurrent.futures.TimeoutError`` (and, on every Python, a
    builtin ``TimeoutError``), whose message says how
    many of the executor's tasks wait, run and are done, and how many
    workers are live on its queue."""


class TaskRejectedError(DdmqError):
    """A worker refused to run a task (its signature did not match the
    root's secret, or its message could not be read)."""


class BrokenDDMQExecutor(BrokenExecutor, DdmqError):
    """The executor cannot run tasks any more: its local workers cannot start,
    or its collector thread failed. Unresolved futures fail with this error."""


class SignatureError(DdmqError):
    """An envelope is unsigned, its signature does not match the root's
    secret, or it is malformed: it was refused without being unpickled."""


class PayloadMissingError(DdmqError):
    """The file holding a large payload is gone: its task is over (the
    executor has its result, or shut down), or someone removed it."""


class SecretError(DdmqError):
    """The root's secret file cannot be read, created or understood."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text.

    Attached as ``__cause__`` of the exception that ``Future.result()``
    re-raises, so the caller's traceback ends with the worker's (as
    :class:`concurrent.futures.ProcessPoolExecutor` does).
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RunError(DdmqError):
    """A run cannot be used: a bad name, or a segment that is not what it says."""


class RunInUseError(RunError):
    """Another live driver drives this run (``host``, ``pid``)."""

    def __init__(self, message: str, host: str, pid: int):
        super().__init__(message)
        self.host, self.pid = host, pid
