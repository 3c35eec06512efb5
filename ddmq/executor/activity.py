"""What a worker did lately, as its heartbeat record says it: since when it does what it does, and how many tasks it finished in the last minute.

``ddmq status`` reads this from the records alone (no server, nothing
written by the reader). A worker's record is rewritten when its state or
task changes (at most once a second, see :mod:`.heartbeat`), and each
rewrite carries, from :class:`Activity`::

    "since": 1764050120.4        when the worker took up its current state and task
                                 (epoch seconds; within the ~1 s coalescing of rewrites)
    "done_slot": 176405012,      the 10-second slot (epoch // 10) of the last count below
    "done": [0, 3, 9, 12, 0, 4, 17]   task messages finished in each of the last
                                 SLOTS slots, the oldest first, the last one done_slot

A reader counts the tasks done in the 60 s before ``now``
(:func:`done_last_minute`): the slots wholly inside that window, and the
part of the oldest slot still in it (so the figure is off by at most part
of one slot's count). A record not rewritten since (its worker went idle,
or died) ages correctly: its slots are read against the time they belong to.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

__all__ = ["SLOT_SECONDS", "SLOTS", "Activity", "activity_fields", "done_last_minute"]

#: Seconds of one slot, and slots kept: the minute before the current slot, and it.
SLOT_SECONDS = 10
SLOTS = 7


class Activity:
    """The activity fields of one worker's record (used by its Heartbeat)."""

    def __init__(self) -> None:
        self._current: tuple[str, str | None] | None = None
        self._since = time.time()
        self._slot = int(self._since // SLOT_SECONDS)
        self._counts = [0] * SLOTS
        self._done = 0

    def fields(self, state: str, task: str | None, tasks_done: int,
               now: float | None = None) -> dict[str, Any]:
        """The fields to write now, for a worker in ``state`` running ``task``
        that has finished ``tasks_done`` task messages in all."""
        now = time.time() if now is None else now
        if (state, task) != self._current:
            self._current, self._since = (state, task), now
        slot = int(now // SLOT_SECONDS)
        if slot > self._slot:
            shift = min(SLOTS, slot - self._slot)
            self._counts = self._counts[shift:] + [0] * shift
            self._slot = slot
        self._counts[-1] += max(0, tasks_done - self._done)
        self._done = tasks_done
        return {"since": round(self._since, 1), "done_slot": self._slot, "done": list(self._counts)}


def activity_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The activity fields of a record's data, checked (None / [] where missing)."""
    since, slot, counts = data.get("since"), data.get("done_slot"), data.get("done")
    return {"since": float(since) if isinstance(since, (int, float)) and not isinstance(since, bool)
            else None,
            "done_slot": slot if type(slot) is int else 0,
            "done": [c for c in counts if type(c) is int][-SLOTS:] if isinstance(counts, list) else []}


def done_last_minute(record: Any, now: float | None = None) -> float:
    """Task messages the worker of ``record`` finished in the 60 s before
    ``now`` (see the module docstring)."""
    now = time.time() if now is None else now
    counts = getattr(record, "done", None) or []
    last = getattr(record, "done_slot", 0)
    start = now - 60
    total = 0.0
    for age, count in enumerate(reversed(counts)):
        begins = (last - age) * SLOT_SECONDS
        ends = begins + SLOT_SECONDS
        if ends <= start or begins > now:
            continue
        inside = (min(ends, now) - max(begins, start)) / (min(ends, now) - begins) if ends > start > begins else 1.0
        total += count * inside
    return total
