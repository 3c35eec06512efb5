"""ddmq, the Dead Drop Messaging Queue: a serverless message queue on a shared filesystem.

A root folder holds one folder per queue; each message is one JSON file;
consumers claim a message by renaming it into the queue's ``work/`` folder.
See :mod:`ddmq.protocol` for the filesystem rules and :mod:`ddmq.broker` for
the API::

    import ddmq
    b = ddmq.broker("/tmp/ddmq", create=True)
    b.publish("queue_name", msg_text="Hello World!")
    msg = b.consume("queue_name")
    print(msg.message)
    b.ack(msg)
"""

import logging

from .broker import Broker, broker
from .errors import (DdmqError, FilesystemError, InvalidMessageError, InvalidNameError,
                     LeaseLostError, MessageNotFoundError, QueueNotFoundError, RootError,
                     RootMissingError, RootUninitiatedError, SettingsError)
from .message import Message, message

__version__ = "1.0.0"

# A library logs; the application decides where that goes.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Broker", "broker", "Message", "message", "__version__",
    "DdmqError", "FilesystemError", "InvalidMessageError", "InvalidNameError",
    "LeaseLostError", "MessageNotFoundError", "QueueNotFoundError", "RootError",
    "RootMissingError", "RootUninitiatedError", "SettingsError",
]
