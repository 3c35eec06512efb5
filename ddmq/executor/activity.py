"""What a worker did lately, as its heartbeat record says it: since when it does what it does, and how many tasks it finished in the last minute.

``ddmq status`` reads this from the records alone (no server, nothing
written by the reader). A worker's record is rewritten when its state or
task changes (at most once a second, see :mod:`.heartbeat`), and each
rewrite carries, from :class:`Activity`::

    "since": 1764050120.4        when the worker took up its current state and task
                                 (epoch seconds; within the ~1 s coalescing of rewrites)
    "done_minute": 29400835,     the clock minute (epoch // 60) of the counts below
    "done_this": 17,             task messages finished in that minute,
    "done_prev": 41              and in the minute before it

From the two minute buckets a reader estimates the tasks done in the 60 s
before ``now`` as a sliding window does (:func:`done_last_minute`): all of
this minute's, and the previous minute's weighted by the part of it still in
the window. A record not rewritten since (its worker went idle, or died)
ages correctly: its buckets are read against the minute they belong to.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

__all__ = ["Activity", "activity_fields", "done_last_minute"]


class Activity:
    """The activity fields of one worker's record (used by its Heartbeat)."""

    def __init__(self) -> None:
        self._current: tuple[str, str | None] | None = None
        self._since = time.time()
        self._minute = int(self._since // 60)
        self._this = 0
        self._prev = 0
        self._done = 0

    def fields(self, state: str, task: str | None, tasks_done: int,
               now: float | None = None) -> dict[str, Any]:
        """The fields to write now, for a worker in ``state`` running ``task``
        that has finished ``tasks_done`` task messages in all."""
        now = time.time() if now is None else now
        if (state, task) != self._current:
            self._current, self._since = (state, task), now
        minute = int(now // 60)
        if minute != self._minute:
            self._prev = self._this if minute == self._minute + 1 else 0
            self._this, self._minute = 0, minute
        self._this += max(0, tasks_done - self._done)
        self._done = tasks_done
        return {"since": round(self._since, 1), "done_minute": self._minute,
                "done_this": self._this, "done_prev": self._prev}


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def activity_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The activity fields of a record's data, checked (None / 0 where missing)."""
    return {"since": _number(data, "since"),
            "done_minute": int(_number(data, "done_minute") or 0),
            "done_this": int(_number(data, "done_this") or 0),
            "done_prev": int(_number(data, "done_prev") or 0)}


def done_last_minute(record: Any, now: float | None = None) -> float:
    """Task messages the worker of ``record`` finished in the 60 s before
    ``now`` (estimated from its two minute buckets, see the module docstring)."""
    now = time.time() if now is None else now
    minute, this, prev = (getattr(record, "done_minute", 0), getattr(record, "done_this", 0),
                          getattr(record, "done_prev", 0))
    current = int(now // 60)
    weight = 1.0 - (now % 60) / 60  # the part of the previous minute still in the window
    if minute == current:
        return this + prev * weight
    if minute == current - 1:
        return this * weight
    return 0.0
