"""ddmq, the Dead Drop Messaging Queue: a serverless message queue on a shared filesystem.

A root folder holds one folder per queue; each message is one JSON file;
consumers claim a message by renaming it into the queue's ``work/`` folder.
See :mod:`ddmq.protocol` for the filesystem rules and :mod:`ddmq.broker` for
the API. The executor, ``ddmq.DDMQExecutor``, is :mod:`ddmq.executor`::

    import ddmq
    b = ddmq.broker("/tmp/ddmq", create=True)
    b.publish("queue_name", msg_text="Hello World!")
    msg = b.consume("queue_name")
    print(msg.message)
    b.ack(msg)
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .broker import Broker, broker
from .errors import (DdmqError, FilesystemError, InvalidMessageError, InvalidNameError,
                     InvalidRootError, LeaseLostError, MessageNotFoundError, QueueNotFoundError,
                     RootError, RootMissingError, RootUninitiatedError, SettingsError,
                     UnsafeFileError)
from .message import Message, message

__version__ = "1.0.0"

# A library logs; the application decides where that goes.
logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Names of the executor, importable from ``ddmq`` as from ``ddmq.executor``.
#: They are loaded on first use, so that the queue core (``import ddmq``)
#: never imports the executor, cloudpickle or the worker.
_EXECUTOR_NAMES = ("DDMQExecutor", "BrokenDDMQExecutor", "TaskRejectedError", "WorkerLostError",
                   "RemoteTraceback", "SecretError", "SignatureError", "ResultTimeoutError",
                   "NoWorkerWarning", "RunError", "RunInUseError")

if TYPE_CHECKING:  # pragma: no cover
    from .executor import (BrokenDDMQExecutor, DDMQExecutor, NoWorkerWarning, RemoteTraceback,
                           ResultTimeoutError, RunError, RunInUseError, SecretError,
                           SignatureError, TaskRejectedError, WorkerLostError)


def __getattr__(name: str) -> Any:
    if name in _EXECUTOR_NAMES:
        value = getattr(importlib.import_module(".executor", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXECUTOR_NAMES))

__all__ = [
    "Broker", "broker", "Message", "message", "__version__",
    "DdmqError", "FilesystemError", "InvalidMessageError", "InvalidNameError", "InvalidRootError",
    "LeaseLostError", "MessageNotFoundError", "QueueNotFoundError", "RootError",
    "RootMissingError", "RootUninitiatedError", "SettingsError", "UnsafeFileError",
    *_EXECUTOR_NAMES,
]
