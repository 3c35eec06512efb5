"""Adaptive scaling: how many more worker jobs to submit, between a minimum and a maximum.

Scaling up is a decision (:class:`Scaler`); scaling down is the workers'
own: the jobs a scaler adds run their workers with ``--idle-timeout``, so a
job whose workers found nothing to do for that long ends by itself
(COMPLETED), and gives its node back. Nothing is ever cancelled to scale down,
so no task is cut.

The decision, from what the caller sees (tasks waiting in the queue, live
and idle workers from their heartbeat records) and what ``squeue`` says
(our jobs pending and running)::

    active   = pending + running jobs
    below    = min - active                         jobs to add whatever the backlog
    coming   = pending * workers_per_job            workers on their way:
             + max(0, running * workers_per_job - live)   queued, or started but not beating yet
    short    = waiting - coming - idle              tasks no worker will take soon
    submit   = max(below, ceil(short / workers_per_job)), at most max - active

and no more than one submission every ``interval`` seconds, so that jobs
just submitted show in ``squeue`` (and their workers in the heartbeats)
before they are counted again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["SCALE_INTERVAL", "Scaler", "Decision"]

#: Least seconds between two submissions of a scaler.
SCALE_INTERVAL = 10.0


@dataclass(frozen=True)
class Decision:
    """What a scaler decided: ``keep`` jobs to bring the count up to the
    minimum (their workers do not stop when idle) and ``extra`` jobs for the
    backlog (their workers do)."""

    keep: int = 0
    extra: int = 0

    @property
    def total(self) -> int:
        return self.keep + self.extra


class Scaler:
    """Decides how many worker jobs to add, keeping between ``minimum`` and
    ``maximum`` jobs of ``workers_per_job`` workers each (see the module
    docstring). Not thread-safe: one thread decides."""

    def __init__(self, minimum: int, maximum: int, workers_per_job: int = 1, *,
                 interval: float = SCALE_INTERVAL):
        if not 0 <= minimum <= maximum or maximum < 1 or workers_per_job < 1:
            raise ValueError(f"need 0 <= minimum <= maximum, maximum >= 1 and workers_per_job >= 1, "
                             f"not {minimum}, {maximum}, {workers_per_job}")
        self.minimum, self.maximum = minimum, maximum
        self.workers_per_job = workers_per_job
        self.interval = interval
        self._last: float | None = None

    def decide(self, waiting: int, live_workers: int, pending_jobs: int, running_jobs: int,
               idle_workers: int = 0, *, now: float | None = None) -> Decision:
        """The jobs to submit now (none within ``interval`` seconds of the
        last submission)."""
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last < self.interval:
            return Decision()
        per_job = self.workers_per_job
        active = pending_jobs + running_jobs
        room = max(0, self.maximum - active)
        keep = min(room, max(0, self.minimum - active))
        coming = pending_jobs * per_job + max(0, running_jobs * per_job - live_workers)
        short = waiting - coming - idle_workers - keep * per_job
        extra = min(room - keep, math.ceil(short / per_job)) if short > 0 else 0
        decision = Decision(keep, max(0, extra))
        if decision.total:
            self._last = now
        return decision
