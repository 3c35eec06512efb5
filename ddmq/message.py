"""The message: its JSON form on disk.

A message is one JSON object in one file, with the original ddmq's keys::

    {"message": "Hello", "queue": "q", "id": "1ed1...", "priority": 999,
     "queue_number": 1764050000123456789, "filename": "999.1764050000123456789.ddmq1ed1...",
     "requeue": null, "requeue_prio": null, "requeue_counter": 0,
     "requeue_limit": null, "timeout": null}

``requeue``, ``requeue_prio``, ``requeue_limit`` and ``timeout`` are ``null``
when the publisher left them to the queue's settings, which are then read when
they matter (at consume, nack or lease expiry).

The names of its files are :mod:`ddmq.layout`'s.

Messages are consumed in order of ``(priority, queue_number)`` compared as
numbers. ``queue_number`` is the publisher's clock in nanoseconds, made
strictly increasing within one process, so one publisher's messages of one
priority are consumed in the order it published them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from .errors import InvalidMessageError

#: The JSON keys of a message file, in the order they are written.
FIELDS = ("message", "queue", "id", "priority", "queue_number", "filename", "requeue",
          "requeue_prio", "requeue_counter", "requeue_limit", "timeout")

_WHOLE_NUMBERS = ("priority", "requeue_counter", "requeue_limit", "requeue_prio", "timeout")
#: Largest value of a whole-number field (file names must fit NAME_MAX).
MAX_NUMBER = 10**18 - 1
#: Longest lease a message may ask for, in seconds (ten years).
MAX_TIMEOUT = 10 * 365 * 24 * 3600

_counter_lock = threading.Lock()
_last_queue_number = 0


def next_queue_number() -> int:
    """The publisher's clock in ns, strictly increasing within this process."""
    global _last_queue_number
    with _counter_lock:
        number = max(time.time_ns(), _last_queue_number + 1)
        _last_queue_number = number
        return number


class Message:
    """One message, as published, consumed or listed.

    Attributes are the JSON keys of its file (see the module docstring). Once
    consumed, ``filename`` is the name of its file in the queue's ``work/``
    folder, which :meth:`ddmq.Broker.ack`, ``nack`` and ``extend_lease``
    use; ``expiry`` is then the epoch second its lease ends.
    """

    __slots__ = FIELDS + ("expiry",)

    def __init__(self, queue: str | None = None, message: Any = None, timeout: int | None = None,
                 id: str | None = None, priority: int | None = None,
                 queue_number: int | None = None, filename: str | None = None,
                 requeue: bool | None = None, requeue_counter: int = 0,
                 requeue_limit: int | None = None, requeue_prio: int | None = None):
        self.queue = queue
        self.message = message
        self.timeout = timeout
        self.id = id
        self.priority = priority
        self.queue_number = queue_number
        self.filename = filename
        self.requeue = requeue
        self.requeue_counter = requeue_counter
        self.requeue_limit = requeue_limit
        self.requeue_prio = requeue_prio
        self.expiry: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message's JSON keys and values."""
        return {field: getattr(self, field) for field in FIELDS}

    def to_json(self, requeue_default: bool | None = None) -> str:
        """The text of the message's file.

        With ``requeue_default`` (the queue's ``requeue`` setting now), the
        file says what ddmq 0.9 acts on: ``requeue`` true or false, never
        null (0.9 deletes a message whose ``requeue`` is null when its lease
        expires), and a custom requeue priority as the integer in
        ``requeue`` (the only form 0.9 honours; priority 0 stays ``true``,
        0.9's own default). What the publisher asked for is kept for ddmq 1.x
        readers: ``requeue_prio``, and ``requeue_given`` (null: "the queue's
        setting when it matters") when it differs from ``requeue``."""
        data = self.to_dict()
        if requeue_default is not None:
            requeue = self.requeue if self.requeue is not None else requeue_default
            data["requeue"] = self.requeue_prio if requeue and self.requeue_prio else requeue
            if self.requeue is None:
                data["requeue_given"] = None
        try:
            return json.dumps(data)
        except (TypeError, ValueError) as err:
            raise InvalidMessageError(f"message text is not JSON-serialisable: {err}") from None
        except RecursionError:
            raise InvalidMessageError("message text is nested too deeply to be JSON") from None

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        """Build a message from a parsed file; InvalidMessageError if it is not one.

        Files written by ddmq 0.9 store a custom requeue priority as an integer
        in ``requeue``; it is read as ``requeue=True`` with that ``requeue_prio``.
        ``requeue_given``, where present, is what the publisher asked for.
        """
        if not isinstance(data, dict):
            raise InvalidMessageError(f"a message file holds a JSON object, not {type(data).__name__}")
        get = data.get
        requeue, requeue_prio = get("requeue"), get("requeue_prio")
        if type(requeue) is int:
            requeue, requeue_prio = True, requeue
        if "requeue_given" in data:  # what the publisher asked for (see to_json)
            requeue = get("requeue_given")
        counter = get("requeue_counter")
        msg = cls(queue=get("queue"), message=get("message"), timeout=get("timeout"), id=get("id"),
                  priority=get("priority"), queue_number=get("queue_number"),
                  filename=get("filename"), requeue=requeue,
                  requeue_counter=0 if counter is None else counter,
                  requeue_limit=get("requeue_limit"), requeue_prio=requeue_prio)
        for field in _WHOLE_NUMBERS:
            value = getattr(msg, field)
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_NUMBER):
                raise InvalidMessageError(f"message field {field!r} is not a whole number "
                                          f"from 0 to {MAX_NUMBER}: {short_repr(value)}")
        if msg.timeout is not None and msg.timeout > MAX_TIMEOUT:
            raise InvalidMessageError(f"message field 'timeout' is over {MAX_TIMEOUT} s: {msg.timeout}")
        if requeue is not None and type(requeue) is not bool:
            raise InvalidMessageError(f"message field 'requeue' is not true/false: {requeue!r}")
        return msg

    @classmethod
    def from_json(cls, text: str | bytes) -> Message:
        """Parse the text of a message file; InvalidMessageError if it is not one."""
        try:
            # Decoding first spares json.loads guessing the encoding of bytes.
            data = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidMessageError(f"not a JSON message: {err}") from None
        except RecursionError:
            raise InvalidMessageError("not a JSON message: nested too deeply") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        lines = [f"{key} = {value}" for key, value in sorted(self.to_dict().items())]
        return os.linesep.join(lines)


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


# The original package exported the class under its lower-case name.
message = Message
