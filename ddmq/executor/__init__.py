"""The executor: ``concurrent.futures`` on top of the ddmq queue.

``DDMQExecutor(root)`` publishes calls as task messages; ``python -m
ddmq.worker ROOT`` processes (started by the executor, or by a batch job on
other nodes) run them and reply::

    from ddmq.executor import DDMQExecutor

    with DDMQExecutor("/shared/me/ddmq") as ex:
        results = list(ex.map(f, items))

The modules, each named for what it owns (the arrows go one way: the
executor's modules use the core, :mod:`ddmq.broker` and the rest, and the
core never imports them):

- :mod:`.executor`   DDMQExecutor: submit, map, cancel, shutdown (the data flow is drawn there)
- :mod:`.tasks`      the record of each task and its future, and the table of unresolved ones
- :mod:`.collector`  the collector thread: replies to futures, and the housekeeping round
- :mod:`.pool`       the local worker processes: start, watch, replace, stop
- :mod:`.worker`     the worker, the executor's other half (``python -m ddmq.worker``)
- :mod:`.keeper`     the worker's keeper thread: leases, heartbeats, grace period, parent
- :mod:`.envelope`   the signed task, result and refusal envelopes
- :mod:`.pickling`   the standard pickler where it is right, else cloudpickle
- :mod:`.spill`      spill files: large payloads beside their message
- :mod:`.secret`     the root's secret, which signs the envelopes
- :mod:`.heartbeat`  the workers' heartbeat records
- :mod:`.activity`   what a worker did lately (since when, tasks done per minute), for ``ddmq status``
- :mod:`.environment` the versions a worker unpickles with, its Slurm job; warnings when they differ
- :mod:`.walltime_guard` a worker in a Slurm job: which tasks fit before its end, the drain
- :mod:`.slurm_pool` the executor's workers as Slurm jobs: submitted, scaled, explained, cancelled
- :mod:`.deaths`     dead workers noticed in seconds: their tasks requeued, how they died
- :mod:`.watchdog`   the warning when nobody serves the queue; time-outs that say why
- :mod:`.runs`       named runs: call outcomes kept in the root for a restarted driver
- :mod:`.attach`     an executor in a named run: what to publish, take from the run, adopt
- :mod:`.interrupt`  Ctrl-C in the driver: the work stops in seconds, nothing left behind
- :mod:`.drivers`    the executors' own records: which are alive, which are dead
- :mod:`.reaper`     what dead executors leave, removed; their tasks dropped, not run
- :mod:`.errors`     the exceptions
"""

from typing import TYPE_CHECKING, Any

from .errors import (BrokenDDMQExecutor, RemoteTraceback, ResultTimeoutError, SecretError,
                     SignatureError, TaskRejectedError, WorkerLostError)
from .heartbeat import WorkerRecord, list_workers
from .errors import RunError, RunInUseError
from .watchdog import NoWorkerWarning

if TYPE_CHECKING:  # pragma: no cover
    from .executor import DDMQExecutor

__all__ = [
    "DDMQExecutor", "BrokenDDMQExecutor", "TaskRejectedError", "WorkerLostError",
    "RemoteTraceback", "SecretError", "SignatureError", "WorkerRecord", "list_workers",
    "ResultTimeoutError", "NoWorkerWarning", "RunError", "RunInUseError",
]


def __getattr__(name: str) -> Any:
    # DDMQExecutor (with its collector, pool and task table) is loaded on first
    # use: a worker, which imports this package for its own half, never needs it.
    if name == "DDMQExecutor":
        from .executor import DDMQExecutor
        globals()[name] = DDMQExecutor
        return DDMQExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
