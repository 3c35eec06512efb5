"""The executor: ``concurrent.futures`` on top of the ddmq queue.

``DDMQExecutor(root)`` publishes calls as task messages; ``python -m
ddmq.worker ROOT`` processes (started by the executor, or by a batch job on
other nodes) run them and reply. See :mod:`ddmq.executor.executor` for the
data flow, :mod:`ddmq.executor.payload` for the signed envelopes and
:mod:`ddmq.executor.heartbeat` for the workers' heartbeat records::

    from ddmq.executor import DDMQExecutor

    with DDMQExecutor("/shared/me/ddmq") as ex:
        results = list(ex.map(f, items))
"""

from .executor import BrokenDDMQExecutor, DDMQExecutor, TaskRejectedError, WorkerLostError
from .heartbeat import WorkerRecord, list_workers
from .payload import RemoteTraceback, SecretError, SignatureError

__all__ = [
    "DDMQExecutor", "BrokenDDMQExecutor", "TaskRejectedError", "WorkerLostError",
    "RemoteTraceback", "SecretError", "SignatureError", "WorkerRecord", "list_workers",
]
