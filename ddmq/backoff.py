"""Waiting with back-off: the one way ddmq waits for something on the filesystem.

Polling a shared filesystem costs its metadata server an operation per look,
so every wait in ddmq (a consumer waiting for a message, a worker waiting
for tasks, the executor waiting for replies or for its workers, a reader
waiting for a file another process is writing) starts with short pauses
and doubles them up to a ceiling. :class:`Backoff` is the sequence of
pauses; :func:`wait_until` is the loop around an attempt.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar, Union

T = TypeVar("T")

#: A ceiling, or a function giving it (read again before each pause: a
#: setting such as ``poll_max`` may change while a wait lasts).
Ceiling = Union[float, Callable[[], float]]


class Backoff:
    """Pauses that start at ``first`` seconds and double up to ``most``."""

    __slots__ = ("first", "most", "_next")

    def __init__(self, first: float, most: Ceiling):
        self.first = first
        self.most = most
        self._next = first

    def next(self) -> float:
        """The next pause (the caller sleeps it)."""
        pause = self._next
        most = self.most() if callable(self.most) else self.most
        self._next = min(pause * 2, max(most, self.first))
        return min(pause, max(most, self.first))

    def reset(self) -> None:
        """Start again from ``first`` (after progress)."""
        self._next = self.first

    def sleep(self) -> None:
        time.sleep(self.next())


def wait_until(attempt: Callable[[], T], timeout: float | None, *, first: float = 0.001,
               most: Ceiling = 1.0, sleep: Callable[[float], Any] = time.sleep,
               looked: T | None = None) -> T:
    """Call ``attempt()`` until it returns something true, or until
    ``timeout`` seconds (None: for ever) have passed; return its last result.
    ``looked``: the caller's own first attempt just returned this (false)
    result: start with a pause.

    Between attempts, ``sleep(pause)`` is called with pauses from a
    :class:`Backoff` (``first``, ``most``), never past the deadline. ``sleep``
    may return early (a folder watch that saw a change): the next attempt
    then comes at once, and the pauses go on growing. Exceptions of
    ``attempt`` and ``sleep`` propagate.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pauses = Backoff(first, most)
    result = attempt() if looked is None else looked
    while not result:
        pause = pauses.next()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return result
            pause = min(pause, left)
        sleep(pause)
        result = attempt()
    return result
